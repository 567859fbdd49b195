"""The tiny presets the tests train: tokenizers learnt from the sample, models that load and run
in plain keras-hub, and the same weights from the same seed."""

import keras_hub
import numpy as np
import pytest
from reference_run import TINY_DEBERTA

from jaxpref.data import arena
from jaxpref.models.families import FAMILIES
from jaxpref.models.tiny_preset import SPECIAL_PIECES, arena_texts, build_tiny_deberta_preset

HIDDEN_DIM = TINY_DEBERTA["hidden_dim"]
SEQ_LEN = 24


@pytest.fixture(scope="module")
def preset_dir(tiny_preset):
    """The session's tiny DeBERTa-v3 preset (conftest: TINY_DEBERTA, arena sample texts)."""
    return tiny_preset


def test_tokenizer_special_tokens(preset_dir):
    tokenizer = keras_hub.models.Tokenizer.from_preset(str(preset_dir))
    assert isinstance(tokenizer, keras_hub.models.DebertaV3Tokenizer)
    for piece, index in SPECIAL_PIECES.items():
        assert tokenizer.id_to_token(index) == piece
    assert tokenizer.token_to_id("[MASK]") == tokenizer.mask_token_id
    assert tokenizer.get_vocabulary()[tokenizer.mask_token_id] == "[MASK]"
    assert tokenizer.vocabulary_size() <= TINY_DEBERTA["vocab_size"] + 1


def test_load_and_run(preset_dir):
    backbone = keras_hub.models.Backbone.from_preset(str(preset_dir))
    tokenizer = keras_hub.models.Tokenizer.from_preset(str(preset_dir))
    assert isinstance(backbone, keras_hub.models.DebertaV3Backbone)
    assert backbone.vocabulary_size == tokenizer.vocabulary_size()
    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
        str(preset_dir), sequence_length=SEQ_LEN
    )
    x = preprocessor(x=(["a prompt", "write a poem"], ["a response", "the model answer"]))
    assert x["token_ids"].shape == (2, SEQ_LEN)
    assert x["padding_mask"].shape == (2, SEQ_LEN)
    token_ids = np.asarray(x["token_ids"])
    assert (token_ids[:, 0] == SPECIAL_PIECES["[CLS]"]).all()
    assert (token_ids[~np.asarray(x["padding_mask"], bool)] == SPECIAL_PIECES["[PAD]"]).all()
    out = np.asarray(backbone(x))
    assert out.shape == (2, SEQ_LEN, HIDDEN_DIM)
    assert np.isfinite(out).all()


def test_same_seed_same_weights(preset_dir, tmp_path):
    first = keras_hub.models.Backbone.from_preset(str(preset_dir)).get_weights()
    again = build_tiny_deberta_preset(
        tmp_path / "again", arena_texts(arena.DEFAULT_TRAIN_CSV), **TINY_DEBERTA
    )
    second = keras_hub.models.Backbone.from_preset(str(again)).get_weights()
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    vocab = (preset_dir / "assets" / "tokenizer" / "vocabulary.spm").read_bytes()
    assert (tmp_path / "again" / "assets" / "tokenizer" / "vocabulary.spm").read_bytes() == vocab


DECODER_SPECIALS = {  # family -> (start token, end token) its keras-hub tokenizer uses
    "gemma": ("<bos>", "<eos>"),
    "gemma2": ("<bos>", "<eos>"),
    "mistral": ("<s>", "</s>"),
    "llama3": ("<|begin_of_text|>", "<|end_of_text|>"),
    "qwen2": (None, "<|endoftext|>"),
    "qwen3": (None, "<|im_end|>"),
}


@pytest.mark.parametrize("family", list(DECODER_SPECIALS))
def test_decoder_preset(decoder_presets, family):
    path = decoder_presets[family]
    backbone = keras_hub.models.Backbone.from_preset(str(path))
    tokenizer = keras_hub.models.Tokenizer.from_preset(str(path))
    assert type(backbone).__name__ == FAMILIES[family].backbone_class
    assert backbone.vocabulary_size == tokenizer.vocabulary_size() <= 410
    assert (tokenizer.start_token, tokenizer.end_token) == DECODER_SPECIALS[family]
    end = tokenizer.end_token_id
    assert tokenizer.id_to_token(end) == tokenizer.end_token
    text = "Write a short poem about the second test."
    ids = tokenizer(text)
    assert len(ids) < len(text) * 2 / 3  # merges/pieces were learnt from the texts
    assert tokenizer.detokenize(ids) == text
    preprocessor = keras_hub.models.CausalLMPreprocessor.from_preset(
        str(path), sequence_length=SEQ_LEN
    )
    x, _, _ = preprocessor([text, "why"])
    token_ids, mask = np.asarray(x["token_ids"]), np.asarray(x["padding_mask"], bool)
    assert token_ids.shape == (2, SEQ_LEN) and mask[1].sum() < mask[0].sum()
    assert token_ids[1, mask[1].sum() - 1] == end  # the last real token of a short row
    out = np.asarray(backbone(x))
    assert out.shape == (2, SEQ_LEN, HIDDEN_DIM) and np.isfinite(out).all()
