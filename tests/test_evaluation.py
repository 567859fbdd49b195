"""Evaluation: metrics by hand, plots as real PNGs, and a report for a run directory."""

import json
import math
import struct

import numpy as np
import pandas as pd
import pytest
from conftest import run_script, write_learnable_csv

from jaxpref import baselines, data, evaluation, prediction
from jaxpref.config import TrainConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG file's IHDR chunk, after checking the signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_perfect_predictions():
    labels = np.array([0, 1, 2, 2, 1])
    m = evaluation.metrics(np.eye(3)[labels], labels)
    assert m["log_loss"] == pytest.approx(0.0, abs=1e-12)
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)
    assert m["accuracy"] == 1.0 and m["rows"] == 5
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 2, 0], [0, 0, 2]]


def test_uniform_predictions():
    labels = np.array([0, 1, 2, 0])
    m = evaluation.metrics(np.full((4, 3), 1 / 3), labels)
    assert m["log_loss"] == pytest.approx(math.log(3))
    assert m["per_class_log_loss"] == pytest.approx(dict.fromkeys(data.CLASS_NAMES, math.log(3)))
    assert m["accuracy"] == 0.5  # ties in argmax go to class 0
    assert m["ece"] == pytest.approx(0.5 - 1 / 3)


def test_confusion_matrix_and_per_class_log_loss_by_hand():
    probs = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.3, 0.6, 0.1],
            [0.2, 0.5, 0.3],
            [0.1, 0.1, 0.8],
            [0.5, 0.2, 0.3],
            [0.2, 0.2, 0.6],
        ]
    )
    labels = np.array([0, 0, 1, 2, 2, 2])
    m = evaluation.metrics(probs, labels)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    per_class = m["per_class_log_loss"]
    assert per_class["winner_model_a"] == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2)
    assert per_class["winner_model_b"] == pytest.approx(-math.log(0.5))
    tie = -(math.log(0.8) + math.log(0.3) + math.log(0.6)) / 3
    assert per_class["winner_tie"] == pytest.approx(tie)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.5, 0.8, 0.3, 0.6])))


def test_ece_by_hand_over_fifteen_bins():
    probs = np.array([[0.9, 0.05, 0.05], [0.02, 0.95, 0.03], [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]])
    labels = np.array([0, 0, 0, 1])
    # bins [13/15, 14/15): 0.9, right; [14/15, 1]: 0.95, wrong; [7/15, 8/15): 0.5 twice, right
    expected = 0.25 * abs(1 - 0.9) + 0.25 * abs(0 - 0.95) + 0.5 * abs(1 - 0.5)
    assert evaluation.expected_calibration_error(probs, labels) == pytest.approx(expected)


def test_log_loss_clips_zeros_and_renormalises_rows():
    labels = np.array([0, 1])
    zero = evaluation.metrics(np.array([[0.0, 0.5, 0.5], [0.0, 1.0, 0.0]]), labels)
    assert zero["log_loss"] == pytest.approx((-math.log(1e-15) + 0.0) / 2, rel=1e-6)
    unnormalised = evaluation.metrics(np.array([[2.0, 1.0, 1.0], [1.0, 1.0, 2.0]]), labels)
    assert unnormalised["log_loss"] == pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2)


def test_absent_class_has_no_per_class_loss_and_json_stays_valid():
    m = evaluation.metrics(np.array([[0.6, 0.3, 0.1]]), np.array([0]))
    assert m["per_class_log_loss"]["winner_tie"] is None
    json.loads(json.dumps(m, allow_nan=False))


@pytest.mark.parametrize(
    ("probs", "labels"),
    [
        (np.ones((2, 2)), [0, 1]),
        (np.ones((2, 3)), [0]),
        (np.ones((1, 3)), [3]),
        (np.zeros((1, 3)), [0]),
        (np.array([[0.5, np.nan, 0.5]]), [0]),
    ],
)
def test_bad_inputs_are_refused(probs, labels):
    with pytest.raises(ValueError):
        evaluation.metrics(probs, np.asarray(labels))


def test_score_table_pairs_rows():
    labels = np.array([0, 1, 2, 0, 1])
    model = np.array(
        [[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.3, 0.3, 0.4], [0.4, 0.3, 0.3], [0.5, 0.3, 0.2]]
    )
    uniform = np.full((5, 3), 1 / 3)
    table = evaluation.score_table(model, {"uniform": uniform, "same": model}, labels)
    assert list(table["scores"]) == ["model", "uniform", "same"] and table["rows"] == 5
    losses = -np.log(model[np.arange(5), labels])
    assert table["model_log_loss_se"] == pytest.approx(np.std(losses, ddof=1) / math.sqrt(5))
    assert table["model_minus_baseline"]["uniform"]["log_loss"] == pytest.approx(
        losses.mean() - math.log(3)
    )
    assert table["model_minus_baseline"]["same"] == {"log_loss": 0.0, "se": 0.0}
    markdown = evaluation.markdown_table(table["scores"])
    assert markdown.count("\n") == 4 and "| uniform | 1.0986 |" in markdown


def test_reliability_diagram_is_a_png(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=200)
    labels = rng.integers(0, 3, size=200)
    path = evaluation.reliability_diagram(probs, labels, tmp_path / "plots" / "reliability.png")
    assert png_size(path) == (500, 600)
    assert path.stat().st_size > 10_000


def test_learning_curves_is_a_png(tmp_path):
    history = write_history(tmp_path / "history.csv")
    path = evaluation.learning_curves(history, tmp_path / "curves.png")
    assert png_size(path) == (1000, 400)
    assert path.stat().st_size > 10_000


def test_learning_curves_need_epochs(tmp_path):
    empty = tmp_path / "history.csv"
    empty.write_text("epoch,loss\n")
    with pytest.raises(ValueError, match="no epochs"):
        evaluation.learning_curves(empty, tmp_path / "curves.png")


def write_history(path):
    pd.DataFrame(
        {
            "epoch": [0, 1, 2],
            "accuracy": [0.40, 0.50, 0.55],
            "log_loss": [1.09, 1.02, 0.98],
            "loss": [1.10, 1.03, 0.99],
            "val_accuracy": [0.38, 0.45, 0.44],
            "val_log_loss": [1.08, 1.05, 1.06],
            "val_loss": [1.09, 1.06, 1.07],
        }
    ).to_csv(path, index=False)
    return path


def fake_run(tmp_path, rows: int = 150):
    """A run directory as training leaves it, without a model; predictions from a fixed rng."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    csv_path = write_learnable_csv(tmp_path / "train.csv", rows)
    frame = data.read_arena_csv(csv_path, labelled=True)
    train, valid = data.split_train_valid(frame, 0.2, seed=0)
    TrainConfig(train_csv=str(csv_path), run_dir=str(run_dir), batch_size=6).to_json(
        run_dir / "config.json"
    )
    pd.concat([train[["id"]].assign(split="train"), valid[["id"]].assign(split="valid")]).to_csv(
        run_dir / "split.csv", index=False
    )
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=len(valid))
    order = np.random.default_rng(1).permutation(len(valid))
    prediction.write_submission(
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
    result = evaluation.evaluate_run(run_dir)
    labels = valid["label"].to_numpy()

    assert list(result["scores"]) == ["model", *baselines.BASELINE_NAMES]
    assert result["rows"] == len(valid) and result["train_rows"] == len(train)
    assert result["rows_in_training_split"] == 0
    assert_same_metrics(result["scores"]["model"], evaluation.metrics(probs, labels))
    expected = baselines.predict_baselines(baselines.fit_baselines(train), valid)
    for name, baseline_probs in expected.items():
        assert_same_metrics(result["scores"][name], evaluation.metrics(baseline_probs, labels))
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
    with pytest.raises(prediction.RunDirError, match="ids differ from the validation ids"):
        evaluation.evaluate_run(run_dir, out_dir=tmp_path / "report")


def test_evaluate_run_notices_a_changed_training_csv(tmp_path):
    run_dir, *_ = fake_run(tmp_path)
    write_learnable_csv(tmp_path / "train.csv", 100)
    with pytest.raises(prediction.RunDirError, match="was the training CSV changed"):
        evaluation.evaluate_run(run_dir)


def test_evaluate_run_on_a_csv_predicts_with_the_model(tmp_path, monkeypatch):
    run_dir, train, valid, _ = fake_run(tmp_path)
    calls = {}

    def predict_frame(model, encoder, frame, batch_size):
        calls["batch_size"] = batch_size
        return np.tile([0.5, 0.3, 0.2], (len(frame), 1))

    monkeypatch.setattr(evaluation.distribution, "hide_accelerators_from_tensorflow", lambda: None)
    monkeypatch.setattr(
        evaluation.distribution, "set_data_parallel", lambda d: calls.__setitem__("devices", d)
    )
    monkeypatch.setattr(
        prediction, "load_run", lambda d: (None, None, TrainConfig.from_json(d / "config.json"))
    )
    monkeypatch.setattr(prediction, "predict_frame", predict_frame)
    result = evaluation.evaluate_run(
        run_dir, tmp_path / "train.csv", tmp_path / "report", devices="cpu", num_devices=4
    )
    assert len(calls["devices"]) == 4
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
    assert (run_dir / "evaluation" / "evaluation.md").exists()
