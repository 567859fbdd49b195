"""Tiny, randomly initialised keras-hub presets for offline tests and benchmarks.

`build_tiny_deberta_preset` makes a DeBERTa-v3 encoder; `build_tiny_decoder_preset` makes a
decoder of any family in `families` (Gemma/Gemma-2, Llama-3, Mistral, Qwen-2, Qwen-3).
Each directory holds a backbone, a tokenizer trained on the given texts (SentencePiece, or a
byte-level BPE like the real Llama-3/Qwen ones) with the special tokens its keras-hub tokenizer
requires, and a preprocessor, so it loads through the same `--preset DIR` path as a real
checkpoint. Callers choose the Keras backend (``KERAS_BACKEND=jax``) before importing this.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import pathlib
from collections.abc import Iterable, Iterator, Mapping

import keras
import keras_hub
import pandas as pd
import sentencepiece as spm

from jaxpref.data import arena
from jaxpref.models.families import FAMILIES

# SentencePiece roles (piece, id). DebertaV3Tokenizer expects these; "[MASK]" follows.
DEBERTA_ROLES = {"pad": ("[PAD]", 0), "bos": ("[CLS]", 1), "eos": ("[SEP]", 2), "unk": ("[UNK]", 3)}
SPECIAL_PIECES = dict(DEBERTA_ROLES.values())
MASK_PIECE = "[MASK]"
GEMMA_ROLES = {"pad": ("<pad>", 0), "eos": ("<eos>", 1), "bos": ("<bos>", 2), "unk": ("<unk>", 3)}
MISTRAL_ROLES = {"unk": ("<unk>", 0), "bos": ("<s>", 1), "eos": ("</s>", 2)}
# Byte-level BPE special tokens, appended after the merges' vocabulary as in the real models.
LLAMA3_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
DECODER_TOKENIZERS = {
    "gemma": ("sentencepiece", GEMMA_ROLES, ("<start_of_turn>", "<end_of_turn>")),
    "gemma2": ("sentencepiece", GEMMA_ROLES, ("<start_of_turn>", "<end_of_turn>")),
    "mistral": ("sentencepiece", MISTRAL_ROLES, ()),
    "llama3": ("bpe", None, LLAMA3_SPECIALS),
    "qwen2": ("bpe", None, QWEN_SPECIALS),
    "qwen3": ("bpe", None, QWEN_SPECIALS),
}
# Constructor options that make a family's tiny backbone exercise its distinctive layers.
DECODER_OPTIONS = {
    "gemma2": dict(
        use_post_ffw_norm=True,
        use_post_attention_norm=True,
        final_logit_soft_cap=30.0,
        attention_logit_soft_cap=50.0,
        use_sliding_window_attention=True,
        sliding_window_size=16,
    ),
    "mistral": dict(sliding_window=16),
    "qwen3": dict(sliding_window_size=16),
}


def arena_texts(csv_path: str | os.PathLike, limit: int | None = None) -> list[str]:
    """Return every non-null turn of the prompt/response columns of an arena CSV.

    Each of those columns holds a JSON list of turns; ``limit`` caps the number of rows read.
    """
    df = pd.read_csv(csv_path, usecols=list(arena.TEXT_COLUMNS), nrows=limit)
    texts = []
    for column in arena.TEXT_COLUMNS:
        for cell in df[column]:
            turns = json.loads(cell) if isinstance(cell, str) else []
            texts.extend(t for t in turns if isinstance(t, str))
    return texts


def _lines(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        for line in text.splitlines():
            if line := line.strip():
                yield line


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int = 1000,
    seed: int = 0,
    roles: Mapping[str, tuple[str, int]] = DEBERTA_ROLES,
    user_symbols: Iterable[str] = (MASK_PIECE,),
) -> bytes:
    """Train a unigram SentencePiece model; return the proto.

    `roles` maps "pad"/"bos"/"eos"/"unk" to (piece, id); a missing role is disabled. The
    defaults are DeBERTa-v3's pieces.
    """
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    ids = {f"{role}_id": roles[role][1] if role in roles else -1 for role in ("pad", "bos", "eos")}
    pieces = {f"{role}_piece": piece for role, (piece, _) in roles.items()}
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
        unk_id=roles["unk"][1],
        **ids,
        **pieces,
        user_defined_symbols=list(user_symbols),
        minloglevel=2,
    )
    return model.getvalue()


def train_byte_bpe(
    texts: Iterable[str], vocab_size: int, special_tokens: Iterable[str]
) -> tuple[dict[str, int], list[str]]:
    """A GPT-2-style byte-level BPE vocabulary and merges, the special tokens appended last.

    All 256 byte symbols are in the vocabulary, so any text encodes. Trained with the
    `tokenizers` package (a keras-hub dependency), deterministically.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_lines(texts), trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab = dict(model["vocab"])
    for token in special_tokens:
        vocab[token] = len(vocab)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return vocab, merges


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
    return save_preset(out_dir, backbone, tokenizer, preprocessor)


def save_preset(out_dir: str | os.PathLike, *parts) -> pathlib.Path:
    """Save a backbone, tokenizer, preprocessor... into one keras-hub preset directory."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for part in parts:
        part.save_to_preset(out)
    return out


def decoder_tokenizer(family: str, texts: Iterable[str], vocab_size: int, seed: int = 0):
    """The keras-hub tokenizer of a decoder `family`, its vocabulary trained on `texts`."""
    if family not in DECODER_TOKENIZERS:
        raise ValueError(f"family {family!r}: choose one of {', '.join(DECODER_TOKENIZERS)}")
    tokenizer_cls = getattr(keras_hub.models, f"{FAMILIES[family].class_prefix}Tokenizer")
    kind, roles, specials = DECODER_TOKENIZERS[family]
    if kind == "sentencepiece":
        proto = train_sentencepiece(texts, vocab_size, seed, roles, user_symbols=specials)
        return tokenizer_cls(proto=proto)
    vocab, merges = train_byte_bpe(texts, vocab_size, specials)
    return tokenizer_cls(vocabulary=vocab, merges=merges)


def build_tiny_decoder_preset(
    out_dir: str | os.PathLike,
    family: str,
    texts: Iterable[str],
    *,
    vocab_size: int = 500,
    num_layers: int = 2,
    num_query_heads: int = 4,
    num_key_value_heads: int = 2,
    hidden_dim: int = 32,
    intermediate_dim: int = 64,
    sequence_length: int = 128,
    seed: int = 0,
) -> pathlib.Path:
    """Save a random decoder backbone, tokenizer and CausalLM preprocessor of `family`.

    `family` is a key of `jaxpref.models.families.FAMILIES`; `intermediate_dim` is the width of one
    MLP branch (Hugging Face's intermediate_size). The result loads with
    `Backbone.from_preset`, `Tokenizer.from_preset` and `CausalLMPreprocessor.from_preset`.
    """
    tokenizer = decoder_tokenizer(family, texts, vocab_size, seed)
    spec = FAMILIES[family]
    keras.utils.set_random_seed(seed)
    backbone_cls = getattr(keras_hub.models, spec.backbone_class)
    if "head_dim" in inspect.signature(backbone_cls).parameters:  # Gemma, Qwen-3
        options = {"head_dim": hidden_dim // num_query_heads}
    else:
        options = {}
    backbone = backbone_cls(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=num_layers,
        num_query_heads=num_query_heads,
        num_key_value_heads=num_key_value_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim * spec.mlp_split,
        **options,
        **DECODER_OPTIONS.get(family, {}),
    )
    preprocessor = getattr(keras_hub.models, f"{spec.class_prefix}CausalLMPreprocessor")(
        tokenizer, sequence_length=sequence_length
    )
    return save_preset(out_dir, backbone, tokenizer, preprocessor)
