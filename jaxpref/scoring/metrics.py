"""Every score jaxpref reports, computed one way: log loss (the competition metric), accuracy,
pairwise accuracy (RewardBench's), expected calibration error, the class prior, and paired
comparisons between predictors.

Probabilities are scaled to sum 1 per row, clipped to [CLIP, 1 - CLIP] and renormalised before
taking logs, as Kaggle scores a submission.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from jaxpref.data.arena import CLASS_NAMES, MIRROR, NUM_CLASSES

TIE = CLASS_NAMES.index("winner_tie")  # the label of a tie: no winner for pairwise accuracy
CLIP = 1e-15
ECE_BINS = 15
MODEL = "model"


def checked_probabilities(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and values; return Kaggle-clipped probabilities and int64 labels."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[1] != NUM_CLASSES or len(probs) != len(labels):
        raise ValueError(
            f"expected probabilities (n, {NUM_CLASSES}) and labels (n,) with n > 0, "
            f"got {probs.shape} and {labels.shape}"
        )
    if not len(probs):
        raise ValueError("expected at least one row")
    if not np.all(np.isfinite(probs)) or np.any(probs < 0) or np.any(probs.sum(axis=1) <= 0):
        raise ValueError("probabilities must be finite, non-negative, with positive row sums")
    if not np.isin(labels, range(NUM_CLASSES)).all():
        raise ValueError(f"labels must be in 0..{NUM_CLASSES - 1}")
    probs = np.clip(probs / probs.sum(axis=1, keepdims=True), CLIP, 1 - CLIP)
    return probs / probs.sum(axis=1, keepdims=True), labels.astype(np.int64)


def row_log_loss(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """-log p(true class) for every row (n,)."""
    probs, labels = checked_probabilities(probs, labels)
    return -np.log(probs[np.arange(len(labels)), labels])


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean multi-class log loss: the competition metric."""
    return float(row_log_loss(probs, labels).mean())


def smoothed_log_loss(probs: np.ndarray, labels: np.ndarray, smoothing: float) -> float:
    """Cross-entropy against label-smoothed targets, (1 - s) one-hot + s / classes: the
    training loss (`--label-smoothing`) on hard labels."""
    probs, labels = checked_probabilities(probs, labels)
    losses = -np.log(probs)
    true = losses[np.arange(len(labels)), labels]
    return float(((1 - smoothing) * true + smoothing * losses.mean(axis=1)).mean())


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose most probable class is the true one."""
    probs, labels = checked_probabilities(probs, labels)
    return float(np.mean(probs.argmax(axis=1) == labels))


def pairwise_accuracy(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """Share of the rows with a winner (label A or B; ties left out) whose winner is the more
    probable side: P(A) > P(B) when A won, P(B) > P(A) when B did; equal counts as wrong.
    RewardBench's accuracy (the chosen response scores higher than the rejected one): for a
    reward model P(A) > P(B) exactly when rA > rB. None when every row is a tie."""
    probs, labels = checked_probabilities(probs, labels)
    decided = labels != TIE
    if not decided.any():
        return None
    winner = labels[decided]
    loser = np.asarray(MIRROR)[winner]
    rows = np.flatnonzero(decided)
    return float(np.mean(probs[rows, winner] > probs[rows, loser]))


def subset_pairwise_accuracy(
    probs_by_name: Mapping[str, np.ndarray], labels: np.ndarray, subsets: np.ndarray
) -> dict[str, dict]:
    """`pairwise_accuracy` of every predictor within each subset (rows sharing a value of
    `subsets`, in sorted order): ``{subset: {"rows", "pairwise_rows", "pairwise_accuracy":
    {name: accuracy}}}``, ``pairwise_rows`` counting the subset's rows with a winner."""
    subsets, labels = np.asarray(subsets, dtype=object), np.asarray(labels)
    table = {}
    for subset in sorted(set(subsets)):
        rows = subsets == subset
        table[str(subset)] = {
            "rows": int(rows.sum()),
            "pairwise_rows": int((labels[rows] != TIE).sum()),
            "pairwise_accuracy": {
                name: pairwise_accuracy(np.asarray(probs)[rows], labels[rows])
                for name, probs in probs_by_name.items()
            },
        }
    return table


def class_prior(train_labels: np.ndarray) -> np.ndarray:
    """Class frequencies with one added count per class, so no class gets probability 0."""
    counts = np.bincount(np.asarray(train_labels), minlength=NUM_CLASSES)[:NUM_CLASSES] + 1.0
    return counts / counts.sum()


def prior_log_loss(train_labels: np.ndarray, valid_labels: np.ndarray) -> float:
    """Log loss of always predicting the training class frequencies: the floor to beat."""
    prior = np.tile(class_prior(train_labels), (len(valid_labels), 1))
    return log_loss(prior, valid_labels)


def calibration_bins(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of top-class confidence: row count, mean confidence, accuracy."""
    probs, labels = checked_probabilities(probs, labels)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(index, confidence, minlength=bins) / counts
        accuracy = np.bincount(index, correct, minlength=bins) / counts
    return counts, mean_confidence, accuracy


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Sum over confidence bins of (rows in bin / n) * |accuracy - mean confidence| (top class)."""
    counts, confidence, accuracy = calibration_bins(probs, labels, bins)
    filled = counts > 0
    gaps = np.abs(accuracy[filled] - confidence[filled])
    return float(np.dot(counts[filled], gaps) / counts.sum())


def scores(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Log loss, accuracy, pairwise accuracy, per-class log loss, ECE, confusion matrix, row
    count and the count of rows with a winner (`pairwise_rows`, those pairwise accuracy scores).

    `per_class_log_loss` maps each class name to the mean -log p over the rows of that true
    class (None when there are none); `confusion_matrix[true][predicted]` counts rows.
    """
    probs, labels = checked_probabilities(probs, labels)
    losses = row_log_loss(probs, labels)
    predicted = probs.argmax(axis=1)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    return {
        "log_loss": float(losses.mean()),
        "accuracy": float(np.mean(predicted == labels)),
        "pairwise_accuracy": pairwise_accuracy(probs, labels),
        "per_class_log_loss": {
            name: float(losses[labels == k].mean()) if np.any(labels == k) else None
            for k, name in enumerate(CLASS_NAMES)
        },
        "ece": expected_calibration_error(probs, labels),
        "confusion_matrix": confusion.tolist(),
        "rows": len(labels),
        "pairwise_rows": int((labels != TIE).sum()),
    }


def standard_error(values: np.ndarray) -> float | None:
    """Standard error of the mean; None for fewer than two values."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def score_table(
    model_probs: np.ndarray, baselines_probs: Mapping[str, np.ndarray], labels: np.ndarray
) -> dict:
    """Score the model and every baseline on the same rows.

    Returns `{"rows", "scores": {name: scores}, "model_log_loss_se",
    "model_minus_baseline": {name: {"log_loss", "se"}}}`, the model first in `scores`.
    Differences are taken per row (model - baseline, negative = the model is better) and their
    standard error is that of the paired differences, which is what says whether the model
    really beats a baseline on these rows.
    """
    model_losses = row_log_loss(model_probs, labels)
    table = {MODEL: scores(model_probs, labels)}
    differences = {}
    for name, probs in baselines_probs.items():
        table[name] = scores(probs, labels)
        delta = model_losses - row_log_loss(probs, labels)
        differences[name] = {"log_loss": float(delta.mean()), "se": standard_error(delta)}
    return {
        "rows": len(model_losses),
        "scores": table,
        "model_log_loss_se": standard_error(model_losses),
        "model_minus_baseline": differences,
    }
