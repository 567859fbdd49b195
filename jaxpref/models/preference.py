"""Preference models: backbone + LoRA + head, built from one `ModelConfig` by `build_model`.

An architecture is a `PreferenceModel` subclass registered in `ARCHITECTURES`: it says how
its backbone reads a pair (`encode`: the inputs and two side vectors); the base class adds LoRA,
side features and the head, outputs a float32 softmax over (winner_model_a, winner_model_b,
winner_tie), and round-trips through `get_config`/`from_config` (the backbone serialized
inside, as keras-hub tasks do). `SiameseModel` encodes each side apart with one shared backbone;
`CrossEncoderModel` reads conversation and both responses in one sequence, with encoders and
decoder LLMs alike. A new backbone family is whatever `backbones.load_backbone` returns.

Two objectives: "classes" (a head compares the two side vectors) and "reward" (a siamese reward
model: one scalar per side, ties through Davidson's model, `DavidsonTies`). A reward model's
layout is Hugging Face's *ForSequenceClassification with num_labels = 1: the first token's
final hidden state for encoders, the last real token's for decoders, then one linear unit
`reward` (a bias for encoders, none for decoders), nothing in between.
"""

from __future__ import annotations

from contextlib import nullcontext

import keras
import numpy as np
from keras import ops

from jaxpref import safety
from jaxpref.config import OBJECTIVES, ConfigError, ModelConfig, resolve_side_features
from jaxpref.data.arena import NUM_CLASSES
from jaxpref.inputs.featurize import NUM_SIDE_FEATURES, SIDE_FEATURES
from jaxpref.inputs.packers import (
    FIRST,
    PART_IDS,
    SECOND,
    CrossPacker,
    DecoderPairPacker,
    Packer,
    PairPacker,
)
from jaxpref.models import backbones, families, lora, presets

STANDARDIZE = "side_standardize"
SIDE_REWARDS = "side_rewards"  # the reward model's layer whose output is (B, 2): [rA, rB]


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


def last_real_token(hidden, padding_mask):
    """(B, L, H) -> (B, H): each sequence's hidden state at the rightmost position that
    `padding_mask` marks real (Hugging Face's *ForSequenceClassification picks the same)."""
    positions = ops.arange(ops.shape(padding_mask)[1], dtype="int32")
    last = ops.max(ops.where(ops.cast(padding_mask, "bool"), positions, 0), axis=1)
    return ops.take_along_axis(hidden, ops.reshape(last, (-1, 1, 1)), axis=1)[:, 0]


@keras.saving.register_keras_serializable(package="jaxpref")
class TokenPool(keras.layers.Layer):
    """(B, L, H) -> (B, H) float32: one token's final hidden state per sequence.

    `position="first"`: the first token ([CLS], what an encoder's classifier reads);
    `position="last"`: the last real token (`last_real_token`: a decoder's only position that
    has seen the whole sequence).
    """

    def __init__(self, position: str = "first", **kwargs):
        super().__init__(**kwargs)
        if position not in ("first", "last"):
            raise ValueError(f"position must be 'first' or 'last', got {position!r}")
        self.position = position

    def call(self, hidden, padding_mask):
        hidden = ops.cast(hidden, "float32")
        return hidden[:, 0] if self.position == "first" else last_real_token(hidden, padding_mask)

    def compute_output_shape(self, hidden_shape, padding_mask_shape):
        return (hidden_shape[0], hidden_shape[-1])

    def get_config(self):
        return {**super().get_config(), "position": self.position}


@keras.saving.register_keras_serializable(package="jaxpref")
class UnfoldSides(keras.layers.Layer):
    """(2B, H) -> side A (B, H) and side B (B, H)."""

    def call(self, x):
        pairs = ops.reshape(x, (-1, 2, ops.shape(x)[-1]))
        return pairs[:, 0], pairs[:, 1]

    def compute_output_shape(self, input_shape):
        return (None, input_shape[-1]), (None, input_shape[-1])


@keras.saving.register_keras_serializable(package="jaxpref")
class SegmentPool(keras.layers.Layer):
    """(B, L, H) -> the first response, the second response, and the whole sequence (B, H) each.

    Each response is mean-pooled over its own tokens. The whole sequence is mean-pooled over
    real tokens (`pooling="mean"`, bidirectional encoders) or read at its last real token
    (`pooling="last"`, decoders: the only position that has seen every token).
    """

    def __init__(self, pooling: str = "mean", **kwargs):
        super().__init__(**kwargs)
        self.pooling = pooling

    def call(self, hidden, part_ids, padding_mask):
        hidden = ops.cast(hidden, "float32")

        def mean_over(mask):
            mask = ops.expand_dims(ops.cast(mask, "float32"), -1)
            return ops.sum(hidden * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)

        if self.pooling == "last":
            whole = last_real_token(hidden, padding_mask)
        else:
            whole = mean_over(padding_mask)
        return mean_over(ops.equal(part_ids, FIRST)), mean_over(ops.equal(part_ids, SECOND)), whole

    def compute_output_shape(self, hidden_shape, part_ids_shape, padding_mask_shape):
        shape = (hidden_shape[0], hidden_shape[-1])
        return shape, shape, shape

    def get_config(self):
        return {**super().get_config(), "pooling": self.pooling}


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
class DavidsonTies(keras.layers.Layer):
    """Side rewards (B, 2) -> logits (B, 3) of Davidson's tie model (1970), whose softmax is
    P(A), P(B), P(tie).

    With nu = e^theta (one learned scalar, the weight `log_nu`): P(A) = e^rA / Z,
    P(B) = e^rB / Z, P(tie) = nu e^((rA + rB) / 2) / Z, i.e. the logits are
    [rA, rB, theta + (rA + rB) / 2]. P(A) / P(B) = e^(rA - rB) is Bradley-Terry's odds whatever
    theta is; ties are likeliest between equal rewards (there P(tie) = nu / (2 + nu): a third
    at theta's initial 0). The probabilities do not change when both rewards shift alike;
    `center` > 0 adds center x mean((rA + rB)^2) over the batch to the training loss (TRL's
    center_rewards_coefficient), which keeps that free offset near 0.
    """

    def __init__(self, center: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.center = center

    def build(self, rewards_shape):
        self.log_nu = self.add_weight(shape=(), initializer="zeros", name="log_nu")

    def call(self, rewards, training=None):
        rewards = ops.cast(rewards, "float32")
        both = rewards[:, 0] + rewards[:, 1]
        if training and self.center:
            self.add_loss(self.center * ops.mean(ops.square(both)))
        tie = ops.cast(self.log_nu, "float32") + both / 2
        return ops.concatenate([rewards, ops.expand_dims(tie, -1)], axis=-1)

    def compute_output_shape(self, rewards_shape):
        return (rewards_shape[0], NUM_CLASSES)

    def get_config(self):
        return {**super().get_config(), "center": self.center}


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
        flat = np.asarray(features, np.float64).reshape(-1, features.shape[-1])
        self.mean.assign(flat.mean(axis=0).astype("float32"))
        self.std.assign(np.maximum(flat.std(axis=0), 1e-3).astype("float32"))

    def call(self, x):
        return (ops.cast(x, "float32") - self.mean) / self.std


def sequence_output(outputs):
    """Token embeddings from a backbone (BERT returns a dict, DeBERTa a tensor)."""
    return outputs["sequence_output"] if isinstance(outputs, dict) else outputs


class GatheredPredictions(keras.Model):
    """A model whose `predict` gathers each batch's outputs onto every process, so any process
    can write files: under multi-host data parallelism each holds only its share of a batch."""

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


class PreferenceModel(GatheredPredictions):
    """Base of every architecture: backbone + LoRA + head, config round-trip, gathered
    predictions.

    A subclass names the `poolings` it knows and whether it `scores_sides_apart` (each side
    vector sees one side only), and implements `encode(backbone)`, which builds the model's
    inputs and the two side vectors the head compares, and `build_packer`, which makes the
    packer that feeds those inputs (`inputs.packers`); everything else is shared.
    `objective="classes"`: `head="symmetric"` is `SwapSymmetricHead`, whose predictions mirror
    exactly when the sides swap; `head="concat"` a dense layer over [a, b, a - b, a * b].
    `objective="reward"` (models that score sides apart, no side features; `head` and
    `dropout` unused): a reward model, `reward_logits` with `reward_bias` and
    `center_rewards`; `reward_scorer` gives its rewards. `side_features=F` adds an
    input (B, 2, F) of per-side features (lengths, markdown counts), standardized
    (`fit_side_features` sets the statistics) and joined to each side's vector both as they
    are and through one shared tanh projection. `lora_rank > 0` freezes the backbone and
    trains rank-`lora_rank` adapters on `lora_targets` (None: keras-hub's default layers)
    scaled by `lora_alpha / lora_rank` (None: 1), their input dropped out at `lora_dropout`
    in training (`lora.add_dropout`).
    """

    default_name = "preference"
    poolings: tuple[str, ...] = ("mean",)
    scores_sides_apart = False

    def __init__(
        self,
        backbone,
        lora_rank: int = 0,
        lora_targets: list[str] | None = None,
        lora_alpha: float | None = None,
        head: str = "symmetric",
        dropout: float = 0.1,
        side_features: int = 0,
        lora_dropout: float = 0.0,
        pooling: str = "mean",
        objective: str = "classes",
        reward_bias: bool = True,
        center_rewards: float = 0.0,
        name: str | None = None,
        **kwargs,
    ):
        check_choices(self, head, pooling, objective, side_features)
        self.pooling = pooling  # before the graph: `encode` reads it
        if lora_rank > 0:
            lora.enable(backbone, lora_rank, lora_targets, lora_alpha)
        lora_seed = None
        if lora_dropout:
            if not lora_rank:
                raise ValueError("LoRA dropout needs LoRA adapters (lora_rank > 0)")
            lora_seed = keras.random.SeedGenerator(name="lora_dropout_seed")
            lora.add_dropout(backbone, lora_dropout, lora_seed)

        # === Functional Model ===
        inputs, side_a, side_b = self.encode(backbone)
        if side_features:
            inputs[SIDE_FEATURES] = keras.Input(
                shape=(2, side_features), dtype="float32", name=SIDE_FEATURES
            )
            side_a, side_b = with_side_features(inputs[SIDE_FEATURES], side_a, side_b)
        if objective == "reward":
            logits = reward_logits(side_a, side_b, reward_bias, center_rewards)
        else:
            logits = HEADS[head](side_a, side_b, dropout)
        probs = keras.layers.Activation("softmax", dtype="float32", name="probs")(logits)
        super().__init__(inputs=inputs, outputs=probs, name=name or self.default_name, **kwargs)

        # === Config ===
        self.backbone, self.lora_rank = backbone, lora_rank
        self.lora_targets, self.lora_alpha = lora_targets, lora_alpha
        self.head, self.dropout, self.side_features = head, dropout, side_features
        self.lora_dropout = lora_dropout
        self.objective, self.reward_bias = objective, reward_bias
        self.center_rewards = center_rewards
        if lora_seed is not None:
            self.lora_seed = lora_seed  # tracked: its state trains and checkpoints with the model

    def encode(self, backbone) -> tuple[dict, object, object]:
        """(inputs by name, side A vector, side B vector) of the functional graph."""
        raise NotImplementedError

    def build_packer(self, preset: str, sequence_length: int) -> Packer:
        """The packer that feeds this model from texts, with the tokenizer of `preset`."""
        raise NotImplementedError

    @property
    def backbone_input_keys(self) -> tuple[str, ...]:
        return tuple(self.backbone.input.keys())

    @property
    def input_keys(self) -> tuple[str, ...]:
        """The integer inputs its packer feeds (side features aside)."""
        return self.backbone_input_keys

    def fit_side_features(self, features: np.ndarray) -> None:
        """Fit the side-feature standardization on the training split's (n, 2, F) features."""
        self.get_layer(STANDARDIZE).fit(features)

    def reward_scorer(self) -> GatheredPredictions:
        """A model of the same inputs and weights whose output is each row's side rewards,
        (B, 2) float32 [rA, rB] (objective "reward" only). Build it once and reuse it (each
        new one compiles its own predict function):

            scorer = model.reward_scorer()
            rewards = scorer.predict(batch, verbose=0)  # rewards[i, 0]: side A of row i
        """
        if self.objective != "reward":
            raise ValueError(f"{self.name} has objective {self.objective!r}: no side rewards")
        outputs = self.get_layer(SIDE_REWARDS).output
        return GatheredPredictions(self.input, outputs, name=f"{self.name}_{SIDE_REWARDS}")

    def get_config(self):
        # Not chained to Functional.get_config: that nested graph cannot rebuild a subclass.
        return {
            "backbone": keras.layers.serialize(self.backbone),
            "lora_rank": self.lora_rank,
            "lora_targets": self.lora_targets,
            "lora_alpha": self.lora_alpha,
            "head": self.head,
            "dropout": self.dropout,
            "side_features": self.side_features,
            "lora_dropout": self.lora_dropout,
            "pooling": self.pooling,
            "objective": self.objective,
            "reward_bias": self.reward_bias,
            "center_rewards": self.center_rewards,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        """Rebuild from `get_config`; the backbone config passes `safety` first (no code, only
        keras, keras_hub and jaxpref classes, no file outside its preset)."""
        config = dict(config)
        if isinstance(config["backbone"], dict):
            safety.check_serialized(config["backbone"], f"{cls.__name__} config", "backbone")
            config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="jaxpref")
class SiameseModel(PreferenceModel):
    """One shared backbone encodes each side; the head compares the two pooled vectors.

    Inputs are (B, 2, L) per backbone input; both sides are folded into one (2B, L) backbone
    call (shared weights, one large matmul instead of two) and pooled: `pooling="mean"` over
    real tokens, `"first"` the first token's state ([CLS] of an encoder), `"last"` the last
    real token's (decoders; `TokenPool`). Each side is pooled from its own tokens only, so a
    reward model (`objective="reward"`) scores each side on its own.
    """

    default_name = "siamese_preference"
    poolings = ("mean", "first", "last")
    scores_sides_apart = True

    def encode(self, backbone):
        keys = tuple(backbone.input.keys())
        inputs = {key: keras.Input(shape=(2, None), dtype="int32", name=key) for key in keys}
        folded = {key: FoldSides(name=f"fold_{key}")(inputs[key]) for key in keys}
        hidden = sequence_output(backbone(folded))
        if self.pooling == "mean":
            pooled = MaskedMeanPool(name="mean_pool")(hidden, folded["padding_mask"])
        else:
            pool = TokenPool(self.pooling, name=f"{self.pooling}_token_pool")
            pooled = pool(hidden, folded["padding_mask"])
        side_a, side_b = UnfoldSides(name="unfold")(pooled)
        return inputs, side_a, side_b

    def build_packer(self, preset: str, sequence_length: int) -> Packer:
        """Each side packed by the preset's own preprocessor, or for a decoder
        (`pooling="last"`) by its tokenizer (`DecoderPairPacker`)."""
        if self.pooling == "last":
            tokenizer = backbones.load_tokenizer(preset)
            return DecoderPairPacker(tokenizer, sequence_length, self.input_keys)
        preprocessor = backbones.load_preprocessor(preset, sequence_length)
        return PairPacker(preprocessor, self.input_keys)


@keras.saving.register_keras_serializable(package="jaxpref")
class CrossEncoderModel(PreferenceModel):
    """One backbone call reads conversation, first and second response in one sequence.

    Each response is pooled over its own tokens and joined with the whole sequence's vector
    (`SegmentPool`: `pooling="mean"` for encoders, `"last"` for decoders); the same heads
    compare the two. Its packer feeds either order of the responses (`packers.CrossPacker`):
    swap augmentation in training, and swap test-time augmentation at inference, make the
    predictions swap-consistent.
    """

    default_name = "cross_preference"
    poolings = ("mean", "last")

    def encode(self, backbone):
        keys = tuple(backbone.input.keys())
        inputs = {key: keras.Input(shape=(None,), dtype="int32", name=key) for key in keys}
        inputs[PART_IDS] = keras.Input(shape=(None,), dtype="int32", name=PART_IDS)
        hidden = sequence_output(backbone({key: inputs[key] for key in keys}))
        first, second, whole = SegmentPool(self.pooling, name="segment_pool")(
            hidden, inputs[PART_IDS], inputs["padding_mask"]
        )
        side_a = keras.layers.Concatenate(name="first_and_whole")([first, whole])
        side_b = keras.layers.Concatenate(name="second_and_whole")([second, whole])
        return inputs, side_a, side_b

    @property
    def input_keys(self) -> tuple[str, ...]:
        return (*self.backbone_input_keys, PART_IDS)

    def build_packer(self, preset: str, sequence_length: int) -> CrossPacker:
        """The preset's tokenizer, packed as the tagged text for decoders (`pooling="last"`)."""
        tokenizer = backbones.load_tokenizer(preset)
        decoder = self.pooling == "last"
        return CrossPacker(tokenizer, sequence_length, self.input_keys, decoder)


def check_choices(
    model: PreferenceModel, head: str, pooling: str, objective: str, side_features: int
) -> None:
    """ValueError for an option `model`'s class does not know, or an objective it cannot
    serve."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {tuple(HEADS)}, got {head!r}")
    kind = type(model).__name__
    if pooling not in model.poolings:
        raise ValueError(f"{kind} pooling must be one of {model.poolings}, got {pooling!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if objective == "reward" and not model.scores_sides_apart:
        raise ValueError(f"{kind} sees both sides in each side vector: no reward per side")
    if objective == "reward" and side_features:
        raise ValueError("a reward model scores the backbone's side states alone: no side features")


def with_side_features(features, side_a, side_b):
    """Each side's embedding joined with its standardized features, raw and tanh-projected.

    The raw standardized features make the head hold the length-feature logistic regression
    (A, B, A - B, |A - B|) as a special case.
    """
    features = Standardize(dtype="float32", name=STANDARDIZE)(features)
    project = keras.layers.Dense(16, activation="tanh", dtype="float32", name="side_proj")
    side_a = keras.layers.Concatenate(name="with_features_a")(
        [ops.cast(side_a, "float32"), project(features[:, 0]), features[:, 0]]
    )
    side_b = keras.layers.Concatenate(name="with_features_b")(
        [ops.cast(side_b, "float32"), project(features[:, 1]), features[:, 1]]
    )
    return side_a, side_b


def symmetric_head(side_a, side_b, dropout: float):
    return SwapSymmetricHead(dropout, name="logits")(side_a, side_b)


def concat_head(side_a, side_b, dropout: float):
    features = keras.layers.Concatenate(name="compare")(
        [side_a, side_b, side_a - side_b, side_a * side_b]
    )
    features = keras.layers.Dropout(dropout, name="head_dropout")(features)
    return keras.layers.Dense(NUM_CLASSES, dtype="float32", name="logits")(features)


def reward_logits(side_a, side_b, use_bias: bool, center: float):
    """A reward model's Davidson logits (`DavidsonTies`): one linear unit `reward` scores each
    side's pooled state as it is, no dropout or layer between (Hugging Face's
    *ForSequenceClassification with num_labels = 1: `score` without a bias for decoders, a
    classifier with one for encoders); the `side_rewards` layer's output is [rA, rB] (B, 2)."""
    score = keras.layers.Dense(1, use_bias=use_bias, dtype="float32", name="reward")
    rewards = keras.layers.Concatenate(name=SIDE_REWARDS)([score(side_a), score(side_b)])
    return DavidsonTies(center, dtype="float32", name="logits")(rewards)


HEADS = {"symmetric": symmetric_head, "concat": concat_head}
ARCHITECTURES: dict[str, type[PreferenceModel]] = {
    "siamese": SiameseModel,
    "cross": CrossEncoderModel,
}


def set_precision(precision: str) -> None:
    """Global Keras dtype policy; call before building the backbone."""
    keras.config.set_dtype_policy(precision)


def build_model(
    cfg: ModelConfig, sequence_length: int, preset: str | None = None, load_weights: bool = True
) -> PreferenceModel:
    """The `cfg.architecture` model around the backbone of `preset` (default `cfg.preset`).

    `cfg.precision` must be resolved (not "auto"). Inference passes a run's weightless preset
    copy with `load_weights=False`; the trained weights then come from its checkpoint.
    Decoder LLMs (`families`) get last-token pooling, LoRA on attention and MLP by default,
    and, with `cfg.remat`, each block recomputed in the backward pass. A reward model pools
    an encoder's first token and a decoder's last (`SiameseModel`).
    """
    set_precision(cfg.precision)
    preset = presets.probe(preset or cfg.preset)
    decoder = preset.family is not None
    check_options(cfg, decoder)
    side_features = resolve_side_features(cfg.side_features, cfg.objective)
    backbone = build_backbone(cfg, preset, sequence_length, load_weights)
    return ARCHITECTURES[cfg.architecture](
        backbone,
        lora_rank=cfg.lora_rank,
        lora_targets=lora.target_layers(cfg.lora_targets, preset.family),
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        head=cfg.head,
        dropout=cfg.dropout,
        side_features=NUM_SIDE_FEATURES if side_features else 0,
        pooling=pooling_for(cfg, decoder),
        objective=cfg.objective,
        reward_bias=not decoder,
        center_rewards=cfg.center_rewards,
    )


def pooling_for(cfg: ModelConfig, decoder: bool) -> str:
    """What the model reads of each sequence: a decoder's last real token (the only one that
    has seen all of it) and an encoder's mean, except that an encoder reward model reads its
    first token, [CLS], as Hugging Face's sequence classifiers do."""
    if decoder:
        return "last"
    return "first" if cfg.objective == "reward" else "mean"


def build_backbone(
    cfg: ModelConfig, preset: presets.Preset, sequence_length: int, load_weights: bool = True
):
    """The preset's backbone as `cfg` asks for it: built with each block recomputed in the
    backward pass (`cfg.remat`), checked against `sequence_length`, and a DeBERTa's attention
    replaced per `cfg.attention`."""
    with families.remat_scope(preset.backbone_config) if cfg.remat else nullcontext():
        backbone = backbones.load_backbone(
            preset.location, dtype=cfg.precision, load_weights=load_weights
        )
    backbones.check_sequence_length(backbone, sequence_length)
    if cfg.attention != "keras_hub" and type(backbone).__name__ == "DebertaV3Backbone":
        from jaxpref.models import deberta_attention

        dropout = cfg.attention == "efficient_dropout"
        deberta_attention.efficient_deberta(backbone, attention_dropout=dropout)
    return backbone


def check_options(cfg: ModelConfig, decoder: bool) -> None:
    """Refuse model options that do not apply to the preset (a decoder LLM or an encoder) or
    to the objective: a reward per side needs the siamese layout; decoders read pairs only as
    a cross-encoder or as a reward model."""
    if cfg.objective == "reward" and cfg.architecture != "siamese":
        raise ConfigError(
            f"--objective reward scores each side on its own; --architecture {cfg.architecture} "
            "reads both responses in one sequence: use --architecture siamese"
        )
    if cfg.center_rewards and cfg.objective != "reward":
        raise ConfigError("--center-rewards applies to --objective reward")
    if decoder and cfg.architecture == "siamese" and cfg.objective != "reward":
        raise ConfigError(
            f"--preset {cfg.preset} is a decoder LLM: use --architecture cross, or "
            "--objective reward"
        )
    if cfg.lora_dropout and not cfg.lora_rank:
        raise ConfigError("--lora-dropout applies to LoRA adapters: set --lora-rank above 0")
    if cfg.remat and not decoder:
        raise ConfigError("--remat applies to decoder LLM presets (Gemma, Llama, Qwen, Mistral)")


def parameter_counts(model: keras.Model) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    return model.count_params(), trainable
