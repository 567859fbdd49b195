"""Convert a Hugging Face DeBERTa-v3 model directory into a keras-hub preset directory.

DeBERTa-v3 checkpoints (microsoft/deberta-v3-* and their fine-tunes) are saved with
`"model_type": "deberta-v2"` and the v3 settings, an `spm.model` SentencePiece vocabulary (or,
from transformers >= 5, a `tokenizer.json` that `hf_tokenizer` turns back into one) and
`model.safetensors` or `pytorch_model.bin`; keras-hub has no converter for them (keras-hub #2987).
`convert` writes a DebertaV3Backbone (config + weights), a DebertaV3Tokenizer and a
DebertaV3TextClassifierPreprocessor, so the result loads like any keras-hub preset.
`pytorch_model.bin` is read by `torch_pickle` (no torch, no pickled code runs). Settings the
keras-hub model does not implement are refused by name, never converted approximately. Weights
outside the encoder (classifier, pooler or MLM heads of fine-tunes) are ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from jaxpref.models import hf_tokenizer, torch_pickle

log = logging.getLogger(__name__)

MODEL_TYPE = "deberta-v2"
CONFIG_FILE = "config.json"
VOCAB_FILE = "spm.model"
TOKENIZER_FILE = hf_tokenizer.TOKENIZER_FILE  # read when VOCAB_FILE is absent (transformers >= 5)
# SentencePiece role -> piece: the [CLS]/[SEP]/[PAD] keras-hub's DebertaV3Tokenizer uses
SENTENCEPIECE_ROLES = {"bos": "[CLS]", "eos": "[SEP]", "pad": "[PAD]"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # first found wins
ENCODER_PREFIX = "deberta."  # fine-tunes nest the encoder under this name
CONVERTER_VERSION = "1"  # part of the cache key: bump when the converted output changes

# key: (value the converter needs, Hugging Face's default when the key is absent)
REQUIRED_SETTINGS = {
    "relative_attention": (True, False),
    "share_att_key": (True, False),
    "norm_rel_ebd": ("layer_norm", "none"),
    "position_biased_input": (False, True),
    "hidden_act": ("gelu", "gelu"),
    "layer_norm_eps": (1e-7, 1e-7),  # keras-hub's DebertaV3Backbone fixes this epsilon
    "type_vocab_size": (0, 0),
    "conv_kernel_size": (0, 0),
}
POS_ATT_TYPES = {"p2c", "c2p"}
INTEGER_SETTINGS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "position_buckets",
)


# keras-hub variable path -> (Hugging Face name, whether a torch Linear weight to transpose)
def dense(keras_path: str, hf_path: str) -> dict[str, tuple[str, bool]]:
    return {
        f"{keras_path}/kernel": (f"{hf_path}.weight", True),
        f"{keras_path}/bias": (f"{hf_path}.bias", False),
    }


def norm(keras_path: str, hf_path: str) -> dict[str, tuple[str, bool]]:
    return {
        f"{keras_path}/gamma": (f"{hf_path}.weight", False),
        f"{keras_path}/beta": (f"{hf_path}.bias", False),
    }


GLOBAL_WEIGHTS = {
    "token_embedding/embeddings": ("embeddings.word_embeddings.weight", False),
    **norm("embeddings_layer_norm", "embeddings.LayerNorm"),
    "rel_embedding/rel_embedding": ("encoder.rel_embeddings.weight", False),
    **norm("rel_embedding/rel_embeddings_layer_norm", "encoder.LayerNorm"),
}
LAYER_WEIGHTS = {
    **dense("self_attention_layer/query", "attention.self.query_proj"),
    **dense("self_attention_layer/key", "attention.self.key_proj"),
    **dense("self_attention_layer/value", "attention.self.value_proj"),
    **dense("self_attention_layer/attention_output", "attention.output.dense"),
    **norm("self_attention_layer_norm", "attention.output.LayerNorm"),
    **dense("feedforward_intermediate_dense", "intermediate.dense"),
    **dense("feedforward_output_dense", "output.dense"),
    **norm("feedforward_layer_norm", "output.LayerNorm"),
}
SAFETENSORS_BF16 = "BF16"  # the one dtype safetensors' numpy API cannot return


class ConversionError(ValueError):
    """A Hugging Face directory cannot be converted; the message names the file, key and value."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def backbone_kwargs(config: dict, config_path: str | os.PathLike) -> dict:
    """DebertaV3Backbone arguments for a Hugging Face config; refuses what v3 does not do."""

    def refuse(key: str, needed) -> ConversionError:
        value = repr(config[key]) if key in config else "missing"
        return ConversionError(
            f"{config_path}: {key} is {value}; the DeBERTa-v3 converter supports only {needed!r}"
        )

    for key, (needed, default) in REQUIRED_SETTINGS.items():
        if config.get(key, default) != needed:
            raise refuse(key, needed)
    pos_att_type = config.get("pos_att_type") or []
    if isinstance(pos_att_type, str):
        pos_att_type = pos_att_type.lower().split("|")
    if {p.strip() for p in pos_att_type} != POS_ATT_TYPES or len(pos_att_type) != 2:
        raise refuse("pos_att_type", ["p2c", "c2p"])
    for key in INTEGER_SETTINGS:
        if not isinstance(config.get(key), int) or config[key] <= 0:
            raise refuse(key, "a positive integer")
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    if hidden % heads:
        raise refuse("num_attention_heads", "a divisor of hidden_size")
    if config.get("embedding_size", hidden) != hidden:
        raise refuse("embedding_size", hidden)
    if config.get("attention_head_size", hidden // heads) != hidden // heads:
        raise refuse("attention_head_size", hidden // heads)
    max_positions = config.get("max_position_embeddings", 512)
    max_relative = config.get("max_relative_positions", -1)
    return {
        "vocabulary_size": config["vocab_size"],
        "num_layers": config["num_hidden_layers"],
        "num_heads": heads,
        "hidden_dim": hidden,
        "intermediate_dim": config["intermediate_size"],
        "dropout": config.get("hidden_dropout_prob", 0.1),
        # keras-hub's log-bucket distance scale; Hugging Face uses max_relative_positions < 1
        # to mean max_position_embeddings. There is no absolute position limit in v3.
        "max_sequence_length": max_relative if max_relative >= 1 else max_positions,
        "bucket_size": config["position_buckets"],
    }


def vocabulary_file(model_dir: str | os.PathLike) -> Path:
    """The directory's vocabulary: spm.model, else the tokenizer.json transformers >= 5 saves."""
    for name in (VOCAB_FILE, TOKENIZER_FILE):
        if (Path(model_dir) / name).is_file():
            return Path(model_dir) / name
    raise ConversionError(
        f"{model_dir}: no {VOCAB_FILE} or {TOKENIZER_FILE}; the converter needs the SentencePiece "
        "vocabulary"
    )


def sentencepiece_proto(vocab_path: Path) -> str | bytes:
    """What DebertaV3Tokenizer takes as `proto`: spm.model's path, or tokenizer.json rebuilt."""
    if vocab_path.name == VOCAB_FILE:
        return str(vocab_path)
    try:
        return hf_tokenizer.sentencepiece_model(vocab_path, SENTENCEPIECE_ROLES)
    except hf_tokenizer.TokenizerFileError as err:
        hint = f"the base model's {VOCAB_FILE} beside it would be read instead"
        raise ConversionError(f"{err}; {hint}") from err


def weights_file(model_dir: str | os.PathLike) -> Path:
    """The directory's single-file checkpoint: model.safetensors, else pytorch_model.bin."""
    for name in WEIGHT_FILES:
        if (Path(model_dir) / name).is_file():
            return Path(model_dir) / name
    sharded = sorted(p.name for p in Path(model_dir).glob("*.index.json"))
    hint = f" (sharded checkpoints such as {sharded[0]} are not read)" if sharded else ""
    raise ConversionError(f"{model_dir}: no {' or '.join(WEIGHT_FILES)}{hint}")


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file (numpy API; bfloat16, which numpy lacks, via ml_dtypes)."""
    with safetensors.safe_open(path, framework="np") as handle:
        names = list(handle.keys())
        bf16 = {n for n in names if handle.get_slice(n).get_dtype() == SAFETENSORS_BF16}
        arrays = {n: handle.get_tensor(n) for n in names if n not in bf16}
    if bf16:
        for name, view in safetensors.deserialize(path.read_bytes()):
            if name in bf16:
                arrays[name] = np.frombuffer(view["data"], ml_dtypes.bfloat16).reshape(
                    view["shape"]
                )
    return arrays


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Name -> array of a model.safetensors or pytorch_model.bin (zip, read without torch)."""
    if path.suffix == ".bin":
        try:
            return torch_pickle.load_state_dict(path)
        except torch_pickle.TorchPickleError as err:
            raise ConversionError(str(err)) from err
    try:
        return read_safetensors(path)
    except Exception as err:  # safetensors raises its own SafetensorError and OSError
        raise ConversionError(f"{path}: unreadable safetensors file ({first_line(err)})") from err


def weight_table(num_layers: int) -> dict[str, tuple[str, bool]]:
    """Every encoder variable of a `num_layers` DebertaV3Backbone: keras-hub path ->
    (Hugging Face name without the `deberta.` prefix, whether a torch Linear weight)."""
    table = dict(GLOBAL_WEIGHTS)
    for i in range(num_layers):
        for keras_name, (hf_name, transpose) in LAYER_WEIGHTS.items():
            table[f"disentangled_attention_encoder_layer_{i}/{keras_name}"] = (
                f"encoder.layer.{i}.{hf_name}",
                transpose,
            )
    return table


def map_weights(
    state: dict[str, np.ndarray], num_layers: int, source: Path
) -> tuple[dict[str, np.ndarray], list[str]]:
    """keras-hub variable path -> array (Linear weights transposed), and the names left unused.

    A fine-tune's encoder weights are named `deberta.<name>`; its head weights stay unused.
    """
    if any(name.startswith(ENCODER_PREFIX) for name in state):
        encoder = {
            n.removeprefix(ENCODER_PREFIX): v
            for n, v in state.items()
            if n.startswith(ENCODER_PREFIX)
        }
        outside = [n for n in state if not n.startswith(ENCODER_PREFIX)]
    else:
        encoder, outside = state, []
    table = weight_table(num_layers)
    mapped = {}
    for keras_name, (hf_name, transpose) in table.items():
        if hf_name not in encoder:
            raise ConversionError(f"{source}: weight {hf_name} is missing")
        value = np.asarray(encoder[hf_name], dtype=np.float32)
        mapped[keras_name] = value.T if transpose else value
    used = {hf_name for hf_name, _ in table.values()}
    return mapped, sorted(outside + [n for n in encoder if n not in used])


def assign_weights(backbone, mapped: dict[str, np.ndarray], source: Path) -> None:
    """Copy `mapped` into the backbone's variables; (hidden, heads * head_dim) becomes 3-D."""
    variables = {v.path: v for v in backbone.weights}
    unset = sorted(set(variables) - set(mapped))
    if unset:
        raise ConversionError(f"{source}: no Hugging Face weight maps to {unset[0]}")
    for path, value in mapped.items():
        shape = tuple(variables[path].shape)
        merged = [(*shape[:k], int(np.prod(shape[k:]))) for k in range(len(shape))]
        if value.shape != shape and value.shape not in merged:
            raise ConversionError(
                f"{source}: weight for {path} has shape {value.shape}, the config needs {shape}"
            )
        variables[path].assign(value.reshape(shape))


@contextlib.contextmanager
def no_distribution() -> Iterator[None]:
    """Build unsharded: a conversion writes whole weights whatever the run's distribution is."""
    import keras

    active = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(active)


def convert(model_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the keras-hub preset of the Hugging Face DeBERTa-v3 directory `model_dir`."""
    import keras_hub

    model_dir, out = Path(model_dir), Path(out_dir)
    config_path, vocab_path = model_dir / CONFIG_FILE, vocabulary_file(model_dir)
    kwargs = backbone_kwargs(json.loads(config_path.read_text()), config_path)
    proto = sentencepiece_proto(vocab_path)
    try:
        tokenizer = keras_hub.models.DebertaV3Tokenizer(proto=proto)
    except Exception as err:
        raise ConversionError(
            f"{vocab_path}: not a DeBERTa-v3 SentencePiece model ({first_line(err)})"
        ) from err
    if tokenizer.vocabulary_size() > kwargs["vocabulary_size"]:
        raise ConversionError(
            f"{vocab_path}: {tokenizer.vocabulary_size()} tokens, more than {config_path} "
            f"vocab_size {kwargs['vocabulary_size']}"
        )
    source = weights_file(model_dir)
    mapped, ignored = map_weights(read_state_dict(source), kwargs["num_layers"], source)
    if ignored:
        log.info(
            "%s: ignored %d weights the encoder does not use (%s)",
            source,
            len(ignored),
            ", ".join(ignored[:4]) + (", ..." if len(ignored) > 4 else ""),
        )
    with no_distribution():
        backbone = keras_hub.models.DebertaV3Backbone(**kwargs)
        assign_weights(backbone, mapped, source)
        preprocessor = keras_hub.models.DebertaV3TextClassifierPreprocessor(
            tokenizer, sequence_length=kwargs["max_sequence_length"]
        )
        out.mkdir(parents=True, exist_ok=True)
        backbone.save_to_preset(out)
        tokenizer.save_to_preset(out)
        preprocessor.save_to_preset(out)
    return out


def source_digest(model_dir: str | os.PathLike) -> str:
    """A key for the directory's conversion: the converter version and the source files' bytes."""
    digest = hashlib.sha256(CONVERTER_VERSION.encode())
    model_dir = Path(model_dir)
    for path in (model_dir / CONFIG_FILE, vocabulary_file(model_dir), weights_file(model_dir)):
        digest.update(f"\0{path.name}\0".encode())
        if path.is_file():
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 24):
                    digest.update(chunk)
    return digest.hexdigest()[:24]


def converted_preset(model_dir: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """`cache_dir/<source digest>`, converting `model_dir` into it first unless already there.

    The preset is written to a temporary sibling and renamed into place, so a reader never sees
    a partial one, and concurrent processes converting the same directory do not collide.
    """
    final = Path(cache_dir) / source_digest(model_dir)
    if final.is_dir():
        return final
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        convert(model_dir, tmp)
        os.rename(tmp, final)
        log.info("converted %s to the keras-hub preset %s", model_dir, final)
    except OSError as err:
        if not final.is_dir():  # not another process winning the rename: a real failure
            raise ConversionError(f"{tmp}: cannot write the converted preset ({err})") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
