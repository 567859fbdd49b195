"""What a preference model is fitted to: its loss, metrics and optimizer."""

from __future__ import annotations

import keras


def compile_model(
    model: keras.Model,
    learning_rate=1e-4,
    label_smoothing: float = 0.02,
    weight_decay: float = 0.0,
    accumulation_steps: int = 1,
    clip_norm: float | None = None,
) -> None:
    """Adam (AdamW with `weight_decay` > 0) + smoothed cross-entropy; `log_loss` is the
    unsmoothed competition metric.

    `learning_rate` is a float or a `keras.optimizers.schedules.LearningRateSchedule`. With
    `accumulation_steps` N > 1 the optimizer updates the weights every N-th batch with the mean
    of the N batches' gradients (Keras' `gradient_accumulation_steps`; its accumulators are
    optimizer variables, saved with the training state); a schedule is still evaluated at the
    batch count, and `optimizer.iterations` counts updates. `clip_norm` caps the global norm of
    that (mean) gradient. Under the global dtype policy mixed_float16 (GPUs without bfloat16,
    e.g. T4, P100) Adam is wrapped in a dynamic `LossScaleOptimizer`: float16 gradients of an
    unscaled loss underflow to zero. It unscales each batch's gradients before they reach
    Adam's accumulators and clipping, and skips a batch whose gradients are not finite.

        compile_model(model, 2e-3, accumulation_steps=4, clip_norm=1.0)
    """
    options = {
        "gradient_accumulation_steps": accumulation_steps if accumulation_steps > 1 else None,
        "global_clipnorm": clip_norm,
    }
    if weight_decay:
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, **options)
    else:
        optimizer = keras.optimizers.Adam(learning_rate, **options)
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
