"""Scores: log loss, accuracy, ECE, class prior, paired comparisons."""

import json
import math

import numpy as np
import pytest

from jaxpref.data import arena
from jaxpref.scoring import metrics, report


def test_perfect_predictions():
    labels = np.array([0, 1, 2, 2, 1])
    m = metrics.scores(np.eye(3)[labels], labels)
    assert m["log_loss"] == pytest.approx(0.0, abs=1e-12)
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)
    assert m["accuracy"] == 1.0 and m["rows"] == 5
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 2, 0], [0, 0, 2]]


def test_uniform_predictions():
    labels = np.array([0, 1, 2, 0])
    m = metrics.scores(np.full((4, 3), 1 / 3), labels)
    assert m["log_loss"] == pytest.approx(math.log(3))
    assert m["per_class_log_loss"] == pytest.approx(dict.fromkeys(arena.CLASS_NAMES, math.log(3)))
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
    m = metrics.scores(probs, labels)
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
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(expected)


def test_log_loss_clips_zeros_and_renormalises_rows():
    labels = np.array([0, 1])
    zero = metrics.scores(np.array([[0.0, 0.5, 0.5], [0.0, 1.0, 0.0]]), labels)
    assert zero["log_loss"] == pytest.approx((-math.log(1e-15) + 0.0) / 2, rel=1e-6)
    unnormalised = metrics.scores(np.array([[2.0, 1.0, 1.0], [1.0, 1.0, 2.0]]), labels)
    assert unnormalised["log_loss"] == pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2)


def test_absent_class_has_no_per_class_loss_and_json_stays_valid():
    m = metrics.scores(np.array([[0.6, 0.3, 0.1]]), np.array([0]))
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
        metrics.scores(probs, np.asarray(labels))


def test_score_table_pairs_rows():
    labels = np.array([0, 1, 2, 0, 1])
    model = np.array(
        [[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.3, 0.3, 0.4], [0.4, 0.3, 0.3], [0.5, 0.3, 0.2]]
    )
    uniform = np.full((5, 3), 1 / 3)
    table = metrics.score_table(model, {"uniform": uniform, "same": model}, labels)
    assert list(table["scores"]) == ["model", "uniform", "same"] and table["rows"] == 5
    losses = -np.log(model[np.arange(5), labels])
    assert table["model_log_loss_se"] == pytest.approx(np.std(losses, ddof=1) / math.sqrt(5))
    assert table["model_minus_baseline"]["uniform"]["log_loss"] == pytest.approx(
        losses.mean() - math.log(3)
    )
    assert table["model_minus_baseline"]["same"] == {"log_loss": 0.0, "se": 0.0}
    markdown = report.markdown_table(table["scores"])
    assert markdown.count("\n") == 4 and "| uniform | 1.0986 |" in markdown


def test_smoothed_log_loss_is_keras_training_loss_on_hard_labels():
    import keras

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=40)
    labels = rng.integers(0, 3, 40)
    keras_loss = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    expected = float(keras_loss(np.eye(3)[labels], probs.astype("float32")))
    assert metrics.smoothed_log_loss(probs, labels, 0.1) == pytest.approx(expected, rel=1e-5)
    assert metrics.smoothed_log_loss(probs, labels, 0.0) == metrics.log_loss(probs, labels)
    assert metrics.accuracy(probs, labels) == metrics.scores(probs, labels)["accuracy"]
    assert metrics.accuracy(np.eye(3)[[0, 1, 1]], np.array([0, 1, 2])) == pytest.approx(2 / 3)


def test_pairwise_accuracy_by_hand():
    """Ties are left out; the winner must be strictly more probable than the loser."""
    probs = np.array(
        [
            [0.5, 0.3, 0.2],  # A won: right
            [0.2, 0.3, 0.5],  # B won: right, though a tie is the most probable
            [0.4, 0.4, 0.2],  # A won: equal, wrong
            [0.6, 0.3, 0.1],  # B won: wrong
            [0.1, 0.1, 0.8],  # tie: left out
        ]
    )
    labels = np.array([0, 1, 0, 1, 2])
    assert metrics.pairwise_accuracy(probs, labels) == 0.5
    m = metrics.scores(probs, labels)
    assert m["pairwise_accuracy"] == 0.5 and (m["rows"], m["pairwise_rows"]) == (5, 4)
    assert metrics.pairwise_accuracy(probs[4:], labels[4:]) is None
    markdown = report.markdown_table({"model": m})
    assert "| model | " in markdown and " | 0.500 | " in markdown


def test_pairwise_accuracy_per_subset_by_hand():
    probs = np.array([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1, 1, 2])
    subsets = np.array(["math", "chat", "math", "chat"], dtype=object)
    always_a = np.tile([0.5, 0.4, 0.1], (4, 1))
    table = metrics.subset_pairwise_accuracy({"model": probs, "a": always_a}, labels, subsets)
    assert table == {
        "chat": {"rows": 2, "pairwise_rows": 1, "pairwise_accuracy": {"model": 0.0, "a": 0.0}},
        "math": {"rows": 2, "pairwise_rows": 2, "pairwise_accuracy": {"model": 1.0, "a": 0.5}},
    }
    lines = report.subset_table(table).splitlines()
    assert lines[0] == "| subset | rows | pairs with a winner | model | a |"
    assert lines[2:] == ["| chat | 2 | 1 | 0.000 | 0.000 |", "| math | 2 | 2 | 1.000 | 0.500 |"]
