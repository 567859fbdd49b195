"""Reward models exported to the transformers layout, against what transformers computed on the
same exports (tests/fixtures/hf_export.json, made by make_hf_export_fixture.py; no torch here).

The seeded tiny models of `tiny_reward_models` are exported again: the files must hash as the
recorded ones, and jaxpref's reward of each recorded token sequence must equal the score
`AutoModelForSequenceClassification` gave it (padded batch), within 1e-4 in float32.
"""

import json
import re
import shutil
from pathlib import Path

import keras
import keras_hub
import ml_dtypes
import numpy as np
import pytest
import safetensors
import tiny_reward_models as tiny
from conftest import run_commands

from jaxpref.config import ConfigError
from jaxpref.jobs import export
from jaxpref.models import hf_deberta, hf_export, hf_tokenizer
from jaxpref.rundir import RunDirError

RECORDED = json.loads((tiny.FIXTURES / "hf_export.json").read_text())
TOLERANCE = 1e-4
# DeBERTa's texts that spell out a special token: transformers' tokenizer reads "[SEP]" as the
# separator (as its own conversion of spm.model does), keras-hub's as text
LITERAL_SPECIALS = {"deberta_v3": {i for i, t in enumerate(tiny.TEXTS) if "[SEP]" in t}}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    """name -> (backbone, reward layer, export directory) of each tiny reward model."""
    root = tmp_path_factory.mktemp("hf_export")
    built = {}
    for name in tiny.MODELS:
        preset = root / name / "preset"
        backbone, reward = tiny.reward_model(name, preset)
        out = hf_export.export_reward_model(backbone, reward, preset, root / name / "hf")
        built[name] = (backbone, reward, out)
    return built


def read_weights(directory: Path) -> dict[str, np.ndarray]:
    return hf_deberta.read_safetensors(directory / hf_export.WEIGHTS_FILE)


@pytest.mark.parametrize("name", tiny.MODELS)
def test_the_export_writes_the_recorded_files(exports, name):
    assert tiny.file_hashes(exports[name][2]) == RECORDED["models"][name]["files_sha256"]


@pytest.mark.parametrize("name", tiny.MODELS)
def test_rewards_equal_the_scores_of_transformers(exports, name):
    backbone, reward, out = exports[name]
    recorded = RECORDED["models"][name]
    assert tiny.token_sequences(name) == recorded["token_ids"]  # the inputs did not drift
    theirs = np.array(recorded["transformers"]["scores_padded_batch"])
    ours = tiny.rewards(name, backbone, reward, recorded["token_ids"])
    worst = float(np.abs(ours - theirs).max())
    print(
        f"{name}: max |jaxpref - transformers {RECORDED['made_with']['transformers']}| {worst:.2e}"
    )
    assert worst < TOLERANCE
    assert np.ptp(theirs) > 0.1  # the scores tell the sequences apart
    alone = recorded["transformers"]["scores_one_by_one"]
    np.testing.assert_allclose(theirs, alone, atol=TOLERANCE)  # padding changed nothing
    config = json.loads((out / hf_export.CONFIG_FILE).read_text())
    assert recorded["transformers"]["model_class"] == config["architectures"][0]
    assert recorded["transformers"]["pad_token_id"] == config["pad_token_id"]


@pytest.mark.parametrize("name", ["llama3", "qwen2"])
def test_decoders_pad_with_a_special_token_that_ends_no_text(exports, name):
    """transformers scores the rightmost token that is not the pad id: keras-hub's pad id 0 is
    "!", which ends TEXTS[0]; the export's pad token is a declared special token."""
    backbone, _, out = exports[name]
    config = json.loads((out / hf_export.CONFIG_FILE).read_text())
    settings = json.loads((out / hf_export.TOKENIZER_CONFIG_FILE).read_text())
    pad_id = config["pad_token_id"]
    assert settings["added_tokens_decoder"][str(pad_id)]["content"] == settings["pad_token"]
    assert settings["pad_token"] in hf_export.PAD_TOKENS[type(backbone).__name__]
    assert tiny.token_sequences(name)[0][-1] == 0 != pad_id


@pytest.mark.parametrize("name", tiny.MODELS)
def test_the_tokenizer_files_encode_as_keras_hub(name):
    recorded = RECORDED["models"][name]
    theirs = recorded["transformers"]["text_ids"]
    ours = [np.asarray(tiny.tokenizer_of(name)(text)).tolist() for text in tiny.TEXTS]
    differ = {i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b}
    assert differ == LITERAL_SPECIALS.get(name, set())
    # with its special tokens, transformers frames a text as jaxpref's sequences do
    framed = recorded["transformers"]["text_ids_with_specials"]
    for i, sequence in enumerate(tiny.token_sequences(name)[: len(tiny.TEXTS)]):
        assert framed[i] == sequence or i in differ, tiny.TEXTS[i]
    if name == "deberta_v3":
        conversion = recorded["transformers"]["texts_tokenized_as_by_spm_model_conversion"]
        assert conversion == len(tiny.TEXTS)


def test_the_deberta_export_converts_back_to_the_same_backbone(exports, tmp_path):
    """`hf_deberta.convert` (Hugging Face -> keras-hub) undoes the export exactly."""
    backbone, _, out = exports["deberta_v3"]
    back = keras_hub.models.Backbone.from_preset(str(hf_deberta.convert(out, tmp_path / "kh")))
    assert back.get_config() | {"name": None} == backbone.get_config() | {"name": None}
    for a, b in zip(backbone.weights, back.weights, strict=True):
        assert a.path == b.path and np.array_equal(np.asarray(a), np.asarray(b)), a.path


def test_the_deberta_tokenizer_json_reads_back_as_its_sentencepiece_model(exports):
    _, _, out = exports["deberta_v3"]
    proto = hf_tokenizer.sentencepiece_model(
        out / hf_tokenizer.TOKENIZER_FILE, hf_deberta.SENTENCEPIECE_ROLES
    )
    rebuilt = keras_hub.models.DebertaV3Tokenizer(proto=proto)
    original = tiny.tokenizer_of("deberta_v3")
    for text in tiny.TEXTS:
        assert np.array_equal(rebuilt(text), original(text)), text
    assert (out / hf_deberta.VOCAB_FILE).read_bytes() == tiny.SPM_MODEL.read_bytes()


@pytest.mark.parametrize(
    "name, layer, hf_name",
    [
        ("deberta_v3", "disentangled_attention_encoder_layer_1/self_attention_layer/query",
         "deberta.encoder.layer.1.attention.self.query_proj.weight"),
        ("llama3", "transformer_layer_1/self_attention/query",
         "model.layers.1.self_attn.q_proj.weight"),
    ],
)  # fmt: skip
def test_lora_factors_are_merged_into_the_exported_kernels(tmp_path, name, layer, hf_name):
    backbone, reward = tiny.reward_model(name, tmp_path / "preset")
    backbone.enable_lora(2)
    query = next(lyr for lyr in backbone._flatten_layers() if lyr.path == layer)
    query.lora_kernel_b.assign(np.full(query.lora_kernel_b.shape, 0.5, np.float32))
    out = hf_export.export_reward_model(backbone, reward, tmp_path / "preset", tmp_path / "hf")
    merged = np.asarray(query.kernel)
    exported = read_weights(out)[hf_name]
    np.testing.assert_array_equal(exported, merged.reshape(merged.shape[0], -1).T)
    assert not np.allclose(exported, np.asarray(query._kernel).reshape(merged.shape[0], -1).T)
    assert not any("lora" in key for key in read_weights(out))


def test_bfloat16_weights_export_in_bfloat16(tmp_path):
    backbone, reward = tiny.reward_model("llama3", tmp_path / "preset", dtype="bfloat16")
    out = hf_export.export_reward_model(backbone, reward, tmp_path / "preset", tmp_path / "hf")
    assert json.loads((out / hf_export.CONFIG_FILE).read_text())["dtype"] == "bfloat16"
    with safetensors.safe_open(out / hf_export.WEIGHTS_FILE, framework="np") as handle:
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"BF16"}
    weights = read_weights(out)
    embeddings = np.asarray(backbone.get_layer("token_embedding").embeddings)
    assert weights["model.embed_tokens.weight"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(weights["model.embed_tokens.weight"], embeddings)
    score = np.asarray(reward.kernel).T
    np.testing.assert_array_equal(weights["score.weight"], score)


def refused_models(tmp_path: Path):
    """(case, backbone, reward layer, the refusal's words)."""
    hidden = 8
    small = dict(num_layers=1, hidden_dim=hidden, intermediate_dim=16)
    gemma = keras_hub.models.GemmaBackbone(
        vocabulary_size=10, num_query_heads=2, num_key_value_heads=1, head_dim=4, **small
    )
    llama = tiny.backbone_of("llama3", 300, **small)
    qwen = tiny.backbone_of("qwen2", 300, use_sliding_window_attention=True, **small)
    deberta = tiny.backbone_of("deberta_v3", 600, **small)

    def dense(units=1, use_bias=False):
        layer = keras.layers.Dense(units, name="reward", use_bias=use_bias)
        layer.build((None, hidden))
        return layer

    return [
        ("other backbone", gemma, dense(), "GemmaBackbone has no transformers export"),
        ("decoder bias", llama, dense(use_bias=True), "'reward' has a bias"),
        ("three outputs", deberta, dense(3), "maps (8, 3)"),
        ("sliding window", qwen, dense(), "use_sliding_window_attention=True"),
    ]


def test_what_transformers_cannot_compute_is_refused_by_name(tmp_path):
    for case, backbone, reward, words in refused_models(tmp_path):
        with pytest.raises(hf_export.ExportError, match=re.escape(words)):
            hf_export.export_reward_model(backbone, reward, tmp_path, tmp_path / case)
        assert not (tmp_path / case).exists(), case  # refused before anything is written


def test_a_non_empty_directory_is_never_written_into(exports, tmp_path):
    backbone, reward, _ = exports["llama3"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep")
    with pytest.raises(RunDirError, match="not an empty directory"):
        hf_export.export_reward_model(backbone, reward, tmp_path, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


class RunModel(keras.Model):
    """What `predict.load_run` returns, reduced to what the export reads."""

    def __init__(self, backbone, head, side_features=0):
        super().__init__()
        self.backbone, self.head, self.side_features = backbone, head, side_features


@pytest.mark.parametrize(
    "head, side_features, words",
    [
        ("reward", 0, None),
        ("logits", 0, "no layer named 'reward'"),
        ("reward", 4, "--side-features"),
    ],
)
def test_the_export_job_writes_a_reward_run_and_refuses_others(
    exports, tmp_path, monkeypatch, head, side_features, words
):
    backbone, reward, out = exports["qwen2"]
    run = tmp_path / "run"
    shutil.copytree(out.parent / "preset", run / "preset")
    layer = reward if head == "reward" else keras.layers.Dense(3, name=head)
    model = RunModel(backbone, layer, side_features)
    monkeypatch.setattr(export.distribution, "setup", lambda *args: None)
    monkeypatch.setattr(export.predict, "load_run", lambda path: (model, None, None))
    if words:
        with pytest.raises(ConfigError, match=words) as refusal:
            export.export_transformers(run, tmp_path / "hf")
        assert "--objective reward" in str(refusal.value) and "\n" not in str(refusal.value)
        assert not (tmp_path / "hf").exists()
        return
    result = export.export_transformers(run, tmp_path / "hf")
    assert tiny.file_hashes(result.path) == tiny.file_hashes(out)
    assert result.bundle_bytes == export.directory_size(out) and result.run_bytes > 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_the_cli_refuses_a_preference_run_in_one_line(tiny_run, tmp_path):
    result = run_commands(
        ["export", "--format", "transformers", "--devices", "cpu", "--run-dir", tiny_run,
         "--out", tmp_path / "hf"],
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "no layer named 'reward'" in error
    assert "--objective reward" in error and not (tmp_path / "hf").exists()
