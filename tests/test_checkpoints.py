"""The resumable state's step numbering: training batches, whatever the optimizer counts."""

import keras
import numpy as np
import pytest

from jaxpref.models import objective
from jaxpref.training import checkpoints, optimization

ROWS = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
TARGETS = np.eye(3, dtype="float32")[np.arange(16) % 3]


@pytest.fixture
def mixed_float16():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize("accumulation_steps", [1, 2])
def test_state_steps_count_batches_when_the_optimizer_skips_or_accumulates(
    mixed_float16, accumulation_steps, tmp_path
):
    """Under mixed_float16 the LossScaleOptimizer skips the first batch (its gradients overflow
    float16 at the initial loss scale) without counting it; with accumulation the optimizer
    counts updates. The state saved at the epoch end still names the epoch's 4 batches, and a
    resumed run's callback counts on from there."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    objective.compile_model(model, 0.1, accumulation_steps=accumulation_steps)
    state = checkpoints.StateCheckpoint(tmp_path / "state", period_steps=[4, 4])
    model.fit(ROWS, TARGETS, batch_size=4, callbacks=[state], shuffle=False, verbose=0)
    counted = optimization.batches_done(model.optimizer)
    assert counted < 4 and int(model.optimizer.iterations) == counted // accumulation_steps
    meta = checkpoints.latest_state(tmp_path / "state")
    assert (meta["global_step"], meta["epoch"], meta["step_in_epoch"]) == (4, 1, 0)
    assert checkpoints.StateCheckpoint(tmp_path / "state", period_steps=[4, 4]).step == 4
