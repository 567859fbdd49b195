"""Batch plans: rows of similar length grouped into global batches, each padded only to its
bucket length (a small fixed set, so XLA compiles a bounded number of shapes).

A plan is a pure function of (lengths, seed, epoch): every process computes the same plan, a
resumed run sees the same order, and shuffling stays random across buckets between epochs.
Rows left over in a bucket move up to the next bucket; the final partial batch is filled with
zero-weight copies, so no row is dropped and every batch splits evenly over devices (partial
batches break sharded JAX steps, keras issue #21167). NumPy only: no tokenizer, no tf.data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


def bucket_lengths(sequence_length: int) -> tuple[int, ...]:
    """Padded lengths a batch may take: every 64 tokens up to 256, then every 128, then L.

    About ten shapes at L=1024: few enough compilations, fine enough to waste little padding.
    """
    sizes = [*range(64, 257, 64), *range(384, sequence_length, 128)]
    return (*[s for s in sizes if s < sequence_length], sequence_length)


@dataclasses.dataclass(frozen=True)
class Batch:
    """One global batch: row indices, sample weights (0 = filler copy) and padded length."""

    rows: np.ndarray
    weights: np.ndarray
    length: int
    swap: np.ndarray | None = None  # rows fed with sides A and B exchanged (augmentation)


def plan_batches(
    lengths: np.ndarray,
    global_batch_size: int,
    buckets: Sequence[int],
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    swap: bool = False,
) -> list[Batch]:
    """Group rows of similar length into global batches; identical on every process.

    Without `shuffle`, rows keep ascending length order inside the plan (inference restores the
    input order from `Batch.rows`). With it, rows are shuffled within buckets and batches across
    buckets, differently for each epoch but reproducibly for a (seed, epoch), every epoch
    opening with a batch of its shortest padded length (no recompilation at epoch starts). With
    `swap`, a random half of the rows is fed with sides A and B exchanged (and labels to match).
    """
    lengths = np.asarray(lengths)
    if len(lengths) < 1:
        raise ValueError("no rows to feed")
    rng = np.random.default_rng([seed, epoch])
    bucket_of = np.searchsorted(np.asarray(buckets), lengths, side="left")
    bucket_of = np.minimum(bucket_of, len(buckets) - 1)
    batches: list[Batch] = []
    carry = np.empty(0, dtype=np.int64)
    for b, size in enumerate(buckets):
        rows = np.flatnonzero(bucket_of == b)
        rows = rng.permutation(rows) if shuffle else rows[np.argsort(lengths[rows], kind="stable")]
        rows = np.concatenate([carry, rows])
        full = len(rows) // global_batch_size * global_batch_size
        for start in range(0, full, global_batch_size):
            chunk = rows[start : start + global_batch_size]
            batches.append(Batch(chunk, np.ones(len(chunk), np.float32), size))
        carry = rows[full:]
    if len(carry):
        fill = global_batch_size - len(carry)
        rows = np.concatenate([carry, np.resize(carry, fill)])
        weights = np.concatenate([np.ones(len(carry)), np.zeros(fill)]).astype(np.float32)
        batches.append(Batch(rows, weights, buckets[-1]))
    if shuffle:
        batches = open_with_shortest([batches[i] for i in rng.permutation(len(batches))])
    if swap:
        batches = [dataclasses.replace(b, swap=rng.random(len(b.rows)) < 0.5) for b in batches]
    return batches


def open_with_shortest(batches: list[Batch]) -> list[Batch]:
    """`batches` with the first of the shortest padded length moved to the front.

    Keras resets its metric variables at each epoch start, and on one device JAX then compiles
    the train step again for the epoch's first shape unless that shape opened an epoch before:
    every epoch opens with the same (the shortest) padded length.
    """
    first = min(range(len(batches)), key=lambda i: batches[i].length)
    return [batches[first], *batches[:first], *batches[first + 1 :]]


def split_plan(plan: Sequence[Batch], parts: int) -> list[list[Batch]]:
    """`plan` cut into `parts` consecutive periods of near-equal length (validation points
    inside an epoch). Keras trains each as an epoch, so each opens with the plan's shortest
    padded length (`open_with_shortest`): a period without a batch of that length swaps its
    first batch for one from a period with several, while there is one."""
    if not 1 <= parts <= len(plan):
        raise ValueError(f"cannot cut {len(plan)} batches into {parts} periods")
    bounds = np.linspace(0, len(plan), parts + 1).round().astype(int)
    periods = [list(plan[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    shortest = min(b.length for b in plan)
    for period in periods:
        if any(b.length == shortest for b in period):
            continue
        donor = next((p for p in periods if sum(b.length == shortest for b in p) > 1), None)
        if donor is not None:
            i = max(i for i, b in enumerate(donor) if b.length == shortest)
            donor[i], period[0] = period[0], donor[i]
    return [open_with_shortest(period) for period in periods]


def padding_efficiency(side_lengths: np.ndarray, plan: Sequence[Batch]) -> float:
    """Real tokens / computed tokens over a plan (filler rows count as computed), from the
    (n, 2) real tokens of each row's two sequences (`TokenizedPairs.lengths`)."""
    real = sum(int(side_lengths[b.rows[b.weights > 0]].sum()) for b in plan)
    computed = sum(2 * len(b.rows) * b.length for b in plan)
    return real / computed
