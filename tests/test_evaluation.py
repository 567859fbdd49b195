"""Evaluation: metrics by hand, plots as real PNGs, and a report for a run directory."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import run_commands, run_script, write_learnable_csv
from test_report import png_size, write_history

from jaxpref.config import TrainConfig
from jaxpref.data import arena, probabilities, splitting
from jaxpref.jobs import evaluate
from jaxpref.parallel import distribution
from jaxpref.rundir import RunDirError
from jaxpref.scoring import baselines, metrics
from jaxpref.serve import predict


def fake_run(tmp_path, rows: int = 150):
    """A run directory as training leaves it, without a model; predictions from a fixed rng."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    csv_path = write_learnable_csv(tmp_path / "train.csv", rows)
    frame = arena.read_arena_csv(csv_path, labelled=True)
    train, valid = splitting.split_train_valid(frame, 0.2, seed=0)
    TrainConfig.from_flat(
        dict(train_csv=str(csv_path), run_dir=str(run_dir), batch_size=6)
    ).to_json(run_dir / "config.json")
    pd.concat([train[["id"]].assign(split="train"), valid[["id"]].assign(split="valid")]).to_csv(
        run_dir / "split.csv", index=False
    )
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=len(valid))
    order = np.random.default_rng(1).permutation(len(valid))
    probabilities.write_submission(
        valid["id"].iloc[order], probs[order], run_dir / "valid_predictions.csv"
    )
    write_history(run_dir / "history.csv")
    return run_dir, train, valid, probs


def assert_same_metrics(got: dict, expected: dict) -> None:
    assert got["confusion_matrix"] == expected["confusion_matrix"]
    assert got["rows"] == expected["rows"]
    for key in ("log_loss", "accuracy", "ece"):
        assert got[key] == pytest.approx(expected[key], rel=1e-9), key
    assert got["per_class_log_loss"] == pytest.approx(expected["per_class_log_loss"], rel=1e-9)


def test_evaluate_run_scores_model_and_baselines_on_the_validation_rows(tmp_path):
    run_dir, train, valid, probs = fake_run(tmp_path)
    result = evaluate.evaluate_run(run_dir)
    labels = valid["label"].to_numpy()

    assert list(result["scores"]) == ["model", *baselines.BASELINE_NAMES]
    assert result["rows"] == len(valid) and result["train_rows"] == len(train)
    assert result["rows_in_training_split"] == 0
    assert_same_metrics(result["scores"]["model"], metrics.scores(probs, labels))
    expected = baselines.predict_baselines(baselines.fit_baselines(train), valid)
    for name, baseline_probs in expected.items():
        assert_same_metrics(result["scores"][name], metrics.scores(baseline_probs, labels))
    assert result["scores"]["tfidf_length_logreg"]["log_loss"] < 0.8  # learnable words

    out = run_dir / "evaluation"
    assert json.loads((out / "evaluation.json").read_text()) == result
    report = (out / "evaluation.md").read_text()
    for name in result["scores"]:
        assert f"| {name} | {result['scores'][name]['log_loss']:.4f} |" in report
    assert f"± {result['model_log_loss_se']:.4f}" in report
    assert "![reliability](reliability.png)" in report
    for plot in ("reliability.png", "learning_curves.png"):
        assert png_size(out / plot)[0] > 0


def test_evaluate_run_rejects_predictions_for_other_rows(tmp_path):
    run_dir, *_ = fake_run(tmp_path)
    predictions = pd.read_csv(run_dir / "valid_predictions.csv", dtype={"id": str})
    predictions.iloc[1:].to_csv(run_dir / "valid_predictions.csv", index=False)
    with pytest.raises(arena.DataError, match="ids differ: 1 id.s. of the validation split"):
        evaluate.evaluate_run(run_dir, out_dir=tmp_path / "report")


def test_evaluate_run_notices_a_changed_training_csv(tmp_path):
    run_dir, *_ = fake_run(tmp_path)
    write_learnable_csv(tmp_path / "train.csv", 100)
    with pytest.raises(RunDirError, match="was the file changed after the run"):
        evaluate.evaluate_run(run_dir)


def test_evaluate_run_on_a_csv_predicts_with_the_model(tmp_path, monkeypatch):
    run_dir, train, valid, _ = fake_run(tmp_path)
    calls = {}

    def predict_frame(model, packer, frame, batch_size, tta):
        calls["batch_size"] = batch_size
        return np.tile([0.5, 0.3, 0.2], (len(frame), 1))

    def setup(devices, num, batch, *layout):
        calls["devices"] = num
        return [SimpleNamespace(platform="cpu")] * num

    monkeypatch.setattr(distribution, "setup", setup)
    monkeypatch.setattr(
        predict,
        "load_run",
        lambda d, precision=None, quantize=None: (
            None,
            None,
            TrainConfig.from_json(d / "config.json"),
        ),
    )
    monkeypatch.setattr(predict, "predict_frame", predict_frame)
    monkeypatch.setattr(predict, "check_memory", lambda *args: None)  # the fake run has no preset
    result = evaluate.evaluate_run(
        run_dir, tmp_path / "train.csv", tmp_path / "report", devices="cpu", num_devices=4
    )
    assert calls["devices"] == 4
    assert calls["batch_size"] == 8  # batch 6 rounded up to a multiple of 4 devices
    assert result["rows"] == len(train) + len(valid)
    assert result["rows_in_training_split"] == len(train)
    assert (
        f"Warning:** {len(train)} of these rows"
        in (tmp_path / "report" / "evaluation.md").read_text()
    )


def test_script_reports_a_missing_run_dir_in_one_line(tmp_path):
    result = run_script("evaluate.py", "--devices", "cpu", "--run-dir", str(tmp_path / "nope"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'nope' / 'config.json'} is missing; "
        "is this the run directory of a finished training?"
    )


def test_script_prints_the_table(tmp_path):
    run_dir, *_ = fake_run(tmp_path)
    result = run_script("evaluate.py", "--devices", "cpu", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert "| model |" in result.stdout and "| tfidf_length_logreg |" in result.stdout
    # The run's own validation rows chose its epoch and temperature: the report says so.
    note = "Note: the best epoch was chosen and the temperature fitted on these same rows"
    assert note in result.stdout
    assert f"**{note[:5]}**{note[5:]}" in (run_dir / "evaluation" / "evaluation.md").read_text()


@pytest.mark.slow
def test_evaluate_on_a_csv_scores_what_infer_predicts(tiny_run, small_csv, tmp_path):
    """`evaluate --csv` on a real run: the model's scores are those of `infer`'s predictions of
    the same rows (calibrated, from the best weights), beside baselines fitted on the run's
    training split, which the report says the rows overlap."""
    result = run_commands(
        ["evaluate", "--devices", "cpu", "--run-dir", tiny_run, "--csv", small_csv,
         "--out-dir", tmp_path / "report"],
        ["infer", "--devices", "cpu", "--run-dir", tiny_run, "--test-csv", small_csv,
         "--output", tmp_path / "submission.csv"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "evaluation.json").read_text())
    frame = arena.read_arena_csv(small_csv, labelled=True)
    predicted = pd.read_csv(tmp_path / "submission.csv", dtype={"id": str}).set_index("id")
    probs = predicted.loc[frame["id"], list(arena.LABEL_COLUMNS)].to_numpy()
    expected = metrics.scores(probs, frame["label"].to_numpy())
    assert report["rows"] == 240 and report["rows_in_training_split"] == 216
    for name in ("log_loss", "accuracy", "per_class_log_loss"):
        assert report["scores"]["model"][name] == pytest.approx(expected[name], abs=1e-6), name
    assert {"length_logreg", "tfidf_length_logreg"} <= set(report["scores"])
    assert "| model |" in result.stdout and "temperature fitted on these same rows" not in (
        result.stdout
    )
