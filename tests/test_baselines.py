"""Baselines: valid probabilities on real rows, the prior by hand, and learning what they can."""

import math

import numpy as np
import pandas as pd
import pytest
from conftest import write_learnable_csv

from jaxpref.data import arena, splitting, text
from jaxpref.scoring import baselines, metrics


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(probs[np.arange(len(labels)), labels])))


@pytest.fixture(scope="module")
def sample_split():
    frame = arena.read_arena_csv(arena.DEFAULT_TRAIN_CSV, labelled=True)
    return splitting.split_train_valid(frame, 0.2, seed=0)


@pytest.fixture(scope="module")
def sample_predictions(sample_split):
    train, valid = sample_split
    return baselines.predict_baselines(baselines.fit_baselines(train), valid)


def test_every_baseline_gives_probabilities(sample_split, sample_predictions):
    _, valid = sample_split
    assert tuple(sample_predictions) == baselines.BASELINE_NAMES
    for name, probs in sample_predictions.items():
        assert probs.shape == (len(valid), 3), name
        assert np.all(np.isfinite(probs)) and np.all(probs > 0), name
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9, err_msg=name)


def test_learned_baselines_vary_by_row_and_the_prior_does_not(sample_predictions):
    assert np.ptp(sample_predictions["class_prior"], axis=0).max() == 0
    for name in ("length_logreg", "tfidf_length_logreg"):
        assert np.ptp(sample_predictions[name], axis=0).max() > 0.05, name


def test_class_prior_log_loss_is_the_cross_entropy_of_smoothed_frequencies(
    sample_split, sample_predictions
):
    train, valid = sample_split
    counts = np.bincount(train["label"], minlength=3) + 1
    prior = counts / counts.sum()
    valid_share = np.bincount(valid["label"], minlength=3) / len(valid)
    by_hand = -float(np.sum(valid_share * np.log(prior)))
    np.testing.assert_allclose(metrics.class_prior(train["label"].to_numpy()), prior)
    assert log_loss(sample_predictions["class_prior"], valid["label"].to_numpy()) == (
        pytest.approx(by_hand, rel=1e-12)
    )


def test_class_prior_never_gives_zero_to_an_unseen_class():
    prior = metrics.class_prior(np.array([0, 0, 1]))
    np.testing.assert_allclose(prior, [3 / 6, 2 / 6, 1 / 6])


def test_fitting_is_deterministic(sample_split):
    train, valid = sample_split
    first = baselines.predict_baselines(baselines.fit_baselines(train), valid)
    second = baselines.predict_baselines(baselines.fit_baselines(train), valid)
    for name in baselines.BASELINE_NAMES:
        np.testing.assert_array_equal(first[name], second[name])


def test_length_features_see_markdown_and_both_sides():
    frame = arena_frame(
        [
            ("# Title\n- one\n- two\n```py\nx = 1\n```\n**bold**", "short"),
            ("short", "short"),
        ],
        labels=[0, 2],
    )
    features = baselines.length_features(text.format_pairs(frame))
    assert features.shape == (2, 32)
    a, b, diff, absdiff = np.split(features, 4, axis=1)
    np.testing.assert_allclose(diff, a - b)
    np.testing.assert_allclose(absdiff, np.abs(a - b))
    np.testing.assert_allclose(features[1, 16:], 0.0)
    lines, code_blocks, headers, list_items, bold = np.expm1(a[0, 2:7]).round()
    assert (lines, code_blocks, headers, list_items, bold) == (7, 1, 1, 2, 1)


def arena_frame(responses: list[tuple[str, str]], labels: list[int]) -> pd.DataFrame:
    """Rows in the shape `data.read_arena_csv(..., labelled=True)` returns."""
    n = len(responses)
    frame = pd.DataFrame({"id": [str(i) for i in range(n)]})
    for column, values in (
        ("prompt", [["Tell me about the topic."]] * n),
        ("response_a", [[a] for a, _ in responses]),
        ("response_b", [[b] for _, b in responses]),
    ):
        turns = np.empty(n, dtype=object)
        turns[:] = values
        frame[column] = turns
    frame["label"] = np.asarray(labels, dtype=np.int64)
    frame["line"] = np.arange(2, n + 2, dtype=np.int64)
    return frame


def length_decides_frame(rows: int, seed: int) -> pd.DataFrame:
    """A wins iff its response is several times longer, B likewise, tie when they are equal."""
    rng = np.random.default_rng(seed)
    words = "the model explains each step of the answer in plain words".split()
    responses, labels = [], []
    for i in range(rows):
        label = i % 3
        short = int(rng.integers(5, 40))
        long = short * int(rng.integers(3, 8))
        a, b = [(long, short), (short, long), (short, short)][label]
        responses.append(tuple(" ".join(rng.choice(words, size=k)) for k in (a, b)))
        labels.append(label)
    return arena_frame(responses, labels)


def test_length_baseline_learns_when_length_decides():
    train, valid = length_decides_frame(300, seed=0), length_decides_frame(150, seed=1)
    probs = baselines.predict_baselines(baselines.fit_baselines(train), valid)
    labels = valid["label"].to_numpy()
    assert log_loss(probs["class_prior"], labels) == pytest.approx(math.log(3), abs=0.01)
    assert log_loss(probs["length_logreg"], labels) < 0.7
    assert np.mean(probs["length_logreg"].argmax(axis=1) == labels) > 0.9


def test_tfidf_baseline_learns_words_that_length_cannot_see(tmp_path):
    frame = arena.read_arena_csv(write_learnable_csv(tmp_path / "words.csv", 600), labelled=True)
    train, valid = splitting.split_train_valid(frame, 0.25, seed=0)
    probs = baselines.predict_baselines(baselines.fit_baselines(train), valid)
    labels = valid["label"].to_numpy()
    assert log_loss(probs["length_logreg"], labels) > 1.0
    assert log_loss(probs["tfidf_length_logreg"], labels) < 0.7


def test_unknown_baseline_name_is_refused(sample_split):
    _, valid = sample_split
    with pytest.raises(ValueError, match="unknown baseline 'nearest'"):
        baselines.predict_baselines({"nearest": None}, valid)
