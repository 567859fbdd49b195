"""Temperature scaling: one scalar T fitted on validation predictions, applied at inference.

Dividing log-probabilities by T > 1 softens over-confident predictions, T < 1 sharpens timid
ones; the ranking of classes never changes, so accuracy is untouched. T = 1 (no change) is in the
search range, so the fitted T never makes the validation log loss worse.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

CALIBRATION_FILE = "calibration.json"
EPS = 1e-15


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T), row by row."""
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    probs = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)
    probs = probs / probs.sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(probs[np.arange(len(labels)), labels])))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] (log-spaced grid, then a golden-section refinement) with least loss."""
    labels = np.asarray(labels)

    def loss(log_t: float) -> float:
        return log_loss(apply_temperature(probs, float(np.exp(log_t))), labels)

    grid = np.linspace(np.log(0.05), np.log(20.0), 81)
    losses = [loss(g) for g in grid]
    best = int(np.argmin(losses))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if loss(a) < loss(b):
            hi = b
        else:
            lo = a
    refined = (lo + hi) / 2
    candidates = {0.0: loss(0.0), refined: loss(refined), grid[best]: losses[best]}
    return float(np.exp(min(candidates, key=candidates.get)))


def save(run_dir: str | os.PathLike, temperature: float, before: float, after: float) -> None:
    record = {
        "temperature": temperature,
        "val_log_loss_before": before,
        "val_log_loss_after": after,
    }
    (Path(run_dir) / CALIBRATION_FILE).write_text(json.dumps(record, indent=2) + "\n")


def load_temperature(run_dir: str | os.PathLike) -> float:
    """The run's fitted temperature, 1.0 when it has none."""
    path = Path(run_dir) / CALIBRATION_FILE
    return float(json.loads(path.read_text())["temperature"]) if path.exists() else 1.0
