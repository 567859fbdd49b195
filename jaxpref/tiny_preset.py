"""Tiny, randomly initialised DeBERTa-v3 keras-hub presets for offline tests and benchmarks.

The preset directory holds a backbone, a SentencePiece tokenizer trained on the given texts and
a text-classifier preprocessor, so it loads through the same ``--preset DIR`` path as a real
checkpoint. Callers choose the Keras backend (``KERAS_BACKEND=jax``) before importing this.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
from collections.abc import Iterable, Iterator

import keras
import keras_hub
import pandas as pd
import sentencepiece as spm

# DebertaV3Tokenizer expects these pieces at these ids; "[MASK]" follows as a user symbol.
SPECIAL_PIECES = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 3}
MASK_PIECE = "[MASK]"
ARENA_TEXT_COLUMNS = ("prompt", "response_a", "response_b")
SAMPLE_TRAIN_CSV = pathlib.Path(__file__).parent / "sample_data" / "arena_train.csv"


def arena_texts(csv_path: str | os.PathLike, limit: int | None = None) -> list[str]:
    """Return every non-null turn of the prompt/response columns of an arena CSV.

    Each of those columns holds a JSON list of turns; ``limit`` caps the number of rows read.
    """
    df = pd.read_csv(csv_path, usecols=list(ARENA_TEXT_COLUMNS), nrows=limit)
    texts = []
    for column in ARENA_TEXT_COLUMNS:
        for cell in df[column]:
            turns = json.loads(cell) if isinstance(cell, str) else []
            texts.extend(t for t in turns if isinstance(t, str))
    return texts


def _lines(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        for line in text.splitlines():
            if line := line.strip():
                yield line


def train_sentencepiece(texts: Iterable[str], vocab_size: int = 1000, seed: int = 0) -> bytes:
    """Train a unigram SentencePiece model with DeBERTa-v3 special pieces; return the proto."""
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_lines(texts),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=0.9995,
        input_sentence_size=200_000,
        shuffle_input_sentence=True,
        num_threads=2,
        pad_id=SPECIAL_PIECES["[PAD]"],
        bos_id=SPECIAL_PIECES["[CLS]"],
        eos_id=SPECIAL_PIECES["[SEP]"],
        unk_id=SPECIAL_PIECES["[UNK]"],
        pad_piece="[PAD]",
        bos_piece="[CLS]",
        eos_piece="[SEP]",
        unk_piece="[UNK]",
        user_defined_symbols=[MASK_PIECE],
        minloglevel=2,
    )
    return model.getvalue()


def build_tiny_deberta_preset(
    out_dir: str | os.PathLike,
    texts: Iterable[str],
    *,
    vocab_size: int = 1000,
    num_layers: int = 2,
    num_heads: int = 2,
    hidden_dim: int = 64,
    intermediate_dim: int = 128,
    max_sequence_length: int = 512,
    seed: int = 0,
) -> pathlib.Path:
    """Save a randomly initialised DeBERTa-v3 backbone, tokenizer and preprocessor to ``out_dir``.

    The vocabulary is trained on ``texts``; ``hard_vocab_limit=False`` lets small corpora yield
    fewer than ``vocab_size`` pieces. The result loads with ``Backbone.from_preset(out_dir)``,
    ``Tokenizer.from_preset(out_dir)`` and ``TextClassifierPreprocessor.from_preset(out_dir)``.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = keras_hub.models.DebertaV3Tokenizer(
        proto=train_sentencepiece(texts, vocab_size, seed)
    )
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.DebertaV3Backbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        max_sequence_length=max_sequence_length,
        bucket_size=max_sequence_length // 2,
    )
    preprocessor = keras_hub.models.DebertaV3TextClassifierPreprocessor(
        tokenizer, sequence_length=max_sequence_length
    )
    backbone.save_to_preset(out)
    tokenizer.save_to_preset(out)
    preprocessor.save_to_preset(out)
    return out
