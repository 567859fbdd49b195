"""Export bundles, inference precision and low-precision training, end to end on the tiny preset.

One 1-epoch run is exported; the bundle must predict as the run directory does, hold no
training state, load in plain keras-hub, and be smaller than the run. Exported with a second
run, the bundle's weights are the two runs' mean.
"""

import json
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import run_commands, run_script, tiny_run_args

from jaxpref.config import ConfigError
from jaxpref.data import arena
from jaxpref.jobs.export import directory_size
from jaxpref.serve import bundle, predict
from jaxpref.training import checkpoints

pytestmark = pytest.mark.xdist_group("export")  # one worker: the module's bundle and predictions
TOLERANCE = 1e-5  # bundle vs run directory, same precision
BF16_TOLERANCE = 2e-2  # mixed_bfloat16 vs float32 inference

PLAIN_KERAS_HUB = """
import json, sys
import numpy as np
import keras_hub

merged, initial = (keras_hub.models.Backbone.from_preset(p) for p in sys.argv[1:3])
changed = [
    a.path for a, b in zip(merged.weights, initial.weights, strict=True)
    if a.path != b.path or not np.array_equal(np.asarray(a), np.asarray(b))
]
tokenize = [
    keras_hub.models.TextClassifierPreprocessor.from_preset(p, sequence_length=16)
    for p in sys.argv[1:3]
]
text = ["which answer is better?"]
same_tokens = bool(np.array_equal(tokenize[0](text)["token_ids"], tokenize[1](text)["token_ids"]))
print(json.dumps({
    "changed": changed,
    "lora": any("lora" in v.path for v in merged.weights),
    "same_tokens": same_tokens,
    "jaxpref_imported": any(m.startswith("jaxpref") for m in sys.modules),
}))
"""


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """(run directory, bundle, export's stdout): the session's 1-epoch float32 LoRA run."""
    out = tmp_path_factory.mktemp("export") / "bundle"
    result = run_script(
        "export.py", "--devices", "cpu", "--run-dir", str(tiny_run), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tiny_run, out, result.stdout


@pytest.fixture(scope="module")
def unseen_csv(tmp_path_factory):
    """24 sample rows the run never saw."""
    path = tmp_path_factory.mktemp("unseen") / "test.csv"
    pd.read_csv(arena.DEFAULT_TRAIN_CSV, dtype=str).iloc[240:264].to_csv(path, index=False)
    return path


def infer_command(source, test_csv, output, *flags) -> list[str]:
    return ["infer", "--devices", "cpu", "--run-dir", source, "--test-csv", test_csv,
            "--output", output, *flags]  # fmt: skip


def submission(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str})


@pytest.fixture(scope="module")
def predictions(exported, unseen_csv, tmp_path_factory):
    """Submissions for `unseen_csv`, made in one process: the run directory's (float32,
    --precision auto on CPU, 2 devices), the bundle's (1 device) and the run's in
    mixed_bfloat16."""
    run_dir, bundle_dir, _ = exported
    out = tmp_path_factory.mktemp("predictions")
    result = run_commands(
        infer_command(run_dir, unseen_csv, out / "run.csv", "--num-devices", "2"),
        infer_command(bundle_dir, unseen_csv, out / "bundle.csv", "--num-devices", "1"),
        infer_command(run_dir, unseen_csv, out / "bf16.csv", "--precision", "mixed_bfloat16"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {name: submission(out / f"{name}.csv") for name in ("run", "bundle", "bf16")}


@pytest.mark.slow
def test_bundle_predicts_as_the_run_directory_does(predictions):
    from_bundle, from_run = predictions["bundle"], predictions["run"]
    assert list(from_bundle["id"]) == list(from_run["id"]) and len(from_bundle) == 24
    diff = np.abs(from_bundle[list(arena.LABEL_COLUMNS)] - from_run[list(arena.LABEL_COLUMNS)])
    assert diff.to_numpy().max() < TOLERANCE


@pytest.mark.slow
def test_bundle_holds_inference_files_only_and_is_smaller(exported):
    run_dir, out, stdout = exported
    names = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert {"bundle.json", "config.json", "head.npz", "calibration.json"} <= names
    assert {"backbone/config.json", "backbone/model.weights.h5", "backbone/tokenizer.json"} <= names
    orbax = [n for n in names if re.search(r"checkpoint|ocdbt|_METADATA|_sharding", n, re.I)]
    assert not orbax and not [n for n in names if "optimizer" in n or "state" in n]
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["format"] == bundle.FORMAT and manifest["version"] == bundle.FORMAT_VERSION
    assert manifest["merged_lora_rank"] == 8 and manifest["source_run"] == run_dir.name
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["lora_rank"] == 0
    # Shared bundles keep no paths of the training machine: names only.
    assert config["run"]["run_dir"] == run_dir.name and config["data"]["train_file"] == "train.csv"
    assert config["model"]["preset"] == "tiny_deberta" and str(run_dir.parent) not in str(config)
    assert (out / "calibration.json").read_bytes() == (run_dir / "calibration.json").read_bytes()
    with np.load(out / "head.npz") as head:
        assert not [k for k in head if "lora" in k or "adam" in k or "optimizer" in k]
        assert np.abs(head["side_standardize/mean"]).max() > 0.1  # fitted, not the zero init
    sizes = re.search(r"bundle ([\d.]+) MiB; run directory ([\d.]+) MiB", stdout)
    assert sizes and float(sizes[1]) < float(sizes[2])
    assert directory_size(out) < directory_size(run_dir)


@pytest.mark.slow
def test_plain_keras_hub_loads_the_backbone_with_lora_merged(exported, tiny_preset):
    """Only the LoRA targets moved from the initial weights (the query and value kernels, by the
    merged deltas, and their biases, which LoRA leaves trainable); no LoRA variables remain, and
    the tokenizer is the run's."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_KERAS_HUB, str(exported[1] / "backbone"), str(tiny_preset)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["jaxpref_imported"] and not report["lora"] and report["same_tokens"]
    attention = "disentangled_attention_encoder_layer_0/self_attention_layer"
    targets = {
        f"{attention}/{layer}/{v}" for layer in ("query", "value") for v in ("kernel", "bias")
    }
    assert set(report["changed"]) == targets


@pytest.mark.slow
def test_mixed_bfloat16_inference_is_close_to_float32(predictions):
    bf16, fp32 = predictions["bf16"], predictions["run"]
    diff = np.abs(bf16[list(arena.LABEL_COLUMNS)] - fp32[list(arena.LABEL_COLUMNS)])
    assert 0 < diff.to_numpy().max() < BF16_TOLERANCE  # applied, and harmless


@pytest.mark.slow
def test_low_precision_runs_train_and_reload(exported, tiny_preset, small_csv, tmp_path):
    """mixed_float16 (with loss scaling), mixed_bfloat16 and bfloat16 training on CPU, in one
    process: finite losses, the precision saved, and each run reloaded in its own precision
    predicting what its training predicted for the validation rows."""
    commands, runs = [], {}
    for precision in ("mixed_float16", "mixed_bfloat16", "bfloat16"):
        run_dir = runs[precision] = tmp_path / precision
        args = tiny_run_args(tiny_preset, small_csv, run_dir)
        commands.append(["train", *args, "--epochs", "1", "--precision", precision])
        commands.append(infer_command(run_dir, small_csv, tmp_path / f"{precision}.csv",
                                      "--precision", precision))  # fmt: skip
    result = run_commands(*commands)
    assert result.returncode == 0, result.stderr[-3000:]
    for precision, run_dir in runs.items():
        history = pd.read_csv(run_dir / "history.csv")
        assert np.isfinite(history[["loss", "val_log_loss"]].to_numpy()).all(), precision
        config = json.loads((run_dir / "config.json").read_text())
        assert config["model"]["precision"] == precision
        during = submission(run_dir / "valid_predictions.csv").set_index("id")
        reloaded = submission(tmp_path / f"{precision}.csv").set_index("id").loc[during.index]
        np.testing.assert_allclose(reloaded, during, atol=TOLERANCE, err_msg=precision)
    assert "loss_scale_optimizer" in optimizer_parts(runs["mixed_float16"])
    assert "loss_scale_optimizer" not in optimizer_parts(runs["bfloat16"])
    assert "loss_scale_optimizer" not in optimizer_parts(exported[0])  # the float32 run


def bundle_arrays(path) -> dict[str, np.ndarray]:
    """Every weight a bundle holds, by name: the backbone preset's and head.npz's."""
    arrays = {}
    with h5py.File(path / "backbone" / "model.weights.h5") as weights:
        weights.visititems(
            lambda name, item: (
                arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
            )
        )
    with np.load(path / "head.npz") as head:
        arrays.update({f"head/{k}": head[k] for k in head})
    return arrays


@pytest.mark.slow
def test_several_runs_export_as_one_bundle_of_their_mean_weights(
    exported, tiny_preset, small_csv, unseen_csv, tmp_path
):
    """Each weight of the averaged bundle is the mean of the runs' own bundles' (there merged
    by Keras, here by `lora.merge_into_kernel`); it has no calibration, and it predicts."""
    run_dir, single, _ = exported
    other = tmp_path / "other"
    args = tiny_run_args(tiny_preset, small_csv, other)
    result = run_commands(
        ["train", *args, "--epochs", "1", "--seed", "7"],
        ["export", "--devices", "cpu", "--run-dir", other, "--out", tmp_path / "other-bundle"],
        ["export", "--devices", "cpu", "--run-dir", run_dir, other, "--out", tmp_path / "mean"],
        infer_command(tmp_path / "mean", unseen_csv, tmp_path / "submission.csv"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(the mean of 2 run directories)" in result.stdout
    first, second, mean = (
        bundle_arrays(p) for p in (single, tmp_path / "other-bundle", tmp_path / "mean")
    )
    assert first.keys() == second.keys() == mean.keys()
    assert not np.allclose(first["head/logits/win/kernel"], second["head/logits/win/kernel"])
    for name in mean:
        np.testing.assert_allclose(mean[name], (first[name] + second[name]) / 2, 1e-5, 1e-6, name)
    assert not (tmp_path / "mean" / "calibration.json").exists()
    predictions = submission(tmp_path / "submission.csv")
    assert (
        len(predictions) == 24 and np.isfinite(predictions[list(arena.LABEL_COLUMNS)]).all().all()
    )


def optimizer_parts(run_dir) -> list[str]:
    """Names of the optimizers whose variables the newest state checkpoint holds."""
    import orbax.checkpoint as oc

    path = checkpoints.latest_state(run_dir / "checkpoints" / "state")["path"]
    tree = oc.v1.pytree_metadata(path, checkpointable_name="pytree").metadata
    return list(tree["optimizer_variables"])


def test_export_refuses_a_directory_that_is_not_a_bundle(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    result = run_script("export.py", "--devices", "cpu", "--run-dir", str(tmp_path), "--out",
                        str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: {tmp_path / 'out'} exists and is not a jaxpref bundle" in result.stderr
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ({"format": "other", "version": 1}, "format is 'other'"),
        ({"format": bundle.FORMAT, "version": bundle.FORMAT_VERSION + 1}, "upgrade jaxpref"),
    ],
)
def test_unreadable_bundles_are_one_line_errors(tmp_path, manifest, message):
    (tmp_path / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(bundle.BundleError, match=message):
        bundle.read_manifest(bundle.Bundle(tmp_path))


def test_inference_precision():
    assert predict.inference_precision("auto", "cpu") == "float32"
    assert predict.inference_precision("auto", "gpu") is None  # the run's own
    assert predict.inference_precision("mixed_float16", "cpu") == "mixed_float16"
    with pytest.raises(ConfigError, match="--precision float8"):
        predict.inference_precision("float8", "tpu")
