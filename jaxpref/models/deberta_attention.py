"""A cheaper disentangled attention for keras-hub's DeBERTa-v3: same weights, same outputs.

keras-hub 0.32's DeBERTa-v3 spends much of a train step on work unrelated to the model: each
layer projects one copy of the relative table per example, builds (B, H, L, L) int32 index
tensors for two `take_along_axis` gathers whose backward scatters one float at a time, and
draws B*H*L^2 random numbers for dropout on the attention probabilities. The relative scores
depend on i - j only, so here one (L, L) bucket index serves the whole batch and all heads:
the content-to-position and position-to-content scores are laid out (L, 2 * bucket, B, H) and
gathered with windows of B*H contiguous numbers, one copy of the table is projected per layer,
and attention-probability dropout is optional (off by default; `attention_dropout=True`
keeps keras-hub's). Position dropout (on the relative table) stays, drawn once per layer for
the whole batch instead of once per example.

`efficient_deberta(backbone)` switches a built `DebertaV3Backbone` in place: each encoder's
self-attention layer becomes an `EfficientDisentangledSelfAttention`, a subclass that changes
only call code. In place, rather than rebuilding the backbone from registered subclasses and
copying weights, because every variable stays the same object with the same shape, path and
order (Orbax checkpoints are interchangeable, nothing is copied, the layouts a distribution
gave the variables stay), and the backbone stays a keras-hub `DebertaV3Backbone`, so
`save_to_preset` writes a plain keras-hub preset that loads without jaxpref. Keras' weight
files name the layers of a list by class name, which is why `RelativeEmbedding` keeps its
class and its per-example repeat: a broadcast that XLA folds into the one copy sliced here.
LoRA works before or after the switch (the query/key/value layers are untouched), and so do
mixed precision and `keras.distribution.DataParallel`. A backbone loaded from a preset has
keras-hub's attention again: call `efficient_deberta` after each load. JAX backend only (the
gathers use array indexing).
"""

from __future__ import annotations

import numpy as np
from keras import ops
from keras_hub.models import DebertaV3Backbone
from keras_hub.src.models.deberta_v3.disentangled_self_attention import (
    DisentangledSelfAttention,
)


class AttentionError(ValueError):
    """The model given is not one whose attention this module can replace."""


def relative_position_bucket(
    offsets: np.ndarray, bucket_size: int, max_position: int
) -> np.ndarray:
    """keras-hub's log-bucketed relative position of `offsets` (i - j), in float32 like it."""
    mid = bucket_size // 2
    sign = np.sign(offsets)
    abs_pos = np.where((offsets < mid) & (offsets > -mid), mid - 1, np.abs(offsets))
    f32 = np.float32
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.log(abs_pos.astype(f32) / f32(mid)) * f32(mid - 1)
        log_pos = np.ceil(scaled / np.log(f32(max_position - 1) / f32(mid))).astype(np.int64)
    return np.where(abs_pos <= mid, offsets, (log_pos + mid) * sign)


def relative_index(length: int, bucket_size: int, max_position: int) -> np.ndarray:
    """(L, L) int32 row of the (2 * bucket_size)-row relative table for query i and key j."""
    positions = np.arange(length)
    bucket = relative_position_bucket(
        positions[:, None] - positions[None, :], bucket_size, max_position
    )
    return np.clip(bucket + bucket_size, 0, 2 * bucket_size - 1).astype(np.int32)


class EfficientDisentangledSelfAttention(DisentangledSelfAttention):
    """keras-hub's disentangled self-attention with one shared relative gather per layer.

    `attention_dropout` (set by `efficient_deberta`) says whether dropout applies to the
    attention probabilities as in keras-hub; off, a train step draws no (B, H, L, L) randoms.
    """

    attention_dropout = False

    def _compute_attention(
        self, query, key, value, rel_embeddings, attention_mask=None, training=None
    ):
        # keras-hub's RelativeEmbedding repeats the table per example; XLA folds that broadcast
        # into this slice, so one copy is projected: (2 * bucket, heads, head_dim).
        table = self._position_dropout_layer(rel_embeddings[:1], training=training)
        pos_query = self._query_dense(table)[0]
        pos_key = self._key_dense(table)[0]
        scores = ops.einsum("bjnd,bind->bnij", key, query)
        scores = scores + self._relative_scores(query, key, pos_query, pos_key)
        probs = self._masked_softmax(ops.multiply(scores, self.scale_factor), attention_mask)
        if self.attention_dropout:
            probs = self._attn_dropout_layer(probs, training=training)
        return ops.einsum("bnij,bjnd->bind", probs, value), probs

    def _relative_scores(self, query, key, pos_query, pos_key):
        """Content-to-position plus position-to-content scores, (B, H, L, L).

        Both are laid out (L, 2 * bucket, B, H), so one shared (L, L) index gathers windows of
        B*H contiguous numbers (and the backward scatters them); both gathers yield (i, j)
        order, so the backward transposes the score gradient once for the two.
        """
        length = ops.shape(query)[1]
        index = relative_index(length, self.bucket_size, self.max_position_embeddings)
        rows = np.arange(length)
        c2p = ops.einsum("bind,rnd->irbn", query, pos_key)
        p2c = ops.einsum("bjnd,rnd->jrbn", key, pos_query)
        # c2p[i, j] = c2p[i, index[i, j]]; p2c[i, j] = p2c[j, index[i, j]].
        relative = c2p[rows[:, None], index] + p2c[rows[None, :], index]
        return ops.transpose(relative, (2, 3, 0, 1))


def efficient_deberta(
    backbone: DebertaV3Backbone, attention_dropout: bool = False
) -> DebertaV3Backbone:
    """Switch `backbone` to the efficient attention in place (see the module docstring).

    Returns the same backbone. Idempotent; `attention_dropout=True` keeps keras-hub's dropout
    on the attention probabilities.
    """
    if not isinstance(backbone, DebertaV3Backbone):
        raise AttentionError(
            f"efficient_deberta needs a keras-hub DebertaV3Backbone, got {type(backbone).__name__}"
        )
    for encoder in backbone.transformer_layers:
        attention = encoder._self_attention_layer
        attention.__class__ = EfficientDisentangledSelfAttention
        attention.attention_dropout = attention_dropout
    return backbone
