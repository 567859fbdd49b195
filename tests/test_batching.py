"""Batch plans: every row once, few padded shapes, the same on every process and per epoch."""

import numpy as np
import pytest

from jaxpref.inputs import batching


def test_bucket_lengths_are_few_sorted_and_end_at_the_sequence_length():
    assert batching.bucket_lengths(1024) == (64, 128, 192, 256, 384, 512, 640, 768, 896, 1024)
    assert batching.bucket_lengths(100) == (64, 100)
    assert batching.bucket_lengths(64) == (64,)


def _rows(plan):
    return np.concatenate([b.rows[b.weights > 0] for b in plan])


def test_plan_covers_every_row_once_and_pads_only_the_last_batch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 1024, size=101)
    plan = batching.plan_batches(lengths, 8, batching.bucket_lengths(1024))
    assert sorted(_rows(plan).tolist()) == list(range(101))
    assert len(plan) == 13 and all(len(b.rows) == 8 for b in plan)
    assert sum(int((b.weights == 0).sum()) for b in plan) == 3
    for b in plan:
        assert (lengths[b.rows] <= b.length).all()  # nothing is cut by bucketing
    served = lengths[np.concatenate([b.rows for b in plan])]
    assert (np.diff([b.length for b in plan]) >= 0).all()  # inference order: short to long
    assert served.max() <= plan[-1].length


def test_shuffled_plans_are_reproducible_per_epoch_and_differ_between_epochs():
    lengths = np.random.default_rng(1).integers(10, 512, size=64)
    buckets = batching.bucket_lengths(512)
    a = batching.plan_batches(lengths, 4, buckets, shuffle=True, seed=3, epoch=0)
    b = batching.plan_batches(lengths, 4, buckets, shuffle=True, seed=3, epoch=0)
    c = batching.plan_batches(lengths, 4, buckets, shuffle=True, seed=3, epoch=1)
    assert [x.rows.tolist() for x in a] == [x.rows.tolist() for x in b]
    assert [x.rows.tolist() for x in a] != [x.rows.tolist() for x in c]
    assert sorted(_rows(c).tolist()) == list(range(64))
    assert len({x.length for x in a}) > 1  # batches come from several buckets, mixed


def test_every_epoch_opens_with_the_same_padded_length():
    """Keras resets metrics per epoch; a fixed first shape avoids one compilation per epoch."""
    lengths = np.random.default_rng(2).integers(10, 1024, size=200)
    buckets = batching.bucket_lengths(1024)
    plans = [batching.plan_batches(lengths, 8, buckets, shuffle=True, epoch=e) for e in range(6)]
    assert {plan[0].length for plan in plans} == {min(b.length for b in plans[0])}
    assert len({tuple(b.length for b in plan[1:]) for plan in plans}) == 6


def test_plan_with_no_rows_is_an_error():
    with pytest.raises(ValueError):
        batching.plan_batches(np.array([], dtype=int), 4, (64,))


def test_split_plan_cuts_near_equal_periods_each_opening_with_the_shortest_length():
    """Keras trains each period as an epoch: each opens with the same shape while the plan has
    enough batches of it (4 of length 64 here), else with its own shortest."""
    buckets = batching.bucket_lengths(1024)
    lengths = np.random.default_rng(3).integers(10, 300, size=200)
    plan = batching.plan_batches(lengths, 8, buckets, shuffle=True)
    periods = batching.split_plan(plan, 3)
    assert [len(p) for p in periods] == [8, 9, 8]
    assert sorted(id(b) for p in periods for b in p) == sorted(id(b) for b in plan)
    assert [p[0].length for p in periods] == [64] * 3
    assert batching.split_plan(plan, 1) == [plan]
    long = batching.plan_batches(lengths * 3, 8, buckets, shuffle=True)
    assert all(p[0].length == min(b.length for b in p) for p in batching.split_plan(long, 3))
    with pytest.raises(ValueError):
        batching.split_plan(plan, 26)
