"""Log-linear blending: weights recovered, a nested score, files checked, the command end to end."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_script

from jaxpref import cli
from jaxpref.data import arena
from jaxpref.data.probabilities import read_probabilities
from jaxpref.jobs import ensemble
from jaxpref.jobs.ensemble import Blend
from jaxpref.scoring import metrics


def softmax(logits):
    return np.exp(ensemble.log_softmax(logits))


def synthetic(rows: int, seed: int = 0):
    """Two predictors and labels drawn from softmax(0.7 log p1 + 0.5 log p2 + bias)."""
    rng = np.random.default_rng(seed)
    p1, p2 = (softmax(rng.normal(0, 1.5, (rows, 3))) for _ in range(2))
    truth = Blend(np.array([0.7, 0.5]), np.array([0.3, -0.2, 0.0])).predict([p1, p2])
    labels = (rng.random((rows, 1)) > truth.cumsum(axis=1)).sum(axis=1)
    return [p1, p2], labels


def test_blend_recovers_the_weights_and_beats_each_noisy_predictor():
    probs, labels = synthetic(20_000)
    blend = ensemble.fit_blend(probs, labels)
    np.testing.assert_allclose(blend.weights, [0.7, 0.5], atol=0.05)
    np.testing.assert_allclose(blend.bias, [0.3, -0.2, 0.0], atol=0.08)
    blended = metrics.log_loss(blend.predict(probs), labels)
    assert blended < min(metrics.log_loss(p, labels) for p in probs) - 0.05


def test_nested_score_is_reported_beside_the_in_sample_one():
    probs, labels = synthetic(3_000, seed=1)
    order = np.random.default_rng(0).permutation(len(labels))
    splits = [(np.setdiff1d(order, held), held) for held in np.array_split(order, 4)]
    record, blend, _ = ensemble.blend_report(["one", "two"], probs, labels, splits)
    singles = [record["log_loss"]["one"], record["log_loss"]["two"]]
    nested = record["log_loss"][ensemble.BLEND]
    assert record["folds"] == 4 and record["rows"] == 3_000
    assert record["best_single"] == ["one", "two"][int(np.argmin(singles))]
    assert record["in_sample_blend_log_loss"] <= nested < min(singles)
    diff = record["blend_minus_best"]
    assert diff["log_loss"] == pytest.approx(nested - min(singles))
    assert diff["log_loss"] + 3 * diff["se"] < 0
    assert record["weights"] == dict(zip(["one", "two"], blend.weights.tolist(), strict=True))
    held = ensemble.nested_predictions(probs, labels, splits)
    assert metrics.log_loss(held, labels) == pytest.approx(nested)


def test_nested_selection_picks_each_fold_by_the_other_folds():
    """A predictor that is only good on fold 0 wins on all rows, but never predicts fold 0."""
    rows = np.arange(300)
    labels = np.random.default_rng(2).integers(0, 3, 300)
    splits = [(np.setdiff1d(rows, held), held) for held in np.array_split(rows, 3)]
    steady = np.full((300, 3), 0.275)
    steady[rows, labels] = 0.45
    lucky = np.full((300, 3), 1 / 3)
    lucky[:100] = 0.005
    lucky[rows[:100], labels[:100]] = 0.99
    record, _, _ = ensemble.blend_report(["steady", "lucky"], [steady, lucky], labels, splits)
    assert record["best_single"] == "lucky"
    assert record["selection"]["picks"] == ["steady", "lucky", "lucky"]
    expected = (-np.log(0.45) + 2 * np.log(3)) / 3
    assert record["selection"]["log_loss"] == pytest.approx(expected)
    assert record["selection"]["minus_each"]["lucky"]["log_loss"] == pytest.approx(
        expected - record["log_loss"]["lucky"]
    )


def write_predictions(path, ids, probs):
    frame = pd.DataFrame(probs, columns=list(arena.LABEL_COLUMNS))
    frame.insert(0, "id", list(ids))
    frame.to_csv(path, index=False)
    return path


def noisy_oof(frame, seed):
    """A predictor that knows the label, blurred by noise of its own."""
    rng = np.random.default_rng(seed)
    logits = 1.5 * np.eye(3)[frame["label"]] + rng.normal(0, 1.5, (len(frame), 3))
    return softmax(logits)


def test_bad_inputs_are_one_line_errors(small_csv, tmp_path, capsys):
    frame = arena.read_arena_csv(small_csv, labelled=True)
    good = write_predictions(tmp_path / "a.csv", frame["id"], noisy_oof(frame, 0))
    other = write_predictions(tmp_path / "b.csv", [f"x{i}" for i in range(3)], np.eye(3))
    cases = [
        ([good, other], {}, f"{other}: ids differ: 240 id(s) of {small_csv} missing, 3 not in"),
        ([good, good], {}, f"{good}: given twice"),
        ([good], {"test_predictions": [good, good]}, "--test-predictions: 2 file(s) for 1"),
        ([good], {"folds": 1}, "--folds 1: must be at least 2"),
    ]
    for files, options, message in cases:
        code = cli.run_command(
            lambda files=files, options=options: ensemble.run_ensemble(
                files, small_csv, tmp_path / "out", **options
            )
        )
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_ensemble_command_blends_models_and_baselines(small_csv, tmp_path):
    frame = arena.read_arena_csv(small_csv, labelled=True)
    test = arena.read_arena_csv(arena.DEFAULT_TEST_CSV, labelled=False)
    oofs, tests = [], []
    for k in range(2):
        oofs.append(write_predictions(tmp_path / f"oof{k}.csv", frame["id"], noisy_oof(frame, k)))
        probs = softmax(np.eye(3)[: len(test)] * (k + 1))
        tests.append(write_predictions(tmp_path / f"test{k}.csv", test["id"][::-1], probs))
    out = tmp_path / "blend"
    result = run_script(
        "ensemble.py", *map(str, oofs), "--train-csv", str(small_csv), "--baselines",
        "--folds", "3", "--test-predictions", *map(str, tests),
        "--test-csv", str(arena.DEFAULT_TEST_CSV), "--out-dir", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "blend.json").read_text())
    names = [str(oofs[0]), str(oofs[1]), *ensemble.BLENDED_BASELINES]
    assert record["models"] == names and record["folds"] == 3 and record["rows"] == 240
    losses = record["log_loss"]
    assert losses[ensemble.BLEND] < min(losses[name] for name in names)
    assert set(record["weights"]) == set(names) and min(record["weights"].values()) >= 0
    submission = pd.read_csv(out / "submission.csv", dtype={"id": str})
    assert list(submission["id"]) == list(test["id"][::-1])
    np.testing.assert_allclose(submission[list(arena.LABEL_COLUMNS)].sum(axis=1), 1)
    assert "blend: log loss" in result.stdout and "wrote" in result.stdout
    teacher = read_probabilities(out / "oof.csv").aligned(frame["id"], "oof.csv")
    assert metrics.log_loss(teacher, frame["label"].to_numpy()) == pytest.approx(
        losses[ensemble.BLEND], abs=1e-6
    )
