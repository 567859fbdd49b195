"""Training callbacks on their own: validation scores in the epoch's logs, the best kept."""

import math

import numpy as np
import pytest

from jaxpref import metrics
from jaxpref.callbacks import Validation


def test_validation_scores_each_epoch_and_keeps_the_best_epochs_probabilities():
    labels = np.array([0, 1, 2, 2])
    good, better = np.full((4, 3), 1 / 3), np.eye(3)[labels] * 0.7 + 0.1
    worse = np.roll(better, 1, axis=1)
    epochs = iter([good, better, worse, np.full((4, 3), np.nan)])
    validation = Validation(lambda: next(epochs), labels, label_smoothing=0.1)
    logged = []
    for epoch in range(4):
        logs = {"loss": 1.0}
        validation.on_epoch_end(epoch, logs)
        logged.append(logs)
    assert logged[0]["val_log_loss"] == pytest.approx(math.log(3))
    assert logged[1] == {
        "loss": 1.0,
        "val_log_loss": metrics.log_loss(better, labels),
        "val_loss": metrics.smoothed_log_loss(better, labels, 0.1),
        "val_accuracy": 1.0,
    }
    assert logged[2]["val_accuracy"] == 0.0
    assert all(math.isnan(logged[3][k]) for k in ("val_loss", "val_log_loss", "val_accuracy"))
    assert validation.best_epoch == 2 and validation.best_probs is better
    assert validation.best == metrics.log_loss(better, labels)
