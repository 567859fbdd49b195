"""Packing texts into tokens: truncation keeps what decides the vote, and a pair's sides carry
the preset's special tokens."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import pair_texts

from jaxpref.data import text
from jaxpref.inputs import packers
from jaxpref.inputs.featurize import tokenize
from jaxpref.models import backbones


def test_truncate_pair_keeps_context_end_and_response_start():
    context = tf.ragged.constant([list(range(10)), [1, 2], list(range(20))])
    response = tf.ragged.constant([[100, 101], list(range(100, 120)), list(range(100, 120))])
    c, r = packers.truncate_pair(context, response, 8)
    assert c.to_list() == [[4, 5, 6, 7, 8, 9], [1, 2], [16, 17, 18, 19]]
    assert r.to_list() == [[100, 101], list(range(100, 106)), [100, 101, 102, 103]]


def test_truncate_pair_leaves_short_pairs_alone():
    context = tf.ragged.constant([[1, 2, 3]])
    response = tf.ragged.constant([[4, 5]])
    c, r = packers.truncate_pair(context, response, 10)
    assert c.to_list() == [[1, 2, 3]] and r.to_list() == [[4, 5]]


@pytest.fixture(scope="module")
def packer(tiny_preset):
    preprocessor = backbones.load_preprocessor(str(tiny_preset), 96)
    return packers.PairPacker(preprocessor, ("token_ids", "padding_mask"))


def test_tokenize_shapes_lengths_and_special_tokens(packer):
    tokens = tokenize(pair_texts(5), packer, progress=False)
    assert tokens.token_ids.shape == (5, 2, 96) and tokens.lengths.shape == (5, 2)
    tokenizer = packer.preprocessor.tokenizer
    for row in range(5):
        for side in range(2):
            n = tokens.lengths[row, side]
            real = tokens.token_ids[row, side, :n]
            assert real[0] == tokenizer.cls_token_id and real[-1] == tokenizer.sep_token_id
            assert (real == tokenizer.sep_token_id).sum() == 2
            assert (tokens.token_ids[row, side, n:] == tokenizer.pad_token_id).all()


def test_long_context_keeps_its_last_tokens(packer):
    texts = {key: np.asarray(["short"], dtype=object) for key in text.FEATURE_KEYS}
    long = " ".join(f"w{i}" for i in range(300)) + " omega"
    texts["context_a"] = np.asarray([long], dtype=object)
    tokens = tokenize(texts, packer, progress=False)
    ids = tokens.token_ids[0, 0]
    assert tokens.lengths[0, 0] == 96  # the budget is used up
    tokenizer = packer.preprocessor.tokenizer
    full = np.asarray(tokenizer(long)).tolist()
    first_sep = ids.tolist().index(tokenizer.sep_token_id)
    assert ids[1:first_sep].tolist() == full[-(first_sep - 1) :]
