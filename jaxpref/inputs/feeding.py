"""Feeding: batch plans of featurized rows as a prefetched tf.data pipeline of this process's
share of every global batch, each batch padded only to its bucket length."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from jaxpref.data.arena import MIRROR, NUM_CLASSES
from jaxpref.inputs.batching import Batch
from jaxpref.inputs.featurize import SIDE_FEATURES, FeaturizedRows


def make_dataset(
    rows: FeaturizedRows,
    plans: Sequence[Sequence[Batch]],
    labels: np.ndarray | None = None,
    process_index: int = 0,
    process_count: int = 1,
):
    """A tf.data pipeline of this process's share of every batch of `plans`, in order.

    `labels` are class indices (n,) or target rows (n, 3) of probabilities (soft labels), or
    (n, 4) with a margin after them (`objective.with_margins`); rows fed swapped get mirrored
    class columns. Elements are `(x, y, sample_weight)` with labels, `y`
    (B/process_count, 3 or 4) float32 targets, else `(x,)`; `x` maps the model's input names to
    int32 arrays of `rows.packer.batch_shape` (B/process_count first, the batch's bucket
    length last) and, when `rows` have side features, `side_features` to
    (B/process_count, 2, F) float32.

        for x, y, weight in make_dataset(rows, [rows.plan(8, shuffle=True)], labels): ...
    """
    import tensorflow as tf

    targets = None
    if labels is not None:
        labels = np.asarray(labels)
        one_hot = np.eye(NUM_CLASSES, dtype=np.float32)
        targets = labels.astype(np.float32) if labels.ndim == 2 else one_hot[labels]
    packer = rows.packer
    x_spec = {k: tf.TensorSpec(packer.batch_shape, tf.int32) for k in packer.input_keys}
    if rows.side_features is not None:
        shape = (None, 2, rows.side_features.shape[-1])
        x_spec[SIDE_FEATURES] = tf.TensorSpec(shape, tf.float32)
    spec = (x_spec,)
    if targets is not None:
        y_spec = tf.TensorSpec((None, targets.shape[1]), tf.float32)
        spec = (x_spec, y_spec, tf.TensorSpec((None,), tf.float32))
    shard = (process_index, process_count)
    ds = tf.data.Dataset.from_generator(
        lambda: _local_batches(rows, plans, targets, *shard), output_signature=spec
    )
    steps = sum(len(plan) for plan in plans)
    ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
    return ds.prefetch(tf.data.AUTOTUNE)


def _local_batches(
    rows: FeaturizedRows,
    plans: Sequence[Sequence[Batch]],
    targets: np.ndarray | None,
    process_index: int,
    process_count: int,
) -> Iterator[tuple]:
    """This process's share of every batch, as `make_dataset` describes its elements."""
    for plan in plans:
        for batch in plan:
            share = len(batch.rows) // process_count
            part = slice(process_index * share, (process_index + 1) * share)
            fed = batch.rows[part]
            sides = np.array([[0, 1]] * len(fed))
            row_targets = None if targets is None else targets[fed]  # a copy
            if batch.swap is not None:
                flip = batch.swap[part]
                sides[flip] = [1, 0]
                if row_targets is not None:
                    mirror = [*MIRROR, *range(NUM_CLASSES, row_targets.shape[1])]
                    row_targets[flip] = row_targets[flip][:, mirror]
            x = rows.packer.batch_inputs(rows.tokens, fed, sides, batch.length)
            if rows.side_features is not None:
                x[SIDE_FEATURES] = rows.side_features[fed[:, None], sides]
            if targets is None:
                yield (x,)
            else:
                yield x, row_targets, batch.weights[part]
