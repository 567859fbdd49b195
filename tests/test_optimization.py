"""The optimizer, loss and schedule of `compile_model`."""

import keras
import numpy as np
import pytest

from jaxpref.models import objective
from jaxpref.training import optimization


def _one_step(weight_decay: float) -> tuple[np.ndarray, np.ndarray]:
    """(kernel before, kernel after) one training step of a small model from the same start."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    objective.compile_model(model, 0.1, weight_decay=weight_decay)
    before = model.layers[0].kernel.numpy().copy()
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    model.train_on_batch(x, np.eye(3, dtype="float32")[np.arange(8) % 3])
    return before, model.layers[0].kernel.numpy()


def test_weight_decay_is_decoupled_from_the_adam_step():
    """AdamW's first step is Adam's step minus learning rate x decay x the weight."""
    start, adam = _one_step(0.0)
    same_start, adamw = _one_step(0.5)
    np.testing.assert_array_equal(start, same_start)
    np.testing.assert_allclose(adamw, adam - 0.1 * 0.5 * start, atol=1e-6)
    assert not np.allclose(adamw, adam)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_schedule_peaks_at_the_learning_rate(schedule):
    rate = optimization.learning_rate_schedule(2e-3, schedule, total_steps=100)
    at = optimization.rate_at(rate)
    assert max(at(step) for step in range(100)) == pytest.approx(2e-3)
    assert at(99) == pytest.approx(2e-3 if schedule == "constant" else 0.0, abs=1e-6)
