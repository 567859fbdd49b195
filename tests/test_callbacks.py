"""Training callbacks on their own: validation scores in the epoch's logs, the best kept."""

import math

import numpy as np
import pytest

from jaxpref.scoring import metrics
from jaxpref.training.callbacks import Validation


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


def _train_step_compiles(place: bool) -> list[int]:
    """Train-step compilations per epoch of a small model fitted on one device, two epochs over
    batches padded to 16, 32, 16, 32 (the weights set as a checkpoint load sets them)."""
    import logging

    import jax
    import keras

    from jaxpref.training.callbacks import MeshPlacement

    def batches():
        rng = np.random.default_rng(0)
        while True:
            for length in (16, 32, 16, 32):
                yield rng.normal(size=(4, length, 3)), np.eye(3)[rng.integers(0, 3, 4)]

    class Counts(keras.callbacks.Callback, logging.Handler):
        def __init__(self):
            keras.callbacks.Callback.__init__(self)
            logging.Handler.__init__(self)
            self.per_epoch = []

        def emit(self, record):
            if "jit(train_step)" in record.getMessage():
                self.per_epoch[-1] += 1

        def on_epoch_begin(self, epoch, logs=None):
            self.per_epoch.append(0)

    counts = Counts()
    compiles_logger = logging.getLogger("jax._src.interpreters.pxla")
    compiles_logger.addHandler(counts)
    try:
        with keras.distribution.DataParallel(devices=jax.devices()[:1]).scope(), jax.log_compiles():
            layers = [keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3)]
            model = keras.Sequential([keras.Input((None, 3)), *layers])
            model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
            model.set_weights(model.get_weights())
            callbacks = [MeshPlacement(), counts] if place else [counts]
            model.fit(batches(), epochs=2, steps_per_epoch=4, callbacks=callbacks, shuffle=False)
    finally:
        compiles_logger.removeHandler(counts)
    return counts.per_epoch


def test_no_batch_shape_compiles_twice_on_one_device():
    """Keras leaves loaded weights, the optimizer's slots and reset metrics on one device while
    the train step returns them on the mesh; without MeshPlacement the first shape compiled
    again on its second batch and at the next epoch's start."""
    assert _train_step_compiles(place=True) == [2, 0]
    assert _train_step_compiles(place=False) == [3, 1]
