"""Tokens are stored ragged (no padding) yet read back exactly as the encoder padded them."""

import tracemalloc

import numpy as np
import pytest
import tensorflow as tf

from jaxpref.data import arena, text
from jaxpref.inputs import pipeline
from jaxpref.models import backbones

LENGTH = 96


@pytest.fixture(scope="module")
def encoder(tiny_preset):
    preprocessor = backbones.load_preprocessor(str(tiny_preset), LENGTH)
    return pipeline.PairEncoder(preprocessor, ("token_ids", "padding_mask", "segment_ids"))


@pytest.fixture(scope="module")
def texts():
    """12 arena rows, most longer than LENGTH; the last three short, one with empty texts."""
    frame = arena.read_arena_csv(arena.DEFAULT_TRAIN_CSV, labelled=True).iloc[:12]
    pairs = text.format_pairs(frame)
    for key in text.FEATURE_KEYS:
        pairs[key][9:] = ["a short reply", "", f"{key} and some more"]
    return pairs


@pytest.fixture(scope="module")
def tokens(encoder, texts):
    return pipeline.tokenize(texts, encoder, progress=False)


def test_ragged_tokens_pad_back_to_the_encoders_arrays(encoder, texts, tokens):
    columns = {key: tf.constant(list(texts[key])) for key in text.FEATURE_KEYS}
    padded = next(tf.data.Dataset.from_tensors(columns).map(encoder).as_numpy_iterator())
    np.testing.assert_array_equal(tokens.token_ids, padded["token_ids"])
    np.testing.assert_array_equal(tokens.segment_ids, padded["segment_ids"])
    np.testing.assert_array_equal(tokens.lengths, padded["lengths"])
    assert tokens.token_ids.dtype == np.int32 and tokens.segment_ids.dtype == np.int8
    assert tokens.values.shape == (tokens.lengths.sum(),)  # no padding stored
    assert tokens.lengths.max() == LENGTH and tokens.lengths.min() == 3  # [CLS] [SEP] [SEP]


def test_batches_rows_and_swapped_sides_read_the_shared_tokens(tokens):
    rows = np.array([3, 0, 5, 11])
    pick = (rows[:, None], np.array([[1, 0], [0, 1], [1, 0], [0, 1]]))
    for length in (8, 40, LENGTH):
        expected = tokens.token_ids[pick][..., :length]
        np.testing.assert_array_equal(tokens.padded_ids(pick, length), expected)
        expected = tokens.segment_ids[pick][..., :length]
        np.testing.assert_array_equal(tokens.padded_segments(pick, length), expected)
    swapped = pipeline.swap_sides(tokens.take(rows))
    assert np.shares_memory(swapped.values, tokens.values)
    np.testing.assert_array_equal(swapped.token_ids, tokens.token_ids[rows][:, ::-1])
    np.testing.assert_array_equal(swapped.lengths, tokens.lengths[rows][:, ::-1])


def test_cache_file_holds_ragged_tokens_under_a_versioned_name(encoder, texts, tokens, tmp_path):
    first = pipeline.tokenize(texts, encoder, tmp_path, progress=False)
    (cache,) = tmp_path.glob("*.npz")
    assert cache.name.startswith(f"v{pipeline.TOKEN_FORMAT}-")
    with np.load(cache) as saved:
        assert saved["values"].shape == (tokens.lengths.sum(),)
    again = pipeline.tokenize(texts, encoder, tmp_path, progress=False)
    assert (again.sequence_length, again.pad_id) == (first.sequence_length, first.pad_id)
    np.testing.assert_array_equal(again.token_ids, tokens.token_ids)
    np.testing.assert_array_equal(again.segment_ids, tokens.segment_ids)


def test_cross_encoded_orders_are_stored_ragged_and_batched_as_the_encoder_padded_them(encoder):
    cross = pipeline.CrossEncoder(encoder.preprocessor.tokenizer, LENGTH, ("token_ids",))
    frame = arena.read_arena_csv(arena.DEFAULT_TRAIN_CSV, labelled=True).iloc[:6]
    texts = cross.texts(frame)
    tokens = pipeline.tokenize(texts, cross, progress=False)
    columns = {key: tf.constant(list(texts[key])) for key in text.CROSS_KEYS}
    padded = next(tf.data.Dataset.from_tensors(columns).map(cross).as_numpy_iterator())
    np.testing.assert_array_equal(tokens.token_ids, padded["token_ids"])
    np.testing.assert_array_equal(tokens.segment_ids, padded["segment_ids"])
    assert tokens.values.shape == (tokens.lengths.sum(),)
    rows, orders, length = np.array([4, 1, 2]), np.array([1, 0, 1]), 40
    keys = ("token_ids", "padding_mask", "segment_ids", pipeline.PART_IDS)
    x = pipeline.batch_features(tokens, (rows, orders), length, keys, pipeline.CROSS)
    parts = padded["segment_ids"][rows, orders, :length]
    np.testing.assert_array_equal(x["token_ids"], padded["token_ids"][rows, orders, :length])
    np.testing.assert_array_equal(x[pipeline.PART_IDS], parts)
    np.testing.assert_array_equal(x["segment_ids"], parts > pipeline.CONVERSATION)
    np.testing.assert_array_equal(x["padding_mask"], parts > 0)
    assert all(v.shape == (3, length) and v.dtype == np.int32 for v in x.values())


def test_one_long_text_does_not_widen_every_row(encoder):
    """A NumPy string array of the texts would be rows x longest text x 4 bytes (320 MB here)."""
    rows = 400
    texts = {key: np.asarray(["a short text"] * rows, dtype=object) for key in text.FEATURE_KEYS}
    texts["context_a"][0] = "word " * 40_000
    tracemalloc.start()
    try:
        tokens = pipeline.tokenize(texts, encoder, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20
    assert tokens.lengths[0, 0] == LENGTH and (tokens.lengths[1:] < LENGTH // 2).all()
