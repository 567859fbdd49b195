"""What a preference model is fitted to: its loss, metrics and optimizer."""

from __future__ import annotations

import keras
import numpy as np

from jaxpref.data.arena import NUM_CLASSES


def compile_model(
    model: keras.Model,
    learning_rate=1e-4,
    label_smoothing: float = 0.02,
    weight_decay: float = 0.0,
    accumulation_steps: int = 1,
    clip_norm: float | None = None,
    margins: bool = False,
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
    With `margins` the targets are `with_margins` rows (B, 4) and the loss `MarginCrossentropy`;
    the metrics read their three class columns.

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
    smoothing = {"label_smoothing": label_smoothing, "reduction": "mean_with_sample_weight"}
    loss = MarginCrossentropy if margins else keras.losses.CategoricalCrossentropy
    model.compile(
        optimizer=optimizer,
        # Padding rows carry sample weight 0; average over the real rows only.
        loss=loss(**smoothing),
        # weighted_metrics (not metrics) honour the zero weight of padding rows.
        weighted_metrics=class_metrics(margins),
    )


def class_metrics(margins: bool) -> list:
    """`log_loss` (the unsmoothed competition metric) and `accuracy`, of the targets' class
    columns (the first three of `with_margins` rows when `margins`)."""
    if not margins:
        return [
            keras.metrics.CategoricalCrossentropy(name="log_loss"),
            keras.metrics.CategoricalAccuracy(name="accuracy"),
        ]
    wrapper = keras.metrics.MeanMetricWrapper
    return [
        wrapper(of_classes(keras.metrics.categorical_crossentropy), name="log_loss"),
        wrapper(of_classes(keras.metrics.categorical_accuracy), name="accuracy"),
    ]


def of_classes(metric):
    """`metric(y_true, y_pred)` of the class columns of `with_margins` targets."""
    return lambda y_true, y_pred: metric(y_true[:, :NUM_CLASSES], y_pred)


def with_margins(labels: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """(n, 4) float32 training targets: each row's class targets (from class indices (n,) or
    target rows (n, 3)), then its margin (0: none). Rows fed swapped mirror the class columns
    only: a margin belongs to the winner.

        with_margins(np.array([0, 1]), np.array([1.5, 0.0]))  # [[1, 0, 0, 1.5], [0, 1, 0, 0]]
    """
    labels = np.asarray(labels)
    targets = labels if labels.ndim == 2 else np.eye(NUM_CLASSES)[labels]
    return np.column_stack([targets, margins]).astype(np.float32)


class MarginCrossentropy(keras.losses.Loss):
    """Cross-entropy of `with_margins` targets (B, 4) (three class columns y, then a margin m)
    against the model's probabilities p with the winner's log-probability lowered by m:
    ``-sum_k y_k log softmax(log p - m onehot(w))_k``, w being A or B, whichever y holds more of.

    For a reward model (log p = [rA, rB, theta + (rA + rB)/2] + a constant) this is the
    Davidson model asked for a win by m, and without ties it is TRL's reward loss
    ``-log sigmoid(r_w - r_l - m)``; margin 0 is `CategoricalCrossentropy`. Label smoothing
    and the probability clipping are Keras'.
    """

    def __init__(self, label_smoothing: float = 0.0, **kwargs) -> None:
        super().__init__(name=kwargs.pop("name", "margin_crossentropy"), **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        ops = keras.ops
        y_true, y_pred = ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")
        targets, margin = y_true[:, :NUM_CLASSES], y_true[:, NUM_CLASSES:]
        winner = ops.one_hot(ops.argmax(targets[:, :2], axis=-1), NUM_CLASSES)
        targets = targets * (1 - self.label_smoothing) + self.label_smoothing / NUM_CLASSES
        probs = y_pred / ops.sum(y_pred, axis=-1, keepdims=True)
        epsilon = keras.config.epsilon()
        log_probs = ops.log(ops.clip(probs, epsilon, 1 - epsilon)) - margin * winner
        return -ops.sum(targets * ops.log_softmax(log_probs, axis=-1), axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}
