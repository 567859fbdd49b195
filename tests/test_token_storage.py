"""Tokens are stored ragged (no padding) yet read back exactly as the packer padded them; the
cache is keyed by texts, packing and format."""

import tracemalloc

import numpy as np
import pytest
import tensorflow as tf
from conftest import pair_texts

from jaxpref.data import arena, text
from jaxpref.inputs import packers, token_store
from jaxpref.inputs.featurize import tokenize
from jaxpref.inputs.packers import CONVERSATION, PART_IDS
from jaxpref.models import backbones

LENGTH = 96


@pytest.fixture(scope="module")
def packer(tiny_preset):
    preprocessor = backbones.load_preprocessor(str(tiny_preset), LENGTH)
    return packers.PairPacker(preprocessor, ("token_ids", "padding_mask", "segment_ids"))


@pytest.fixture(scope="module")
def texts():
    """12 arena rows, most longer than LENGTH; the last three short, one with empty texts."""
    frame = arena.read_arena_csv(arena.DEFAULT_TRAIN_CSV, labelled=True).iloc[:12]
    pairs = text.format_pairs(frame)
    for key in text.FEATURE_KEYS:
        pairs[key][9:] = ["a short reply", "", f"{key} and some more"]
    return pairs


@pytest.fixture(scope="module")
def tokens(packer, texts):
    return tokenize(texts, packer, progress=False)


def test_ragged_tokens_pad_back_to_the_packers_arrays(packer, texts, tokens):
    columns = {key: tf.constant(list(texts[key])) for key in text.FEATURE_KEYS}
    padded = next(tf.data.Dataset.from_tensors(columns).map(packer).as_numpy_iterator())
    np.testing.assert_array_equal(tokens.token_ids, padded["token_ids"])
    np.testing.assert_array_equal(tokens.part_ids, padded["part_ids"])
    np.testing.assert_array_equal(tokens.lengths, padded["lengths"])
    assert tokens.token_ids.dtype == np.int32 and tokens.part_ids.dtype == np.int8
    assert tokens.values.shape == (tokens.lengths.sum(),)  # no padding stored
    assert tokens.lengths.max() == LENGTH and tokens.lengths.min() == 3  # [CLS] [SEP] [SEP]


def test_batches_rows_and_swapped_sides_read_the_shared_tokens(tokens):
    rows = np.array([3, 0, 5, 11])
    pick = (rows[:, None], np.array([[1, 0], [0, 1], [1, 0], [0, 1]]))
    for length in (8, 40, LENGTH):
        expected = tokens.token_ids[pick][..., :length]
        np.testing.assert_array_equal(tokens.padded_ids(pick, length), expected)
        expected = tokens.part_ids[pick][..., :length]
        np.testing.assert_array_equal(tokens.padded_parts(pick, length), expected)
    swapped = token_store.swap_sides(tokens.take(rows))
    assert np.shares_memory(swapped.values, tokens.values)
    np.testing.assert_array_equal(swapped.token_ids, tokens.token_ids[rows][:, ::-1])
    np.testing.assert_array_equal(swapped.lengths, tokens.lengths[rows][:, ::-1])


def test_cache_file_holds_ragged_tokens_under_a_versioned_name(packer, texts, tokens, tmp_path):
    first = tokenize(texts, packer, tmp_path, progress=False)
    (cache,) = tmp_path.glob("*.npz")
    assert cache.name.startswith(f"v{token_store.TOKEN_FORMAT}-")
    with np.load(cache) as saved:
        assert saved["values"].shape == (tokens.lengths.sum(),)
        assert saved["segments"].shape == (tokens.lengths.sum(),)  # format 3's name for parts
    again = tokenize(texts, packer, tmp_path, progress=False)
    assert (again.sequence_length, again.pad_id) == (first.sequence_length, first.pad_id)
    np.testing.assert_array_equal(again.token_ids, tokens.token_ids)
    np.testing.assert_array_equal(again.part_ids, tokens.part_ids)


def test_tokenize_cache_round_trips_and_is_keyed_by_text(packer, tmp_path):
    texts = pair_texts(4)
    first = tokenize(texts, packer, tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    again = tokenize(texts, packer, tmp_path, progress=False)
    np.testing.assert_array_equal(first.token_ids, again.token_ids)
    changed = {**texts, "response_b": texts["response_b"][::-1].copy()}
    tokenize(changed, packer, tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_token_cache_is_keyed_on_the_format_version(tmp_path, monkeypatch, tiny_preset):
    """Tokens cached by code that truncated or formatted differently are never reused."""
    preprocessor = backbones.load_preprocessor(str(tiny_preset), 32)
    packer = packers.PairPacker(preprocessor, ("token_ids", "padding_mask"))
    texts = {k: np.asarray(["a question", "b"], dtype=object) for k in text.FEATURE_KEYS}
    tokenize(texts, packer, tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    tokenize(texts, packer, tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 1  # the same format: reused
    monkeypatch.setattr(token_store, "TOKEN_FORMAT", token_store.TOKEN_FORMAT + 1)
    tokenize(texts, packer, tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 2  # a new format: tokenized again


def test_cross_encoded_orders_are_stored_ragged_and_batched_as_the_packer_padded_them(packer):
    keys = ("token_ids", "padding_mask", "segment_ids", PART_IDS)
    cross = packers.CrossPacker(packer.preprocessor.tokenizer, LENGTH, keys)
    frame = arena.read_arena_csv(arena.DEFAULT_TRAIN_CSV, labelled=True).iloc[:6]
    texts = cross.texts(frame)
    tokens = tokenize(texts, cross, progress=False)
    columns = {key: tf.constant(list(texts[key])) for key in text.CROSS_KEYS}
    padded = next(tf.data.Dataset.from_tensors(columns).map(cross).as_numpy_iterator())
    np.testing.assert_array_equal(tokens.token_ids, padded["token_ids"])
    np.testing.assert_array_equal(tokens.part_ids, padded["part_ids"])
    assert tokens.values.shape == (tokens.lengths.sum(),)
    rows, orders, length = np.array([4, 1, 2]), np.array([1, 0, 1]), 40
    sides = np.stack([orders, 1 - orders], axis=1)  # a row fed swapped reads its order 1
    x = cross.batch_inputs(tokens, rows, sides, length)
    parts = padded["part_ids"][rows, orders, :length]
    np.testing.assert_array_equal(x["token_ids"], padded["token_ids"][rows, orders, :length])
    np.testing.assert_array_equal(x[PART_IDS], parts)
    np.testing.assert_array_equal(x["segment_ids"], parts > CONVERSATION)
    np.testing.assert_array_equal(x["padding_mask"], parts > 0)
    assert all(v.shape == (3, length) and v.dtype == np.int32 for v in x.values())


def test_one_long_text_does_not_widen_every_row(packer):
    """A NumPy string array of the texts would be rows x longest text x 4 bytes (320 MB here)."""
    rows = 400
    texts = {key: np.asarray(["a short text"] * rows, dtype=object) for key in text.FEATURE_KEYS}
    texts["context_a"][0] = "word " * 40_000
    tracemalloc.start()
    try:
        tokens = tokenize(texts, packer, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20
    assert tokens.lengths[0, 0] == LENGTH and (tokens.lengths[1:] < LENGTH // 2).all()
