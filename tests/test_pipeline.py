import numpy as np
import pytest
import tensorflow as tf

from jaxpref.data import text
from jaxpref.inputs import pipeline
from jaxpref.models import backbones


def test_truncate_pair_keeps_context_end_and_response_start():
    context = tf.ragged.constant([list(range(10)), [1, 2], list(range(20))])
    response = tf.ragged.constant([[100, 101], list(range(100, 120)), list(range(100, 120))])
    c, r = pipeline.truncate_pair(context, response, 8)
    assert c.to_list() == [[4, 5, 6, 7, 8, 9], [1, 2], [16, 17, 18, 19]]
    assert r.to_list() == [[100, 101], list(range(100, 106)), [100, 101, 102, 103]]


def test_truncate_pair_leaves_short_pairs_alone():
    context = tf.ragged.constant([[1, 2, 3]])
    response = tf.ragged.constant([[4, 5]])
    c, r = pipeline.truncate_pair(context, response, 10)
    assert c.to_list() == [[1, 2, 3]] and r.to_list() == [[4, 5]]


def test_bucket_lengths_are_few_sorted_and_end_at_the_sequence_length():
    assert pipeline.bucket_lengths(1024) == (64, 128, 192, 256, 384, 512, 640, 768, 896, 1024)
    assert pipeline.bucket_lengths(100) == (64, 100)
    assert pipeline.bucket_lengths(64) == (64,)


def _rows(plan):
    return np.concatenate([b.rows[b.weights > 0] for b in plan])


def test_plan_covers_every_row_once_and_pads_only_the_last_batch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 1024, size=101)
    plan = pipeline.plan_batches(lengths, 8, pipeline.bucket_lengths(1024))
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
    buckets = pipeline.bucket_lengths(512)
    a = pipeline.plan_batches(lengths, 4, buckets, shuffle=True, seed=3, epoch=0)
    b = pipeline.plan_batches(lengths, 4, buckets, shuffle=True, seed=3, epoch=0)
    c = pipeline.plan_batches(lengths, 4, buckets, shuffle=True, seed=3, epoch=1)
    assert [x.rows.tolist() for x in a] == [x.rows.tolist() for x in b]
    assert [x.rows.tolist() for x in a] != [x.rows.tolist() for x in c]
    assert sorted(_rows(c).tolist()) == list(range(64))
    assert len({x.length for x in a}) > 1  # batches come from several buckets, mixed


def test_every_epoch_opens_with_the_same_padded_length():
    """Keras resets metrics per epoch; a fixed first shape avoids one compilation per epoch."""
    lengths = np.random.default_rng(2).integers(10, 1024, size=200)
    buckets = pipeline.bucket_lengths(1024)
    plans = [pipeline.plan_batches(lengths, 8, buckets, shuffle=True, epoch=e) for e in range(6)]
    assert {plan[0].length for plan in plans} == {min(b.length for b in plans[0])}
    assert len({tuple(b.length for b in plan[1:]) for plan in plans}) == 6


def test_plan_with_no_rows_is_an_error():
    with pytest.raises(ValueError):
        pipeline.plan_batches(np.array([], dtype=int), 4, (64,))


@pytest.fixture(scope="module")
def encoder(tiny_preset):
    preprocessor = backbones.load_preprocessor(str(tiny_preset), 96)
    return pipeline.PairEncoder(preprocessor, ("token_ids", "padding_mask"))


def _texts(n):
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    return {
        key: np.asarray(
            [f"{key} " + " ".join(words[: (i % len(words)) + 1]) * (i + 1) for i in range(n)],
            dtype=object,
        )
        for key in text.FEATURE_KEYS
    }


def test_tokenize_shapes_lengths_and_special_tokens(encoder):
    tokens = pipeline.tokenize(_texts(5), encoder, progress=False)
    assert tokens.token_ids.shape == (5, 2, 96) and tokens.lengths.shape == (5, 2)
    tokenizer = encoder.preprocessor.tokenizer
    for row in range(5):
        for side in range(2):
            n = tokens.lengths[row, side]
            real = tokens.token_ids[row, side, :n]
            assert real[0] == tokenizer.cls_token_id and real[-1] == tokenizer.sep_token_id
            assert (real == tokenizer.sep_token_id).sum() == 2
            assert (tokens.token_ids[row, side, n:] == tokenizer.pad_token_id).all()


def test_tokenize_cache_round_trips_and_is_keyed_by_text(encoder, tmp_path):
    texts = _texts(4)
    first = pipeline.tokenize(texts, encoder, tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    again = pipeline.tokenize(texts, encoder, tmp_path, progress=False)
    np.testing.assert_array_equal(first.token_ids, again.token_ids)
    changed = {**texts, "response_b": texts["response_b"][::-1].copy()}
    pipeline.tokenize(changed, encoder, tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_long_context_keeps_its_last_tokens(encoder):
    texts = {key: np.asarray(["short"], dtype=object) for key in text.FEATURE_KEYS}
    long = " ".join(f"w{i}" for i in range(300)) + " omega"
    texts["context_a"] = np.asarray([long], dtype=object)
    tokens = pipeline.tokenize(texts, encoder, progress=False)
    ids = tokens.token_ids[0, 0]
    assert tokens.lengths[0, 0] == 96  # the budget is used up
    tokenizer = encoder.preprocessor.tokenizer
    full = np.asarray(tokenizer(long)).tolist()
    first_sep = ids.tolist().index(tokenizer.sep_token_id)
    assert ids[1:first_sep].tolist() == full[-(first_sep - 1) :]


def test_dataset_batches_are_cut_to_their_bucket_with_weights_and_labels(encoder):
    texts = _texts(10)
    tokens = pipeline.tokenize(texts, encoder, progress=False)
    labels = np.arange(10) % 3
    plan = pipeline.plan_batches(tokens.row_lengths(), 4, (32, 64, 96))
    batches = list(pipeline.make_dataset(tokens, [plan], encoder.input_keys, labels))
    assert len(batches) == len(plan) == 3
    for (x, y, w), b in zip(batches, plan, strict=True):
        assert x["token_ids"].shape == (4, 2, b.length) and x["token_ids"].dtype == tf.int32
        mask = x["padding_mask"].numpy()
        np.testing.assert_array_equal(mask.sum(-1), tokens.lengths[b.rows])
        np.testing.assert_array_equal(y.numpy().argmax(1), labels[b.rows])
        np.testing.assert_array_equal(w.numpy(), b.weights)


def test_processes_each_feed_their_share_of_every_batch(encoder):
    tokens = pipeline.tokenize(_texts(10), encoder, progress=False)
    plan = pipeline.plan_batches(tokens.row_lengths(), 4, (32, 64, 96))
    whole = list(pipeline.make_dataset(tokens, [plan], encoder.input_keys))
    parts = [
        list(pipeline.make_dataset(tokens, [plan], encoder.input_keys, None, i, 2))
        for i in range(2)
    ]
    for step, (x,) in enumerate(whole):
        halves = [parts[i][step][0]["token_ids"].numpy() for i in range(2)]
        assert halves[0].shape[0] == 2
        np.testing.assert_array_equal(np.concatenate(halves), x["token_ids"].numpy())


def test_padding_efficiency_counts_real_over_computed_tokens(encoder):
    short = {key: np.asarray([f"{key} row {i}" * (1 + 6 * (i % 2)) for i in range(8)], dtype=object)
             for key in text.FEATURE_KEYS}  # fmt: skip
    tokens = pipeline.tokenize(short, encoder, progress=False)
    fixed = [pipeline.Batch(np.arange(8), np.ones(8, np.float32), 96)]
    expected = tokens.lengths.sum() / (8 * 2 * 96)
    assert pipeline.padding_efficiency(tokens, fixed) == pytest.approx(expected)
    bucketed = pipeline.plan_batches(tokens.row_lengths(), 4, (32, 64, 96))
    assert pipeline.padding_efficiency(tokens, bucketed) > expected


def test_swap_augmentation_exchanges_sides_and_labels(encoder):
    tokens = pipeline.tokenize(_texts(12), encoder, progress=False)
    labels = np.arange(12) % 3
    plan = pipeline.plan_batches(tokens.row_lengths(), 4, (32, 64, 96), True, 0, 0, swap=True)
    flips = np.concatenate([b.swap for b in plan])
    assert 0 < flips.sum() < len(flips)
    for (x, y, _), b in zip(pipeline.make_dataset(tokens, [plan], encoder.input_keys, labels),
                            plan, strict=True):  # fmt: skip
        ids = x["token_ids"].numpy()
        for i, (row, flip) in enumerate(zip(b.rows, b.swap, strict=True)):
            a, bb = (1, 0) if flip else (0, 1)
            np.testing.assert_array_equal(ids[i, 0], tokens.token_ids[row, a, : b.length])
            np.testing.assert_array_equal(ids[i, 1], tokens.token_ids[row, bb, : b.length])
            expected = pipeline.MIRROR[labels[row]] if flip else labels[row]
            assert y.numpy()[i].argmax() == expected


def test_swap_sides_exchanges_a_and_b(encoder):
    tokens = pipeline.tokenize(_texts(3), encoder, progress=False)
    swapped = pipeline.swap_sides(tokens)
    np.testing.assert_array_equal(swapped.token_ids[:, 0], tokens.token_ids[:, 1])
    np.testing.assert_array_equal(swapped.lengths[:, 1], tokens.lengths[:, 0])


def test_side_features_describe_each_side_and_follow_swaps(encoder):
    texts = _texts(6)
    texts["response_b"] = np.asarray(["# Title\n- a\n- b\n```x```"] * 6, dtype=object)
    tokens = pipeline.tokenize(texts, encoder, progress=False)
    extra = pipeline.side_features(texts, tokens)
    assert extra.shape == (6, 2, pipeline.NUM_SIDE_FEATURES) and extra.dtype == np.float32
    np.testing.assert_allclose(extra[:, :, -2], np.log1p(tokens.lengths))
    np.testing.assert_allclose(extra[:, :, -1], np.log1p(1))  # one user turn
    headers = text.SIDE_COUNTS.index("headers")
    assert (extra[:, 1, headers] == np.float32(np.log1p(1))).all() and (
        extra[:, 0, headers] == 0
    ).all()
    plan = pipeline.plan_batches(tokens.row_lengths(), 2, (32, 64, 96), True, 0, 0, swap=True)
    ds = pipeline.make_dataset(tokens, [plan], encoder.input_keys, np.zeros(6, int), extra=extra)
    for (x, _, _), b in zip(ds, plan, strict=True):
        for i, (row, flip) in enumerate(zip(b.rows, b.swap, strict=True)):
            expected = extra[row, ::-1] if flip else extra[row]
            np.testing.assert_array_equal(x[pipeline.SIDE_FEATURES].numpy()[i], expected)


def test_token_cache_is_keyed_on_the_format_version(tmp_path, monkeypatch, tiny_preset):
    """Tokens cached by code that truncated or formatted differently are never reused."""
    from jaxpref.models import backbones

    preprocessor = backbones.load_preprocessor(str(tiny_preset), 32)
    encoder = pipeline.PairEncoder(preprocessor, ("token_ids", "padding_mask"))
    texts = {k: np.asarray(["a question", "b"], dtype=object) for k in text.FEATURE_KEYS}
    pipeline.tokenize(texts, encoder, tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    pipeline.tokenize(texts, encoder, tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 1  # the same format: reused
    monkeypatch.setattr(pipeline, "TOKEN_FORMAT", pipeline.TOKEN_FORMAT + 1)
    pipeline.tokenize(texts, encoder, tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 2  # a new format: tokenized again


def test_split_plan_cuts_near_equal_periods_each_opening_with_the_shortest_length():
    """Keras trains each period as an epoch: each opens with the same shape while the plan has
    enough batches of it (4 of length 64 here), else with its own shortest."""
    buckets = pipeline.bucket_lengths(1024)
    lengths = np.random.default_rng(3).integers(10, 300, size=200)
    plan = pipeline.plan_batches(lengths, 8, buckets, shuffle=True)
    periods = pipeline.split_plan(plan, 3)
    assert [len(p) for p in periods] == [8, 9, 8]
    assert sorted(id(b) for p in periods for b in p) == sorted(id(b) for b in plan)
    assert [p[0].length for p in periods] == [64] * 3
    assert pipeline.split_plan(plan, 1) == [plan]
    long = pipeline.plan_batches(lengths * 3, 8, buckets, shuffle=True)
    assert all(p[0].length == min(b.length for b in p) for p in pipeline.split_plan(long, 3))
    with pytest.raises(ValueError):
        pipeline.split_plan(plan, 26)
