"""End to end on 4 simulated CPU devices: train -> best Orbax checkpoint -> reload -> submission."""

import json
import math
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import (
    REPO,
    built_once,
    infer_predictions,
    run_commands,
    run_script,
    start_python,
    tiny_run_args,
    write_learnable_csv,
)

from jaxpref.data import arena
from jaxpref.inputs import batching
from jaxpref.scoring import calibration


def _train(tiny_preset, run_dir, *extra):
    result = run_script(
        "train_jax.py", "--devices", "cpu", "--num-devices", "4", "--preset", str(tiny_preset),
        "--run-dir", str(run_dir), "--batch-size", "8", "--sequence-length", "64", *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="session")
def sample_run(tiny_preset, tmp_path_factory):
    """(run directory, its stderr) of 2 epochs on the embedded sample, trained once."""

    def build(root):
        result = _train(tiny_preset, root / "run", "--epochs", "2", "--learning-rate", "3e-3",
                        "--log-every", "0.2")  # fmt: skip
        (root / "stderr.txt").write_text(result.stderr)

    root = built_once(tmp_path_factory, "sample_run", build)
    return root / "run", (root / "stderr.txt").read_text()


@pytest.mark.slow
def test_run_directory_holds_everything_inference_needs(sample_run):
    run_dir, stderr = sample_run
    for name in ("config.json", "preset/config.json", "preset/tokenizer.json", "history.csv",
                 "summary.json", "split.csv", "train.log", "valid_predictions.csv"):  # fmt: skip
        assert (run_dir / name).exists(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["devices"]["num_devices"] == 4 and config["model"]["precision"] == "float32"
    assert "best val_log_loss" in stderr
    # No --train-file: the embedded sample, said in a warning (here and in train.log).
    warning = "warning: no --train-file given: training on the embedded 1,000-row sample ("
    assert warning in stderr and warning in (run_dir / "train.log").read_text()
    split = pd.read_csv(run_dir / "split.csv", dtype=str)
    assert len(split) == 1000 and split["id"].is_unique  # every row used, none twice
    assert (split["split"] == "valid").sum() == 100


def tensorboard_scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} from the TensorBoard event files under `directory`."""
    import tensorflow as tf

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor))
                scalars.setdefault(value.tag, []).append((event.step, number))
    return scalars


@pytest.mark.slow
def test_the_run_can_be_watched(sample_run):
    """Outside a terminal: jaxpref's own lines first, progress during the first epoch, one line
    per epoch; TensorBoard scalars equal to history.csv; env.json for a bug report."""
    run_dir, stderr = sample_run
    lines = stderr.splitlines()
    assert re.match(r"\d\d:\d\d:\d\d devices: 4 x cpu", lines[0]), lines[:3]
    foreign = [line for line in lines if not re.match(r"\d\d:\d\d:\d\d ", line)]
    assert not foreign, foreign  # no TensorFlow/absl/XLA lines, before or during the run
    first_epoch_end = next(i for i, line in enumerate(lines) if " epoch 1: " in line)
    progress = [line for line in lines[:first_epoch_end] if "epoch 1/2 step " in line]
    assert progress and all(k in progress[0] for k in ("pairs/s", "tokens/s", "lr ", "ETA"))
    assert re.search(r"ETA \d+:\d\d:\d\d \(run \d+:\d\d:\d\d\)", progress[0]), progress[0]
    assert sum(" epoch 2: " in line for line in lines) == 1

    scalars = tensorboard_scalars(run_dir / "tensorboard")
    wanted = {"train/loss", "train/log_loss", "train/accuracy", "validation/log_loss",
              "validation/accuracy", "train/learning_rate", "train/pairs_per_s",
              "train/padding_efficiency"}  # fmt: skip
    assert wanted <= set(scalars), sorted(scalars)
    history = pd.read_csv(run_dir / "history.csv")
    logged = [v for _, v in scalars["validation/log_loss"]]
    np.testing.assert_allclose(logged, history["val_log_loss"], rtol=1e-6)

    env = json.loads((run_dir / "env.json").read_text())
    assert env["devices"] == {"platform": "cpu", "kind": "cpu", "count": 4, "processes": 1}
    assert env["packages"]["keras"] and env["packages"]["jax"] and env["python"]
    assert env["command"][0] == "train_jax.py" and "--run-dir" in env["command"]


@pytest.mark.slow
def test_checkpoint_is_the_epoch_with_best_val_log_loss(sample_run):
    run_dir, _ = sample_run
    history = pd.read_csv(run_dir / "history.csv")
    assert len(history) == 2
    best = int(history["val_log_loss"].idxmin())
    steps = [p.name for p in (run_dir / "checkpoints" / "best").iterdir() if p.name.isdigit()]
    assert steps == [str(history["epoch"][best])]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_epoch"] == best + 1
    assert math.isclose(summary["best_val_log_loss"], history["val_log_loss"][best], rel_tol=1e-6)


# A machine with 2 devices (the run trained on 4): `jaxpref infer` on one of them, then a
# notebook's `jaxpref.load` on both, twice; the second model's dropout seed generators are
# numbered after the first's, so their paths match none saved (argv: run, rows file, out dir).
RELOADED_ON_FEWER_DEVICES = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jaxpref
from jaxpref.cli import main
run, rows, out = sys.argv[1:]
infer = ["infer", "--devices", "cpu", "--num-devices", "1", "--run-dir", run]
if main([*infer, "--test-file", rows, "--output", f"{out}/on1.csv"]):
    sys.exit(1)
frame = jaxpref.read_rows(rows, labelled=False)
for name in ("on2", "on2-again"):
    jaxpref.load(run, devices="cpu").predict(frame).to_csv(f"{out}/{name}.csv", index=False)
"""


@pytest.mark.slow
def test_reloaded_weights_reproduce_validation_predictions(sample_run, tmp_path):
    """The best weights of the 4-device run, restored in a process where two of those devices
    do not exist (`RELOADED_ON_FEWER_DEVICES`: infer on 1 device, then `jaxpref.load` on 2,
    twice in one process), give the predictions the 4 devices gave during training."""
    run_dir, _ = sample_run
    split = pd.read_csv(run_dir / "split.csv", dtype=str)
    train = arena.read_arena_csv(arena.DEFAULT_TRAIN_CSV, labelled=True)
    valid_ids = set(split.loc[split["split"] == "valid", "id"])
    raw = pd.read_csv(arena.DEFAULT_TRAIN_CSV, dtype=str)
    valid_csv = tmp_path / "valid.csv"
    raw[raw["id"].isin(valid_ids)].to_csv(valid_csv, index=False)

    log = tmp_path / "reload.log"
    args = ("-c", RELOADED_ON_FEWER_DEVICES, str(run_dir), str(valid_csv), str(tmp_path))
    assert start_python(*args, log=log).wait(timeout=600) == 0, log.read_text()[-3000:]
    during = pd.read_csv(run_dir / "valid_predictions.csv", dtype={"id": str}).set_index("id")
    assert sorted(during.index) == sorted(valid_ids)
    for name in ("on1", "on2", "on2-again"):
        reloaded = pd.read_csv(tmp_path / f"{name}.csv", dtype={"id": str}).set_index("id")
        assert sorted(reloaded.index) == sorted(valid_ids), name
        np.testing.assert_allclose(
            reloaded.loc[during.index, during.columns].to_numpy(), during.to_numpy(), atol=1e-5,
            err_msg=name,
        )  # fmt: skip

    labels = train.set_index("id").loc[during.index, "label"].to_numpy()
    log_loss = -np.mean(np.log(during.to_numpy()[np.arange(len(labels)), labels]))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert math.isclose(log_loss, summary["calibrated_val_log_loss"], abs_tol=1e-4)
    calibration = json.loads((run_dir / "calibration.json").read_text())
    assert math.isclose(
        calibration["val_log_loss_before"], summary["best_val_log_loss"], abs_tol=1e-4
    )
    assert calibration["val_log_loss_after"] <= calibration["val_log_loss_before"] + 1e-12


@pytest.mark.slow
def test_submission_for_real_test_csv_on_four_devices(sample_run, tmp_path):
    run_dir, _ = sample_run
    out = tmp_path / "submission.csv"
    relative = os.path.relpath(run_dir, REPO)  # users pass relative run directories
    result = run_script("infer.py", "--devices", "cpu", "--num-devices", "4",
                        "--run-dir", relative, "--output", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    sub = pd.read_csv(out, dtype={"id": str})
    sample = pd.read_csv(arena.SAMPLE_DIR / "arena_sample_submission.csv", dtype={"id": str})
    assert list(sub.columns) == list(sample.columns)
    assert sub["id"].tolist() == sample["id"].tolist() == ["136060", "211333", "1233961"]
    probs = sub[list(arena.LABEL_COLUMNS)].to_numpy()
    assert np.isfinite(probs).all() and (probs > 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert not list(tmp_path.glob(".submission.csv.*"))  # no temp file left behind


@pytest.mark.slow
def test_fold_runs_predict_as_the_mean_of_their_calibrated_predictions(sample_run, tmp_path):
    """infer.py on a cross-validation directory averages its folds; here two copies of one run
    whose temperatures differ, so the expected mean follows from one run's submission."""
    run_dir, _ = sample_run
    single = infer_predictions(run_dir, arena.DEFAULT_TEST_CSV, tmp_path / "single.csv")
    temperature = calibration.load_temperature(run_dir / "calibration.json")
    for fold in range(2):
        shutil.copytree(run_dir, tmp_path / "cv" / f"fold{fold}")
    (tmp_path / "cv" / "cv.json").write_text("{}")
    (tmp_path / "cv" / "fold1" / "calibration.json").write_text('{"temperature": 0.5}')
    averaged = infer_predictions(tmp_path / "cv", arena.DEFAULT_TEST_CSV, tmp_path / "cv.csv")
    probs = single.loc[averaged.index].to_numpy()
    expected = (probs + calibration.apply_temperature(probs, 0.5 / temperature)) / 2
    np.testing.assert_allclose(averaged.to_numpy(), expected, atol=1e-5)
    assert not np.allclose(averaged.to_numpy(), probs, atol=1e-3)


@pytest.mark.slow
def test_learns_a_label_that_follows_from_the_text(tiny_preset, tmp_path):
    csv_path = write_learnable_csv(tmp_path / "learnable.csv", rows=480)
    run_dir = tmp_path / "run"
    _train(tiny_preset, run_dir, "--train-csv", str(csv_path), "--epochs", "6",
           "--learning-rate", "3e-3", "--valid-fraction", "0.2")  # fmt: skip
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["prior_val_log_loss"] > 1.09
    assert summary["best_val_log_loss"] < 0.8, summary


@pytest.mark.slow
def test_extra_chosen_rejected_rows_join_training_only(tiny_preset, small_csv, tmp_path):
    extra = tmp_path / "extra.jsonl"
    lines = [
        json.dumps({"chosen": f"\n\nHuman: q{i}\n\nAssistant: good answer {i}",
                    "rejected": f"\n\nHuman: q{i}\n\nAssistant: bad {i}"})
        for i in range(40)
    ]  # fmt: skip
    extra.write_text("\n".join(lines) + "\n")
    run_dir = tmp_path / "run"
    result = run_script("train_jax.py", *tiny_run_args(tiny_preset, small_csv, run_dir),
                        "--epochs", "1", "--extra-train", str(extra))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    split = pd.read_csv(run_dir / "split.csv", dtype=str)
    assert split["split"].value_counts().to_dict() == {"train": 216, "extra": 40, "valid": 24}
    log = (run_dir / "train.log").read_text()
    assert "extra training rows" in log
    assert "extra rows' targets: 0.30 of each on a tie" in log  # the default share


@pytest.mark.slow
def test_quality_options_train_and_reload(tiny_preset, small_csv, tmp_path):
    """Symmetric head + swap augmentation + side features + cosine schedule + LoRA dropout,
    end to end."""
    run_dir = tmp_path / "run"
    flags = ["--epochs", "1", "--head", "symmetric", "--swap-augment", "--side-features",
             "--schedule", "cosine", "--lora-dropout", "0.1"]  # fmt: skip
    infer = ["infer", "--devices", "cpu", "--num-devices", "2", "--run-dir", run_dir,
             "--test-csv", small_csv]  # fmt: skip
    result = run_commands(
        ["train", *tiny_run_args(tiny_preset, small_csv, run_dir), *flags],
        [*infer, "--output", tmp_path / "plain.csv"],
        [*infer, "--output", tmp_path / "tta.csv", "--tta"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = {name: submission(tmp_path / f"{name}.csv") for name in ("plain", "tta")}
    # The restored model (side-feature statistics included) reproduces training's predictions.
    during = submission(run_dir / "valid_predictions.csv")
    np.testing.assert_allclose(outputs["plain"].loc[during.index], during, atol=1e-5)
    # A symmetric head already mirrors exactly, so swap TTA changes nothing.
    np.testing.assert_allclose(outputs["tta"], outputs["plain"], atol=1e-6)


def submission(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str}).set_index("id")


def swapped_sides_csv(source, path):
    """`source` with responses A and B (and their models and labels) exchanged."""
    frame = pd.read_csv(source, dtype=str)
    pairs = [("response_a", "response_b"), ("model_a", "model_b"),
             ("winner_model_a", "winner_model_b")]  # fmt: skip
    for a, b in pairs:
        frame[[a, b]] = frame[[b, a]].to_numpy()
    frame.to_csv(path, index=False)
    return path


def training_predictions(run_dir) -> pd.DataFrame:
    return pd.read_csv(run_dir / "valid_predictions.csv", dtype={"id": str}).set_index("id")


@pytest.mark.slow
def test_non_default_options_train_and_reload(tiny_preset, small_csv, tmp_path):
    """Concat head, no side features, no swap, constant schedule, full fine-tuning, no
    calibration: trained and reloaded end to end, the reloaded model predicting what training
    predicted; swap TTA is the mean of the prediction and the mirrored prediction of the
    swapped pair (a concat head does not mirror by itself)."""
    run_dir = tmp_path / "run"
    flags = ["--epochs", "1", "--head", "concat", "--no-swap-augment", "--no-side-features",
             "--schedule", "constant", "--lora-rank", "0", "--learning-rate", "1e-4",
             "--no-calibrate"]  # fmt: skip
    swapped_csv = swapped_sides_csv(small_csv, tmp_path / "swapped.csv")
    infer = ["infer", "--devices", "cpu", "--num-devices", "2", "--run-dir", run_dir]
    result = run_commands(
        ["train", *tiny_run_args(tiny_preset, small_csv, run_dir), *flags],
        [*infer, "--test-csv", small_csv, "--output", tmp_path / "plain.csv"],
        [*infer, "--test-csv", swapped_csv, "--output", tmp_path / "swapped.csv"],
        [*infer, "--test-csv", small_csv, "--output", tmp_path / "tta.csv", "--tta"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((run_dir / "config.json").read_text())["model"]
    assert (config["head"], config["side_features"], config["lora_rank"]) == ("concat", False, 0)
    plain, swapped, tta = (submission(tmp_path / f"{n}.csv") for n in ("plain", "swapped", "tta"))
    during = training_predictions(run_dir)
    np.testing.assert_allclose(plain.loc[during.index], during, atol=1e-5)
    mirrored = swapped[["winner_model_b", "winner_model_a", "winner_tie"]].to_numpy()
    assert np.abs(plain.to_numpy() - mirrored).max() > 1e-3  # the head is not symmetric
    np.testing.assert_allclose(tta.to_numpy(), (plain.to_numpy() + mirrored) / 2, atol=1e-6)


def test_fit_segments_finish_an_interrupted_period_then_run_whole_ones():
    from jaxpref.training.trainer import Progress, Segment, fit_segments

    assert fit_segments([9] * 3, Progress()) == [Segment(0, 3)]
    assert fit_segments([9] * 3, Progress(period=1, step=7)) == [Segment(1, 2, 7), Segment(2, 3)]
    assert fit_segments([9] * 3, Progress(period=2, step=7)) == [Segment(2, 3, 7)]
    assert fit_segments([9] * 3, Progress(period=2)) == [Segment(2, 3)]
    assert fit_segments([9] * 3, Progress(period=3)) == []
    # Keras' steps_per_epoch is one number: periods of another length get their own fit.
    periods = [7, 7, 6, 7, 7, 7, 6, 7]
    assert fit_segments(periods, Progress()) == [
        Segment(0, 2), Segment(2, 3), Segment(3, 6), Segment(6, 7), Segment(7, 8)
    ]  # fmt: skip
    assert fit_segments(periods, Progress(period=3, step=2)) == [
        Segment(3, 4, 2), Segment(4, 6), Segment(6, 7), Segment(7, 8)
    ]  # fmt: skip


def test_validation_periods_cut_each_epoch_and_refuse_more_periods_than_steps():
    from jaxpref.config import ConfigError
    from jaxpref.training.trainer import validation_periods

    lengths = np.random.default_rng(0).integers(10, 256, size=216)
    buckets = batching.bucket_lengths(256)
    plans = [batching.plan_batches(lengths, 8, buckets, shuffle=True, epoch=e) for e in range(2)]
    periods = validation_periods(plans, 4)
    assert [len(p) for p in periods] == [7, 7, 6, 7] * 2
    for plan, cut in ((plans[0], periods[:4]), (plans[1], periods[4:])):
        assert sorted(id(b) for p in cut for b in p) == sorted(id(b) for b in plan)
    assert validation_periods(plans, 1) == plans
    with pytest.raises(ConfigError, match="more than the 27 training steps per epoch"):
        validation_periods(plans, 28)
