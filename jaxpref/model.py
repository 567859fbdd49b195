"""The siamese preference model: one shared backbone encodes both sides, a head compares them.

Inputs are (B, 2, L) per backbone input; both sides are folded into one (2B, L) backbone call
(shared weights, one large matmul instead of two), mean-pooled over real tokens only, unfolded
to (B, 2, H), and compared by a small head that outputs float32 softmax over
(winner_model_a, winner_model_b, winner_tie).
"""

from __future__ import annotations

import keras
from keras import ops

from jaxpref.pipeline import SIDE_FEATURES

NUM_CLASSES = 3
STANDARDIZE = "side_standardize"


@keras.saving.register_keras_serializable(package="jaxpref")
class FoldSides(keras.layers.Layer):
    """(B, 2, L) -> (2B, L): both sides go through the backbone as one batch."""

    def call(self, x):
        return ops.reshape(x, (-1, ops.shape(x)[-1]))

    def compute_output_shape(self, input_shape):
        return (None, input_shape[-1])


@keras.saving.register_keras_serializable(package="jaxpref")
class MaskedMeanPool(keras.layers.Layer):
    """Mean over real tokens; padding never dilutes the embedding."""

    def call(self, hidden, padding_mask):
        mask = ops.expand_dims(ops.cast(padding_mask, "float32"), -1)
        total = ops.sum(ops.cast(hidden, "float32") * mask, axis=1)
        return total / ops.maximum(ops.sum(mask, axis=1), 1.0)

    def compute_output_shape(self, hidden_shape, padding_mask_shape):
        return (hidden_shape[0], hidden_shape[-1])


@keras.saving.register_keras_serializable(package="jaxpref")
class UnfoldSides(keras.layers.Layer):
    """(2B, H) -> side A (B, H) and side B (B, H)."""

    def call(self, x):
        pairs = ops.reshape(x, (-1, 2, ops.shape(x)[-1]))
        return pairs[:, 0], pairs[:, 1]

    def compute_output_shape(self, input_shape):
        return (None, input_shape[-1]), (None, input_shape[-1])


@keras.saving.register_keras_serializable(package="jaxpref")
class SiameseModel(keras.Model):
    """A functional model whose predictions are gathered onto every process.

    Under multi-host data parallelism each process holds only its share of a global batch; the
    predictions (B, 3) are tiny, so every process gets all of them and any can write files.
    """

    def predict_step(self, state, data):
        import jax

        outputs, non_trainable_variables = super().predict_step(state, data)
        dist = keras.distribution.distribution()
        if dist is not None:
            everywhere = jax.sharding.NamedSharding(
                dist.device_mesh.backend_mesh, jax.sharding.PartitionSpec()
            )
            outputs = jax.lax.with_sharding_constraint(outputs, everywhere)
        return outputs, non_trainable_variables


def set_precision(precision: str) -> None:
    """Global Keras dtype policy; call before building the backbone."""
    keras.config.set_dtype_policy(precision)


def sequence_output(outputs):
    """Token embeddings from a backbone (BERT returns a dict, DeBERTa a tensor)."""
    return outputs["sequence_output"] if isinstance(outputs, dict) else outputs


def backbone_input_keys(backbone) -> tuple[str, ...]:
    return tuple(backbone.input.keys())


@keras.saving.register_keras_serializable(package="jaxpref")
class SwapSymmetricHead(keras.layers.Layer):
    """Logits that mirror exactly when the sides are swapped: P(A wins | A, B) = P(B wins | B, A).

    One scorer rates "this side beats that one" from (this, that, this - that, this * that) and is
    applied both ways; the tie scorer sees only swap-invariant features (a + b, |a - b|, a * b).
    """

    def __init__(self, dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.dropout = dropout
        self.drop = keras.layers.Dropout(dropout)
        self.win = keras.layers.Dense(1, dtype="float32", name="win")
        self.tie = keras.layers.Dense(1, dtype="float32", name="tie")

    def call(self, a, b, training=None):
        a, b = ops.cast(a, "float32"), ops.cast(b, "float32")
        both = a * b

        def beats(this, that):
            features = ops.concatenate([this, that, this - that, both], axis=-1)
            return self.win(self.drop(features, training=training))

        tie_features = ops.concatenate([a + b, ops.abs(a - b), both], axis=-1)
        tie = self.tie(self.drop(tie_features, training=training))
        return ops.concatenate([beats(a, b), beats(b, a), tie], axis=-1)

    def compute_output_shape(self, a_shape, b_shape):
        return (a_shape[0], NUM_CLASSES)

    def get_config(self):
        return {**super().get_config(), "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="jaxpref")
class Standardize(keras.layers.Layer):
    """(x - mean) / std per feature, with mean and std fitted on the training split.

    Raw log-counts (~0-9) would saturate the tanh projection; the statistics are non-trainable
    weights, so they are checkpointed and restored with the model.
    """

    def build(self, input_shape):
        shape = (input_shape[-1],)
        self.mean = self.add_weight(shape=shape, initializer="zeros", trainable=False, name="mean")
        self.std = self.add_weight(shape=shape, initializer="ones", trainable=False, name="std")

    def fit(self, features) -> None:
        """Set the statistics from (..., F) training features."""
        import numpy as np

        flat = np.asarray(features, np.float64).reshape(-1, features.shape[-1])
        self.mean.assign(flat.mean(axis=0).astype("float32"))
        self.std.assign(np.maximum(flat.std(axis=0), 1e-3).astype("float32"))

    def call(self, x):
        return (ops.cast(x, "float32") - self.mean) / self.std


HEADS = ("concat", "symmetric")


def build_model(
    backbone, dropout: float = 0.1, head: str = "concat", side_features: int = 0
) -> keras.Model:
    """Siamese classifier around `backbone` (its LoRA/trainable state is left as it is).

    `head="concat"`: a dense layer over [a, b, a - b, a * b]; `head="symmetric"`:
    `SwapSymmetricHead`, whose predictions mirror exactly when A and B are swapped.
    `side_features=F` adds an input (B, 2, F) of per-side features (lengths, markdown counts),
    standardized (`fit_side_features` sets the statistics) and joined to each side's embedding
    both as they are and through one shared tanh projection.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    keys = backbone_input_keys(backbone)
    inputs = {key: keras.Input(shape=(2, None), dtype="int32", name=key) for key in keys}
    folded = {key: FoldSides(name=f"fold_{key}")(inputs[key]) for key in keys}
    hidden = sequence_output(backbone(folded))
    pooled = MaskedMeanPool(name="mean_pool")(hidden, folded["padding_mask"])
    side_a, side_b = UnfoldSides(name="unfold")(pooled)
    if side_features:
        extra = keras.Input(shape=(2, side_features), dtype="float32", name=SIDE_FEATURES)
        inputs[SIDE_FEATURES] = extra
        extra = Standardize(dtype="float32", name=STANDARDIZE)(extra)
        project = keras.layers.Dense(16, activation="tanh", dtype="float32", name="side_proj")
        # The standardized features also go in as they are, so the head holds the
        # length-feature logistic regression (A, B, A - B, |A - B|) as a special case.
        side_a = keras.layers.Concatenate(name="with_features_a")(
            [ops.cast(side_a, "float32"), project(extra[:, 0]), extra[:, 0]]
        )
        side_b = keras.layers.Concatenate(name="with_features_b")(
            [ops.cast(side_b, "float32"), project(extra[:, 1]), extra[:, 1]]
        )
    if head == "symmetric":
        logits = SwapSymmetricHead(dropout, name="logits")(side_a, side_b)
    else:
        features = keras.layers.Concatenate(name="compare")(
            [side_a, side_b, side_a - side_b, side_a * side_b]
        )
        features = keras.layers.Dropout(dropout, name="head_dropout")(features)
        logits = keras.layers.Dense(NUM_CLASSES, dtype="float32", name="logits")(features)
    probs = keras.layers.Activation("softmax", dtype="float32", name="probs")(logits)
    return SiameseModel(inputs, probs, name="siamese_preference")


def fit_side_features(model: keras.Model, features) -> None:
    """Fit the side-feature standardization on the training split's (n, 2, F) features."""
    model.get_layer(STANDARDIZE).fit(features)


SCHEDULES = ("constant", "cosine")


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


def compile_model(model: keras.Model, learning_rate=1e-4, label_smoothing: float = 0.02) -> None:
    """Adam + smoothed cross-entropy; `log_loss` is the unsmoothed competition metric.

    `learning_rate` is a float or a `keras.optimizers.schedules.LearningRateSchedule`.
    """
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
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
