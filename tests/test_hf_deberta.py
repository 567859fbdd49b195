"""The converter against transformers' DebertaV2 outputs recorded in tests/fixtures (no torch)."""

import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from jaxpref.models import backbones, hf_deberta, presets

FIXTURE = Path(__file__).parent / "fixtures" / "hf_deberta_v3_tiny"
TOLERANCE = 1e-4
WEIGHT_FILES = hf_deberta.WEIGHT_FILES


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE / "reference.npz") as arrays:
        return json.loads((FIXTURE / "reference.json").read_text()), dict(arrays)


def hf_dir(root: Path, weights: str = "model.safetensors", **config_changes) -> Path:
    """A copy of the fixture's Hugging Face directory with one weight file; None deletes a key."""
    root.mkdir(parents=True, exist_ok=True)
    config = json.loads((FIXTURE / "config.json").read_text())
    for key, value in config_changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (root / "config.json").write_text(json.dumps(config))
    shutil.copy(FIXTURE / "spm.model", root)
    if weights:
        shutil.copy(FIXTURE / weights, root)
    return root


@pytest.fixture(scope="module", params=WEIGHT_FILES)
def converted(request, tmp_path_factory):
    """(weight file name, converted backbone, its preprocessor's tokenizer) for each format."""
    import keras_hub

    root = tmp_path_factory.mktemp("hf")
    preset = hf_deberta.convert(hf_dir(root / "src", request.param), root / "preset")
    backbone = keras_hub.models.Backbone.from_preset(str(preset))
    tokenizer = keras_hub.models.Tokenizer.from_preset(str(preset))
    return request.param, backbone, tokenizer


def test_hidden_states_match_transformers(converted, reference):
    fmt, backbone, _ = converted
    recorded, arrays = reference
    worst = 0.0
    for name, ids in recorded["token_ids"].items():
        hidden = backbone({"token_ids": np.array([ids]), "padding_mask": np.ones((1, len(ids)))})
        worst = max(worst, float(np.abs(np.asarray(hidden)[0] - arrays[f"hidden/{name}"]).max()))
    mask = arrays["padded/padding_mask"]
    padded = backbone({"token_ids": arrays["padded/token_ids"], "padding_mask": mask})
    padded_diff = np.abs(np.asarray(padded) - arrays["padded/hidden"])[mask.astype(bool)]
    worst = max(worst, float(padded_diff.max()))
    print(f"{fmt}: max abs difference to transformers {worst:.2e}")
    assert worst < TOLERANCE
    assert max(len(ids) for ids in recorded["token_ids"].values()) > 512  # past the buckets


def test_token_ids_match_the_transformers_tokenizer(converted, reference):
    import keras_hub

    _, _, tokenizer = converted
    recorded, _ = reference
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    for name, ids in recorded["token_ids"].items():
        ours = [cls_id, *np.asarray(tokenizer(recorded["texts"][name])).tolist(), sep_id]
        assert ours == ids, name
    pair = recorded["pair"]
    preprocessor = keras_hub.models.DebertaV3TextClassifierPreprocessor(
        tokenizer, sequence_length=len(pair["token_ids"]) + 8
    )
    texts = recorded["texts"]
    out = preprocessor(x=([texts[pair["first"]]], [texts[pair["second"]]]))
    ours = np.asarray(out["token_ids"])[0][np.asarray(out["padding_mask"])[0].astype(bool)]
    assert ours.tolist() == pair["token_ids"]


def test_literal_special_tokens_in_user_text_stay_text(converted):
    # transformers' tokenizer turns a literal "[SEP]" typed in a prompt into the separator id;
    # SentencePiece (keras-hub) spells it out, so user text cannot fake a segment boundary.
    _, _, tokenizer = converted
    ids = np.asarray(tokenizer("first [SEP] second [CLS]")).tolist()
    assert tokenizer.token_to_id("[SEP]") not in ids
    assert tokenizer.token_to_id("[CLS]") not in ids
    assert tokenizer.detokenize(ids) == "first [SEP] second [CLS]"


def test_head_weights_are_ignored_and_counted_under_any_distribution(tmp_path, caplog):
    import keras

    data_parallel = keras.distribution.DataParallel()
    keras.distribution.set_distribution(data_parallel)  # a run sets it before loading
    try:
        with caplog.at_level(logging.INFO, logger="jaxpref.models.hf_deberta"):
            hf_deberta.convert(hf_dir(tmp_path / "src"), tmp_path / "preset")
        assert keras.distribution.distribution() is data_parallel
    finally:
        keras.distribution.set_distribution(None)
    assert "ignored 4 weights the encoder does not use (classifier.bias" in caplog.text


def encoder_arrays() -> dict[str, np.ndarray]:
    state = safetensors.numpy.load_file(FIXTURE / "model.safetensors")
    return {k.removeprefix("deberta."): v for k, v in state.items() if k.startswith("deberta.")}


def test_bare_encoder_and_bfloat16_checkpoints(tmp_path):
    import keras_hub

    arrays = encoder_arrays()  # a DebertaV2Model checkpoint: no prefix, no head
    src = hf_dir(tmp_path / "src", weights=None)
    rounded = {k: v.astype(ml_dtypes.bfloat16) for k, v in arrays.items()}
    safetensors.numpy.save_file(rounded, src / "model.safetensors")
    backbone = keras_hub.models.Backbone.from_preset(
        str(hf_deberta.convert(src, tmp_path / "preset"))
    )
    weights = {v.path: np.asarray(v) for v in backbone.weights}
    query = weights["disentangled_attention_encoder_layer_1/self_attention_layer/query/kernel"]
    want = rounded["encoder.layer.1.attention.self.query_proj.weight"].astype(np.float32).T
    np.testing.assert_array_equal(query, want.reshape(query.shape))
    np.testing.assert_array_equal(
        weights["rel_embedding/rel_embedding"],
        rounded["encoder.rel_embeddings.weight"].astype(np.float32),
    )


REFUSED = [
    ("pos_att_type", ["c2p"], "pos_att_type is ['c2p']"),
    ("pos_att_type", "p2c|c2p|p2p", "pos_att_type is 'p2c|c2p|p2p'"),
    ("share_att_key", False, "share_att_key is False"),
    ("norm_rel_ebd", "none", "norm_rel_ebd is 'none'"),
    ("position_biased_input", True, "position_biased_input is True"),
    ("relative_attention", None, "relative_attention is missing"),
    ("position_buckets", -1, "position_buckets is -1"),
    ("embedding_size", 16, "embedding_size is 16"),
    ("conv_kernel_size", 3, "conv_kernel_size is 3"),
    ("hidden_act", "gelu_new", "hidden_act is 'gelu_new'"),
]


@pytest.mark.parametrize("key, value, message", REFUSED)
def test_unsupported_settings_are_refused_by_name(tmp_path, key, value, message):
    src = hf_dir(tmp_path, **{key: value})
    with pytest.raises(hf_deberta.ConversionError) as err:
        hf_deberta.convert(src, tmp_path / "preset")
    text = str(err.value)
    assert text.startswith(f"{src / 'config.json'}: {message};") and "\n" not in text
    assert not (tmp_path / "preset").exists()


def test_missing_or_broken_files_are_refused_by_name(tmp_path):
    src = hf_dir(tmp_path / "no_spm")
    (src / "spm.model").unlink()
    with pytest.raises(hf_deberta.ConversionError, match="no spm.model or tokenizer.json;"):
        hf_deberta.convert(src, tmp_path / "out")
    src = hf_dir(tmp_path / "no_weights", weights=None)
    (src / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(hf_deberta.ConversionError, match=r"no model.safetensors or .*index.json"):
        hf_deberta.convert(src, tmp_path / "out")
    src = hf_dir(tmp_path / "too_small", vocab_size=100)
    with pytest.raises(hf_deberta.ConversionError, match=r"600 tokens, more than .* 100"):
        hf_deberta.convert(src, tmp_path / "out")
    src = hf_dir(tmp_path / "short", weights=None)
    arrays = encoder_arrays()
    del arrays["encoder.layer.1.output.dense.bias"]
    safetensors.numpy.save_file(arrays, src / "model.safetensors")
    with pytest.raises(hf_deberta.ConversionError, match=r"encoder.layer.1.output.dense.bias is"):
        hf_deberta.convert(src, tmp_path / "out")
    src = hf_dir(tmp_path / "wider", intermediate_size=128)
    with pytest.raises(hf_deberta.ConversionError, match=r"shape \(32, 64\), the config needs"):
        hf_deberta.convert(src, tmp_path / "out")


def test_preset_dir_converts_once_into_the_cache_then_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXPREF_CACHE", str(tmp_path / "cache" / "tokens"))
    src = hf_dir(tmp_path / "src", "pytorch_model.bin")
    resolved = Path(presets.probe(str(src)).location)
    assert resolved.parent == tmp_path / "cache" / "presets"
    assert os.listdir(resolved.parent) == [resolved.name]  # no temporary left behind

    def no_second_conversion(*args):
        raise AssertionError("converted twice")

    monkeypatch.setattr(hf_deberta, "convert", no_second_conversion)
    backbone = backbones.load_backbone(str(src))
    assert type(backbone).__name__ == "DebertaV3Backbone"
    preprocessor = backbones.load_preprocessor(str(src), 16)
    out = preprocessor(x=(["Hi there"], ["General Kenobi"]))
    assert np.asarray(out["token_ids"]).shape == (1, 16)
    (src / "config.json").write_text((src / "config.json").read_text() + "\n")
    with pytest.raises(AssertionError, match="converted twice"):  # a changed source: new key
        backbones.load_backbone(str(src))


def test_refusals_reach_the_cli_as_one_line_preset_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXPREF_CACHE", str(tmp_path / "tokens"))
    src = hf_dir(tmp_path / "src", "pytorch_model.bin", share_att_key=False)
    with pytest.raises(presets.PresetError, match="share_att_key is False"):
        backbones.load_backbone(str(src))
    marker = tmp_path / "pwned"
    src = hf_dir(tmp_path / "evil", weights=None)
    payload = b"\x80\x02cos\nsystem\nX" + len(f"touch {marker}").to_bytes(4, "little")
    payload += f"touch {marker}".encode() + b"\x85R."
    with zipfile.ZipFile(src / "pytorch_model.bin", "w") as archive:
        archive.writestr("archive/data.pkl", payload)
    with pytest.raises(presets.PresetError, match="refused to load global os.system"):
        backbones.load_backbone(str(src))
    assert not marker.exists()
    assert not list((tmp_path / "presets").glob("*"))  # nothing half-written


@pytest.mark.parametrize(
    "config, message",
    [
        ({"model_type": "mpnet"}, "no converter for huggingface/transformers models"),
        ({"hidden_size": 8}, "Unrecognized format for config.json"),
    ],
)
def test_other_directories_keep_keras_hub_with_a_one_line_error(tmp_path, config, message):
    (tmp_path / "config.json").write_text(json.dumps(config, indent=2))
    with pytest.raises(presets.PresetError) as err:
        backbones.load_backbone(str(tmp_path))
    assert message in str(err.value) and "\n" not in str(err.value)
