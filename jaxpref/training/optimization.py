"""How weights are fitted: the learning-rate schedule, optimizer, loss and metrics."""

from __future__ import annotations

import keras

from jaxpref.config import SCHEDULES


def learning_rate_schedule(
    peak: float, schedule: str = "constant", total_steps: int = 0, warmup_fraction: float = 0.1
):
    """A constant rate, or linear warm-up to `peak` followed by cosine decay to zero.

    `total_steps` counts training batches, not optimizer updates: Keras evaluates a schedule
    at its batch counter even with gradient accumulation (`batches_done`), so with --grad-accum
    N the k-th update (from 0) uses the rate of batch N * k + N - 1 and the warm-up and decay
    keep their share of the run.
    """
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


def batches_done(optimizer) -> int:
    """Training batches the optimizer has applied: the step its learning-rate schedule sees
    (progress lines and scalars use it). Keras' `optimizer.iterations` counts updates, one per
    `gradient_accumulation_steps` batches; its batch counter is the private `_iterations` (of
    the inner optimizer under a `LossScaleOptimizer`, which skips batches whose gradients are
    not finite without counting them: `checkpoints.StateCheckpoint` counts batches itself)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return int(inner._iterations)
