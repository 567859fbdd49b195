"""Feeding featurized rows: batches cut to their bucket, shared out over processes, swapped
sides with mirrored labels and side features."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import pair_texts

from jaxpref.data import arena, text
from jaxpref.data.arena import MIRROR
from jaxpref.inputs import batching, feeding, packers
from jaxpref.inputs.featurize import (
    NUM_SIDE_FEATURES,
    SIDE_FEATURES,
    FeaturizedRows,
    featurize,
    side_features,
    tokenize,
)
from jaxpref.models import backbones, objective


@pytest.fixture(scope="module")
def packer(tiny_preset):
    preprocessor = backbones.load_preprocessor(str(tiny_preset), 96)
    return packers.PairPacker(preprocessor, ("token_ids", "padding_mask"))


def featurized(texts, packer, with_side_features=False) -> FeaturizedRows:
    tokens = tokenize(texts, packer, progress=False)
    features = side_features(texts, tokens) if with_side_features else None
    return FeaturizedRows(packer, tokens, features)


def test_dataset_batches_are_cut_to_their_bucket_with_weights_and_labels(packer):
    rows = featurized(pair_texts(10), packer)
    tokens = rows.tokens
    labels = np.arange(10) % 3
    plan = batching.plan_batches(tokens.row_lengths(), 4, (32, 64, 96))
    batches = list(feeding.make_dataset(rows, [plan], labels))
    assert len(batches) == len(plan) == 3
    for (x, y, w), b in zip(batches, plan, strict=True):
        assert x["token_ids"].shape == (4, 2, b.length) and x["token_ids"].dtype == tf.int32
        mask = x["padding_mask"].numpy()
        np.testing.assert_array_equal(mask.sum(-1), tokens.lengths[b.rows])
        np.testing.assert_array_equal(y.numpy().argmax(1), labels[b.rows])
        np.testing.assert_array_equal(w.numpy(), b.weights)


def test_processes_each_feed_their_share_of_every_batch(packer):
    rows = featurized(pair_texts(10), packer)
    plan = batching.plan_batches(rows.tokens.row_lengths(), 4, (32, 64, 96))
    whole = list(feeding.make_dataset(rows, [plan]))
    parts = [list(feeding.make_dataset(rows, [plan], None, i, 2)) for i in range(2)]
    for step, (x,) in enumerate(whole):
        halves = [parts[i][step][0]["token_ids"].numpy() for i in range(2)]
        assert halves[0].shape[0] == 2
        np.testing.assert_array_equal(np.concatenate(halves), x["token_ids"].numpy())


def test_padding_efficiency_counts_real_over_computed_tokens(packer):
    short = {key: np.asarray([f"{key} row {i}" * (1 + 6 * (i % 2)) for i in range(8)], dtype=object)
             for key in text.FEATURE_KEYS}  # fmt: skip
    rows = featurized(short, packer)
    tokens = rows.tokens
    fixed = [batching.Batch(np.arange(8), np.ones(8, np.float32), 96)]
    expected = tokens.lengths.sum() / (8 * 2 * 96)
    assert rows.padding_efficiency(fixed) == pytest.approx(expected)
    bucketed = batching.plan_batches(tokens.row_lengths(), 4, (32, 64, 96))
    assert batching.padding_efficiency(tokens.lengths, bucketed) > expected


def test_swap_augmentation_exchanges_sides_and_labels(packer):
    rows = featurized(pair_texts(12), packer)
    tokens = rows.tokens
    labels = np.arange(12) % 3
    plan = batching.plan_batches(tokens.row_lengths(), 4, (32, 64, 96), True, 0, 0, swap=True)
    flips = np.concatenate([b.swap for b in plan])
    assert 0 < flips.sum() < len(flips)
    for (x, y, _), b in zip(feeding.make_dataset(rows, [plan], labels), plan, strict=True):
        ids = x["token_ids"].numpy()
        for i, (row, flip) in enumerate(zip(b.rows, b.swap, strict=True)):
            a, bb = (1, 0) if flip else (0, 1)
            np.testing.assert_array_equal(ids[i, 0], tokens.token_ids[row, a, : b.length])
            np.testing.assert_array_equal(ids[i, 1], tokens.token_ids[row, bb, : b.length])
            expected = MIRROR[labels[row]] if flip else labels[row]
            assert y.numpy()[i].argmax() == expected


def test_swapped_rows_mirror_the_classes_of_margin_targets_and_keep_the_margin(packer):
    rows = featurized(pair_texts(12), packer)
    labels, margins = np.arange(12) % 2, np.arange(12) * 0.5
    targets = objective.with_margins(labels, margins)
    plan = batching.plan_batches(rows.tokens.row_lengths(), 4, (32, 64, 96), True, 0, 0, swap=True)
    for (_, y, _), b in zip(feeding.make_dataset(rows, [plan], targets), plan, strict=True):
        y = y.numpy()
        assert y.shape == (4, 4)
        np.testing.assert_array_equal(y[:, 3], margins[b.rows])  # the winner's, wherever it is
        expected = np.where(b.swap, 1 - labels[b.rows], labels[b.rows])
        np.testing.assert_array_equal(y[:, :3].argmax(1), expected)


def test_swapped_rows_exchange_a_and_b(packer):
    texts = pair_texts(3)
    rows = featurized(texts, packer, with_side_features=True)
    swapped = rows.swapped()
    np.testing.assert_array_equal(swapped.tokens.token_ids[:, 0], rows.tokens.token_ids[:, 1])
    np.testing.assert_array_equal(swapped.tokens.lengths[:, 1], rows.tokens.lengths[:, 0])
    np.testing.assert_array_equal(swapped.side_features[:, 0], rows.side_features[:, 1])


def test_side_features_describe_each_side_and_follow_swaps(packer):
    texts = pair_texts(6)
    texts["response_b"] = np.asarray(["# Title\n- a\n- b\n```x```"] * 6, dtype=object)
    rows = featurized(texts, packer, with_side_features=True)
    tokens, features = rows.tokens, rows.side_features
    assert features.shape == (6, 2, NUM_SIDE_FEATURES) and features.dtype == np.float32
    np.testing.assert_allclose(features[:, :, -2], np.log1p(tokens.lengths))
    np.testing.assert_allclose(features[:, :, -1], np.log1p(1))  # one user turn
    headers = text.SIDE_COUNTS.index("headers")
    assert (features[:, 1, headers] == np.float32(np.log1p(1))).all() and (
        features[:, 0, headers] == 0
    ).all()
    plan = batching.plan_batches(tokens.row_lengths(), 2, (32, 64, 96), True, 0, 0, swap=True)
    ds = feeding.make_dataset(rows, [plan], np.zeros(6, int))
    for (x, _, _), b in zip(ds, plan, strict=True):
        for i, (row, flip) in enumerate(zip(b.rows, b.swap, strict=True)):
            expected = features[row, ::-1] if flip else features[row]
            np.testing.assert_array_equal(x[SIDE_FEATURES].numpy()[i], expected)


def test_featurize_packs_a_frame_and_plans_over_the_packers_buckets(packer):
    frame = arena.read_arena_csv(arena.DEFAULT_TRAIN_CSV, labelled=True).head(10)
    rows = featurize(frame, packer, with_side_features=True, progress=False)
    texts = text.format_pairs(frame)
    tokens = tokenize(texts, packer, progress=False)
    np.testing.assert_array_equal(rows.tokens.token_ids, tokens.token_ids)
    np.testing.assert_array_equal(rows.side_features, side_features(texts, tokens))
    assert featurize(frame, packer, progress=False).side_features is None
    assert rows.buckets == (64, 96) and len(rows) == 10
    plan = rows.plan(4, shuffle=True, seed=1, epoch=2, swap=True)
    expected = batching.plan_batches(tokens.row_lengths(), 4, (64, 96), True, 1, 2, True)
    assert [(b.rows.tolist(), b.length, b.swap.tolist()) for b in plan] == [
        (b.rows.tolist(), b.length, b.swap.tolist()) for b in expected
    ]
