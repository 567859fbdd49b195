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


def build_model(width: int = 8) -> keras.Model:
    """A compiled two-layer model with dropout between, its optimizer built. Named, so that its
    variables keep their paths however many models this process builds, except the dropout's
    seed state: Keras numbers seed generators by how many the process made before."""
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(width, name="hidden"),
            keras.layers.Dropout(0.5, name="dropout"),
            keras.layers.Dense(3, name="out"),
        ],
        name="net",
    )
    model.compile(optimizer=keras.optimizers.Adam(0.1, name="adam"), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def layout(devices: int, model_axis: int):
    """A distribution over the first `devices` CPU devices: data parallel, or a (batch x model)
    mesh whose model axis splits the hidden kernel's columns."""
    import jax

    chosen = jax.devices()[:devices]
    if model_axis == 1:
        return keras.distribution.DataParallel(devices=chosen)
    shape = (devices // model_axis, model_axis)
    mesh = keras.distribution.DeviceMesh(shape, ["batch", "model"], chosen)
    layouts = keras.distribution.LayoutMap(mesh)
    layouts["hidden/kernel"] = (None, "model")
    return keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name="batch")


@pytest.fixture(scope="module")
def saved_on_four(tmp_path_factory):
    """A model fitted for one epoch on a 2 x 2 mesh (the hidden kernel split over 2 devices):
    (directory holding its state/ and best/ checkpoints, its weights, its optimizer's
    variables)."""
    root = tmp_path_factory.mktemp("saved_on_four")
    with layout(4, 2).scope():
        keras.utils.set_random_seed(0)
        model = build_model()
        state = checkpoints.StateCheckpoint(
            root / "state", period_steps=[4], best_directory=root / "best"
        )
        model.fit(ROWS, TARGETS, batch_size=4, callbacks=[state], shuffle=False, verbose=0)
        state.save_weights(1)
    weights = [v.numpy() for v in model.trainable_weights]
    return root, weights, [v.numpy() for v in model.optimizer.variables]


@pytest.mark.parametrize(
    "devices, model_axis",
    [(1, 1), (2, 1), (2, 2), (None, 1)],
    ids=["one-device", "data-parallel-2", "mesh-1x2", "no-distribution"],
)
def test_a_state_saved_on_four_devices_restores_onto_the_layout_in_use(
    saved_on_four, devices, model_axis
):
    """Each array lands where the restoring model's variable lives (device 0 without any
    distribution), not on the mesh that saved it; weights and optimizer state unchanged. The
    restoring model's dropout seed state has another name than the saved one, and stays."""
    import contextlib

    root, weights, optimizer = saved_on_four
    assert checkpoints.saved_device_count(root / "state") == 4
    scope = layout(devices, model_axis).scope() if devices else contextlib.nullcontext()
    with scope:
        model = build_model()
        placed = [v.value.sharding for v in [*model.weights, *model.optimizer.variables]]
        checkpoints.restore_state(model, root / "state")
    assert [v.value.sharding for v in [*model.weights, *model.optimizer.variables]] == placed
    restored = [*model.trainable_weights, *model.optimizer.variables]
    for variable, value in zip(restored, [*weights, *optimizer], strict=True):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)


def test_best_weights_restore_on_one_device_and_a_different_model_is_named(saved_on_four):
    from jaxpref.parallel import distribution

    root, weights, _ = saved_on_four
    with layout(1, 1).scope():
        model = build_model()
        distribution.restore_checkpoint(model, root / "best")
        for variable, value in zip(model.trainable_weights, weights, strict=True):
            np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
        wider = build_model(width=6)
        with pytest.raises(ValueError) as refused:
            distribution.restore_checkpoint(wider, root / "best")
    assert str(refused.value) == (
        "trainable_variables/net/hidden/bias: shape (8,) in the checkpoint, (6,) in the model"
    )


def test_resuming_on_devices_the_layout_does_not_fit_is_refused_naming_both_counts(
    saved_on_four,
):
    from jaxpref.config import DeviceConfig
    from jaxpref.rundir import ResumeError

    root, _, _ = saved_on_four
    state = root / "state"
    checkpoints.check_resume_devices(state, DeviceConfig("cpu", 2, 2), batch_size=4)
    with pytest.raises(ResumeError) as refused:
        checkpoints.check_resume_devices(state, DeviceConfig("cpu", 3, 2), batch_size=4)
    assert str(refused.value) == (
        "--resume on 3 devices: the run's state was saved on 4, and its --batch-size 4 with "
        "--model-parallel 2 does not split over 3; resume on 2, 4 or 8 devices (--num-devices)"
    )
