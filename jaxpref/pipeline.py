"""tf.data input pipeline: text pairs -> tokenized (B, 2, L) batches for the siamese model.

The preset's own keras-hub tokenizer and segment packer run inside the pipeline (parallel map),
tokens are cached, training data is reshuffled every epoch, and batches are prefetched.
Each process reads only its shard of the rows and produces its share of every global batch.
Rows are padded up to a whole number of global batches with zero-weight copies, so no row is
dropped and every batch has the same static shape on every device (partial batches break
sharded JAX steps, keras issue #21167).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxpref.text import FEATURE_KEYS, SIDES

TOKENIZE_CHUNK = 256


def truncate_pair(context, response, budget: int):
    """Fit ragged (context, response) token rows into `budget` tokens.

    Each segment may use half the budget; one that needs less gives the rest to the other.
    The context keeps its end (the latest turns decide the vote); the response keeps its start.
    """
    import tensorflow as tf

    context_len = context.row_lengths()
    response_len = response.row_lengths()
    half = tf.cast(budget // 2, context_len.dtype)
    keep_response = tf.minimum(response_len, tf.maximum(half, budget - context_len))
    keep_context = tf.minimum(context_len, budget - keep_response)
    positions = tf.ragged.range(context_len)
    context = tf.ragged.boolean_mask(
        context, positions >= tf.expand_dims(context_len - keep_context, 1)
    )
    positions = tf.ragged.range(response_len)
    response = tf.ragged.boolean_mask(response, positions < tf.expand_dims(keep_response, 1))
    return context, response


@dataclasses.dataclass
class PairEncoder:
    """Tokenizes and packs both sides of each row with the preset's preprocessor."""

    preprocessor: object
    input_keys: tuple[str, ...]

    def __post_init__(self) -> None:
        import tensorflow as tf

        self.preprocessor.build(None)
        self.sequence_length = int(self.preprocessor.sequence_length)
        empty = tf.ragged.constant([[]], dtype=tf.int32)
        packed, _ = self.preprocessor.packer((empty, empty))
        specials = int(tf.reduce_sum(tf.cast(packed != self.pad_id, tf.int32)))
        self.budget = self.sequence_length - specials

    @property
    def pad_id(self) -> int:
        return int(self.preprocessor.tokenizer.pad_token_id)

    def encode_side(self, context, response) -> dict:
        tokenizer = self.preprocessor.tokenizer
        context, response = truncate_pair(tokenizer(context), tokenizer(response), self.budget)
        token_ids, segment_ids = self.preprocessor.packer((context, response))
        features = {
            "token_ids": token_ids,
            "padding_mask": token_ids != self.pad_id,
            "segment_ids": segment_ids,
        }
        return {key: features[key] for key in self.input_keys}

    def __call__(self, texts: dict) -> dict:
        """{context_a, response_a, context_b, response_b} strings (N,) -> {key: (N, 2, L)}."""
        import tensorflow as tf

        sides = [self.encode_side(texts[f"context_{s}"], texts[f"response_{s}"]) for s in SIDES]
        return {key: tf.stack([side[key] for side in sides], axis=1) for key in self.input_keys}


def padded_indices(num_rows: int, global_batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row index and sample weight for every slot of a whole number of global batches."""
    if num_rows < 1:
        raise ValueError("no rows to feed")
    total = -(-num_rows // global_batch_size) * global_batch_size
    slots = np.arange(total)
    return slots % num_rows, (slots < num_rows).astype("float32")


def make_dataset(
    texts: dict[str, np.ndarray],
    encoder: PairEncoder,
    global_batch_size: int,
    labels: np.ndarray | None = None,
    shuffle: bool = False,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
):
    """A batched tf.data pipeline of this process's share of `texts`.

    Elements are `(x, y, sample_weight)` with labels, else `(x,)`; `x` maps the backbone's input
    names to (B/process_count, 2, L) int32. Padding slots carry weight 0.
    """
    import tensorflow as tf

    rows, weights = padded_indices(len(texts[FEATURE_KEYS[0]]), global_batch_size)
    rows, weights = rows[process_index::process_count], weights[process_index::process_count]
    local_batch = global_batch_size // process_count
    columns = {key: texts[key][rows].astype(str) for key in FEATURE_KEYS}
    ds = tf.data.Dataset.from_tensor_slices(columns)
    ds = ds.batch(TOKENIZE_CHUNK).map(encoder, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda x: {k: tf.cast(v, tf.int32) for k, v in x.items()}).unbatch()
    extras = [tf.data.Dataset.from_tensor_slices(weights)]
    if labels is not None:
        one_hot = np.eye(3, dtype="float32")[np.asarray(labels)[rows]]
        extras.insert(0, tf.data.Dataset.from_tensor_slices(one_hot))
    ds = tf.data.Dataset.zip((ds, *extras)).cache()
    if shuffle:
        ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    if labels is None:
        ds = ds.map(lambda x, w: (x,))
    ds = ds.batch(local_batch, drop_remainder=True)
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(rows) // local_batch))
    return ds.prefetch(tf.data.AUTOTUNE)
