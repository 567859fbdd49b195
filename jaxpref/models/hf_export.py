"""Export a reward model to the Hugging Face transformers layout that serving stacks load.

A jaxpref reward model is a keras-hub backbone whose pooled state (encoders: the first token's
final hidden state; decoders: the last real token's, after the final norm) feeds one
`keras.layers.Dense(1, name="reward")`. `export_reward_model` writes a directory that
`transformers.AutoModelForSequenceClassification.from_pretrained(DIR)` loads with one label
whose logit is that reward, and that `transformers.AutoTokenizer` reads:

- DeBERTa-v3 (`DebertaV3Backbone`) -> `DebertaV2ForSequenceClassification`, which computes
  classifier(act(pooler.dense(h[:, 0]))): the pooler is written as the identity with
  `pooler_hidden_act: "linear"`, the classifier holds the reward kernel and bias. The encoder's
  weights are named by `hf_deberta.weight_table`, the converter's own table read backwards;
  the tokenizer is the preset's SentencePiece model, as tokenizer.json (what transformers 5
  saves for it: no sentencepiece or protobuf needed to load) and as spm.model.
- Llama-3 (`Llama3Backbone`) -> `LlamaForSequenceClassification` and Qwen-2 (`QwenBackbone`) ->
  `Qwen2ForSequenceClassification`: keras-hub's own exporter gives the config, the backbone's
  weights and the tokenizer files; the reward kernel becomes `score.weight` (no bias). Those
  classes score the rightmost token that is not `pad_token_id`, so config.json and the
  tokenizer pad with a special token text never produces (`PAD_TOKENS`), never keras-hub's
  pad id 0, an ordinary token ("!") that may end a text.

Weights are written in the backbone's variable dtype with LoRA factors merged. What keras-hub's
exporter would leave out (RoPE scaling, sliding windows, quantized layers) is refused by name.

    export_reward_model(backbone, reward_layer, "runs/rm/preset", "rm-hf")
    # where torch and transformers are installed:
    # AutoModelForSequenceClassification.from_pretrained("rm-hf")(**batch).logits[:, 0]

`jaxpref export --format transformers --run-dir RUN --out DIR` (`jobs.export`) does this for a
trained run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from jaxpref import rundir
from jaxpref.config import ConfigError
from jaxpref.models import backbones, hf_deberta, hf_tokenizer, lora

ENCODER_CLASS = "DebertaV3Backbone"
# keras-hub backbone -> the transformers class of the export
ARCHITECTURES = {
    ENCODER_CLASS: "DebertaV2ForSequenceClassification",
    "Llama3Backbone": "LlamaForSequenceClassification",
    "QwenBackbone": "Qwen2ForSequenceClassification",
}
# Decoder padding: the first of these special tokens in the vocabulary (Llama 3.1's own pad
# token; then the end-of-text token Llama 3.0 and Qwen-2 reward models pad with).
PAD_TOKENS = {
    "Llama3Backbone": ("<|finetune_right_pad_id|>", "<|end_of_text|>"),
    "QwenBackbone": ("<|endoftext|>",),
}
# Backbone settings keras-hub's exporter does not write: only these values export faithfully.
UNWRITTEN_SETTINGS = {
    "Llama3Backbone": {"rope_position_scaling_factor": 1.0},
    "QwenBackbone": {"rope_scaling_factor": 1.0, "use_sliding_window_attention": False},
}
LABELS = {"id2label": {"0": "reward"}, "label2id": {"reward": 0}}  # one logit: the reward
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = hf_deberta.CONFIG_FILE
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SAFETENSORS_METADATA = {"format": "pt"}  # transformers loads safetensors files marked as torch's
# DeBERTa-v3's transformers tokenizer settings (its pieces come from the keras-hub tokenizer)
DEBERTA_TOKENIZER = {
    "tokenizer_class": "DebertaV2Tokenizer",
    "do_lower_case": False,
    "split_by_punct": False,
    "vocab_type": "spm",
}
DEBERTA_UNKNOWN = "[UNK]"


class ExportError(ConfigError):
    """A model the transformers export cannot represent; the message names the setting."""


def supported() -> str:
    """The exportable backbones and their transformers classes, for error messages."""
    return ", ".join(f"{name} -> {cls}" for name, cls in ARCHITECTURES.items())


def check_exportable(backbone, reward_layer) -> None:
    """Refuse, in one line naming the setting, what the transformers classes cannot compute."""
    name = type(backbone).__name__
    if name not in ARCHITECTURES:
        raise ExportError(f"{name} has no transformers export; supported: {supported()}")
    config = backbone.get_config()
    for key, needed in UNWRITTEN_SETTINGS.get(name, {}).items():
        if config.get(key, needed) != needed:
            raise ExportError(
                f"{name} {key}={config[key]!r}: keras-hub's transformers export does not "
                f"write it; only {needed!r} exports"
            )
    quantized = [
        layer.name
        for layer in backbone._flatten_layers(include_self=False)
        if getattr(layer, "quantization_mode", None)
    ]
    if quantized:
        raise ExportError(f"{name} layer {quantized[0]} is quantized; export a float model")
    kernel_shape = tuple(getattr(reward_layer, "kernel", np.zeros(0)).shape)
    if kernel_shape != (config["hidden_dim"], 1):
        raise ExportError(
            f"reward layer {reward_layer.name!r} maps {kernel_shape}, not the backbone's "
            f"hidden state ({config['hidden_dim']}) to one reward"
        )
    if name != ENCODER_CLASS and reward_layer.bias is not None:
        raise ExportError(
            f"reward layer {reward_layer.name!r} has a bias; {ARCHITECTURES[name]}'s score "
            "layer has none (decoder reward layers use use_bias=False)"
        )


def to_numpy(value, dtype) -> np.ndarray:
    """A variable or tensor as a contiguous numpy array of `dtype`."""
    import keras

    return np.ascontiguousarray(keras.ops.convert_to_numpy(value).astype(dtype))


def variable_values(backbone, dtype) -> dict[str, np.ndarray]:
    """Each backbone variable's value by path, LoRA factors merged into their kernels."""
    values = {v.path: to_numpy(v, dtype) for v in backbone.weights}
    for layer in lora.lora_layers(backbone):
        values[layer._kernel.path] = to_numpy(layer.kernel, dtype)  # the W + s A B property
        del values[layer.lora_kernel_a.path], values[layer.lora_kernel_b.path]
    return values


def deberta_weights(backbone, reward_layer, dtype) -> dict[str, np.ndarray]:
    """DebertaV2ForSequenceClassification's tensors: the encoder, an identity pooler and the
    reward as the classifier."""
    values = variable_values(backbone, dtype)
    table = hf_deberta.weight_table(backbone.get_config()["num_layers"])
    unmapped = sorted(set(values) - set(table))
    if unmapped:
        raise ExportError(f"{ENCODER_CLASS} variable {unmapped[0]} has no transformers name")
    weights = {}
    for keras_path, (hf_name, transpose) in table.items():
        value = values[keras_path]
        if transpose:  # (in, ...out) kernel -> torch Linear (out, in)
            value = value.reshape(value.shape[0], -1).T
        elif keras_path.endswith("/bias"):  # (heads, head_dim) -> (hidden,)
            value = value.reshape(-1)
        weights[hf_deberta.ENCODER_PREFIX + hf_name] = np.ascontiguousarray(value)
    hidden = backbone.get_config()["hidden_dim"]
    bias = reward_layer.bias if reward_layer.bias is not None else np.zeros(1)
    weights |= {
        "pooler.dense.weight": np.eye(hidden, dtype=dtype),
        "pooler.dense.bias": np.zeros(hidden, dtype),
        "classifier.weight": to_numpy(reward_layer.kernel, dtype).T.copy(),
        "classifier.bias": to_numpy(bias, dtype),
    }
    return weights


def deberta_config(backbone, tokenizer) -> dict:
    """The DebertaV2Config of the backbone: the DeBERTa-v3 settings `hf_deberta` converts back,
    an identity pooler ("linear" activation, no dropout) and one label."""
    config = backbone.get_config()
    hidden, dropout = config["hidden_dim"], config["dropout"]
    return {
        "architectures": [ARCHITECTURES[ENCODER_CLASS]],
        "model_type": hf_deberta.MODEL_TYPE,
        **{key: needed for key, (needed, _) in hf_deberta.REQUIRED_SETTINGS.items()},
        "pos_att_type": sorted(hf_deberta.POS_ATT_TYPES),
        "vocab_size": config["vocabulary_size"],
        "hidden_size": hidden,
        "num_hidden_layers": config["num_layers"],
        "num_attention_heads": config["num_heads"],
        "intermediate_size": config["intermediate_dim"],
        "position_buckets": config["bucket_size"],
        # keras-hub's log-bucket distance scale; v3 has no absolute position table
        "max_relative_positions": config["max_sequence_length"],
        "max_position_embeddings": config["max_sequence_length"],
        "hidden_dropout_prob": dropout,
        "attention_probs_dropout_prob": dropout,
        "pooler_hidden_size": hidden,
        "pooler_hidden_act": "linear",
        "pooler_dropout": 0.0,
        "pad_token_id": tokenizer.pad_token_id,
        **LABELS,
    }


def write_deberta_tokenizer(tokenizer, out: Path) -> None:
    """tokenizer.json (what transformers reads, no sentencepiece needed), the preset's
    SentencePiece model as spm.model (what `hf_deberta` and slow tokenizers read) and the
    DebertaV2Tokenizer settings."""
    roles = {
        "bos_token": tokenizer.start_token,
        "cls_token": tokenizer.start_token,
        "eos_token": tokenizer.end_token,
        "sep_token": tokenizer.end_token,
        "pad_token": tokenizer.pad_token,
        "mask_token": tokenizer.mask_token,
        "unk_token": DEBERTA_UNKNOWN,
    }
    specials = [roles[key] for key in ("pad_token", "cls_token", "sep_token", "unk_token")]
    try:
        layout = hf_tokenizer.unigram_tokenizer_json(
            tokenizer.proto,
            [*specials, tokenizer.mask_token],
            (roles["cls_token"], roles["sep_token"]),
        )
    except hf_tokenizer.TokenizerFileError as err:
        raise ExportError(str(err)) from err
    write_json(out / hf_tokenizer.TOKENIZER_FILE, layout)
    (out / hf_deberta.VOCAB_FILE).write_bytes(tokenizer.proto)
    unk_id = layout["model"]["unk_id"]
    write_json(out / TOKENIZER_CONFIG_FILE, {**DEBERTA_TOKENIZER, **roles, "unk_id": unk_id})


def pad_token(backbone, tokenizer) -> str:
    """The special token a decoder's export pads with (`PAD_TOKENS`)."""
    name = type(backbone).__name__
    vocabulary = set(tokenizer.get_vocabulary())
    for token in PAD_TOKENS[name]:
        if token in vocabulary:
            return token
    raise ExportError(
        f"{name}'s tokenizer has none of {', '.join(PAD_TOKENS[name])}; the export needs a "
        "special token to pad with"
    )


def decoder_weights(backbone, reward_layer, dtype) -> dict[str, np.ndarray]:
    """keras-hub's transformers tensors of the backbone (LoRA merged by the layers' `kernel`)
    and the reward kernel as `score.weight` (1, hidden)."""
    from keras_hub.src.utils.transformers.export import hf_exporter

    tensors = hf_exporter.MODEL_EXPORTERS[type(backbone).__name__](backbone, include_lm_head=False)
    weights = {name: to_numpy(value, dtype) for name, value in tensors.items()}
    weights["score.weight"] = to_numpy(reward_layer.kernel, dtype).T.copy()
    return weights


def decoder_config(backbone, tokenizer, pad: str, dtype: str) -> dict:
    """keras-hub's transformers config of the backbone as a one-label sequence classifier."""
    from keras_hub.src.utils.transformers.export import hf_exporter

    name = type(backbone).__name__
    config = hf_exporter.MODEL_CONFIGS[name](backbone)
    config.pop("torch_dtype", None)  # keras-hub writes the compute dtype, not the weights'
    config |= {
        "architectures": [ARCHITECTURES[name]],
        "dtype": dtype,
        "pad_token_id": tokenizer.token_to_id(pad),
        **LABELS,
    }
    for key, token in (
        ("bos_token_id", tokenizer.start_token),
        ("eos_token_id", tokenizer.end_token),
    ):
        if token is not None:
            config[key] = tokenizer.token_to_id(token)
    return config


def write_decoder_tokenizer(tokenizer, pad: str, out: Path) -> None:
    """keras-hub's transformers tokenizer files, padding with `pad`; the special tokens are
    declared as such (text spelling one out encodes to it, as in keras-hub), and a tokenizer
    with a start token prepends it as Llama-3's own tokenizer.json does (keras-hub's asks for
    it with `add_bos_token`, which transformers 5 leaves to tokenizer.json)."""
    from keras_hub.src.utils.transformers.export import hf_exporter

    hf_exporter.export_tokenizer(tokenizer, str(out))
    path = out / TOKENIZER_CONFIG_FILE
    settings = json.loads(path.read_text())
    ids = {t: tokenizer.token_to_id(t) for t in sorted({*tokenizer.special_tokens, pad})}
    settings["pad_token"] = pad
    settings["added_tokens_decoder"] = {
        str(i): {k: v for k, v in hf_tokenizer.added_token(i, t).items() if k != "id"}
        for t, i in sorted(ids.items(), key=lambda item: item[1])
    }
    write_json(path, settings)
    layout_path = out / hf_tokenizer.TOKENIZER_FILE
    if tokenizer.start_token is not None and layout_path.exists():
        layout = json.loads(layout_path.read_text(encoding="utf-8"))
        bos = tokenizer.start_token
        layout["post_processor"] = hf_tokenizer.template_processing(
            [(bos, 0), ("$A", 0)], [(bos, 0), ("$A", 0), (bos, 1), ("$B", 1)], ids
        )
        write_json(layout_path, layout)


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def export_reward_model(
    backbone, reward_layer, preset_dir: str | os.PathLike, out: str | os.PathLike
) -> Path:
    """Write the transformers directory of a reward model to `out` (a new or empty directory).

    `backbone` is the model's keras-hub backbone, `reward_layer` its `Dense(1, name="reward")`
    on the pooled state, `preset_dir` the preset whose tokenizer the model reads. Writes
    config.json, model.safetensors and the tokenizer files (see the module docstring).
    """
    import safetensors.numpy

    check_exportable(backbone, reward_layer)
    out = rundir.new_directory(out, "export directory")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = backbones.load_tokenizer(str(preset_dir))
    dtype = np.dtype(backbone.dtype_policy.variable_dtype)
    if type(backbone).__name__ == ENCODER_CLASS:
        weights = deberta_weights(backbone, reward_layer, dtype)
        config = deberta_config(backbone, tokenizer)
        config["dtype"] = dtype.name
        write_deberta_tokenizer(tokenizer, out)
    else:
        pad = pad_token(backbone, tokenizer)
        weights = decoder_weights(backbone, reward_layer, dtype)
        config = decoder_config(backbone, tokenizer, pad, dtype.name)
        write_decoder_tokenizer(tokenizer, pad, out)
    safetensors.numpy.save_file(weights, out / WEIGHTS_FILE, metadata=SAFETENSORS_METADATA)
    write_json(out / CONFIG_FILE, config)
    return out
