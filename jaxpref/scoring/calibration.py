"""Temperature scaling: one scalar T fitted on validation predictions, applied at inference.

Dividing log-probabilities by T > 1 softens over-confident predictions, T < 1 sharpens timid
ones; the ranking of classes never changes, so accuracy is untouched. T = 1 (no change) is in the
search range, so the fitted T never makes the validation log loss worse.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from jaxpref.scoring.metrics import CLIP, log_loss

BOUNDS = (float(np.log(0.05)), float(np.log(20.0)))
"""The range of log T searched."""


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A fitted temperature and the validation log loss before and after applying it."""

    temperature: float
    before: float
    after: float


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T), row by row."""
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), CLIP, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] with least log loss: Brent's bounded search over log T.

    The log loss is convex in 1/T, hence unimodal in log T, so the bounded search finds the
    minimum. It never evaluates the bounds themselves, where the minimum of random scores often
    lies, so they compete with its result, and so does T = 1 (the loss never gets worse).
    """
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels)

    def loss(log_t: float) -> float:
        return log_loss(apply_temperature(probs, float(np.exp(log_t))), labels)

    found = minimize_scalar(loss, bounds=BOUNDS, method="bounded", options={"xatol": 1e-7})
    return float(np.exp(min((found.x, 0.0, *BOUNDS), key=loss)))


def calibrate(probs: np.ndarray, labels: np.ndarray, enabled: bool = True) -> Calibration:
    """Fit the temperature (T = 1 when not `enabled`) and score it on the same rows."""
    temperature = fit_temperature(probs, labels) if enabled else 1.0
    before = log_loss(probs, labels)
    return Calibration(temperature, before, log_loss(apply_temperature(probs, temperature), labels))


def save(path: str | os.PathLike, fitted: Calibration) -> None:
    record = {
        "temperature": fitted.temperature,
        "val_log_loss_before": fitted.before,
        "val_log_loss_after": fitted.after,
    }
    Path(path).write_text(json.dumps(record, indent=2) + "\n")


def load_temperature(path: str | os.PathLike) -> float:
    """The temperature saved at `path` (a run's calibration.json), 1.0 when there is none."""
    path = Path(path)
    return float(json.loads(path.read_text())["temperature"]) if path.exists() else 1.0
