"""How weights are fitted: the learning-rate schedule, optimizer, loss and metrics."""

from __future__ import annotations

import keras

from jaxpref.config import SCHEDULES


def learning_rate_schedule(
    peak: float, schedule: str = "constant", total_steps: int = 0, warmup_fraction: float = 0.1
):
    """A constant rate, or linear warm-up to `peak` followed by cosine decay to zero."""
    if schedule == "constant":
        return peak
    if schedule != "cosine":
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    warmup = int(total_steps * warmup_fraction)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(total_steps - warmup, 1),
        warmup_target=peak,
        warmup_steps=warmup,
    )


def rate_at(schedule):
    """step -> the learning rate as a float, for logs. A schedule is compiled once: evaluated
    eagerly, Keras' warm-up `cond` compiles fresh branches on every call."""
    if not callable(schedule):
        return lambda step: float(schedule)
    import jax

    compiled = jax.jit(schedule)
    return lambda step: float(compiled(step))


def compile_model(
    model: keras.Model,
    learning_rate=1e-4,
    label_smoothing: float = 0.02,
    weight_decay: float = 0.0,
) -> None:
    """Adam (AdamW with `weight_decay` > 0) + smoothed cross-entropy; `log_loss` is the
    unsmoothed competition metric.

    `learning_rate` is a float or a `keras.optimizers.schedules.LearningRateSchedule`. Under the
    global dtype policy mixed_float16 (GPUs without bfloat16, e.g. T4, P100) Adam is wrapped in a
    dynamic `LossScaleOptimizer`: float16 gradients of an unscaled loss underflow to zero.
    """
    if weight_decay:
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
    else:
        optimizer = keras.optimizers.Adam(learning_rate)
    if keras.config.dtype_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        # Padding rows carry sample weight 0; average over the real rows only.
        loss=keras.losses.CategoricalCrossentropy(
            label_smoothing=label_smoothing, reduction="mean_with_sample_weight"
        ),
        # weighted_metrics (not metrics) honour the zero weight of padding rows.
        weighted_metrics=[
            keras.metrics.CategoricalCrossentropy(name="log_loss"),
            keras.metrics.CategoricalAccuracy(name="accuracy"),
        ],
    )
