"""Tiny seeded reward models (keras-hub backbone + `Dense(1, name="reward")`) for the
transformers export: the same bytes on every machine, so an export's files hash the same.

Every weight is drawn by numpy from `SEED` (not by Keras' initializers), the vocabularies are
fixed: DeBERTa-v3 reads tests/fixtures/hf_deberta_v3_tiny/spm.model, the decoders a byte-level
BPE of the 256 byte symbols, `MERGES` and the family's special tokens, built here, no training.
`tests/fixtures/make_hf_export_fixture.py` records transformers' scores of these models;
`tests/test_hf_export.py` compares jaxpref's rewards with them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"
SPM_MODEL = FIXTURES / "hf_deberta_v3_tiny" / "spm.model"
SEED = 0
MODELS = ("deberta_v3", "llama3", "qwen2")
MERGES = ("Ġ t", "h e", "i n", "Ġ a", "e r", "o n", "Ġt he", "r e", "a n", "Ġ s", "o u", "Ġ w")
# one text per length class the scores must cover; the long one passes DeBERTa's 128 exact
# relative positions (log buckets beyond)
TEXTS = (
    "Hi!",
    "What is the capital of France?",
    "The answer is Paris, the capital and largest city of France.",
    "Ünïcödé, emoji 🍍 and digits 12345 survive the byte-level vocabulary.",
    "Say <|endoftext|> or [SEP] literally.",
    "\n\nTwo blank lines, then    four spaces.",
    "Water boils at 100 degrees Celsius at sea level; at altitude it boils at less. " * 2,
    " ".join(f"word{i % 50} is the answer" for i in range(30)),
)
PAIR = (1, 2)  # DeBERTa also scores TEXTS[1] and TEXTS[2] as one [CLS] a [SEP] b [SEP] pair


def seeded_weights(layer, rng: np.random.Generator) -> None:
    """Assign every variable of `layer`, in path order: norms near 1, the rest near 0."""
    for variable in sorted(layer.weights, key=lambda v: v.path):
        scale = variable.path.endswith(("/gamma", "/scale"))
        value = (1.0 if scale else 0.0) + 0.2 * rng.standard_normal(tuple(variable.shape))
        variable.assign(value.astype(np.float32))


def byte_level_vocabulary(specials: tuple[str, ...]) -> dict[str, int]:
    """The 256 byte symbols, then each merge's result, then `specials`."""
    from tokenizers import pre_tokenizers

    tokens = sorted(pre_tokenizers.ByteLevel.alphabet()) + [m.replace(" ", "") for m in MERGES]
    return {token: i for i, token in enumerate([*tokens, *specials])}


def tokenizer_of(name: str):
    import keras_hub

    from jaxpref.models.tiny_preset import LLAMA3_SPECIALS, QWEN_SPECIALS

    if name == "deberta_v3":
        return keras_hub.models.DebertaV3Tokenizer(proto=str(SPM_MODEL))
    specials, cls = {
        "llama3": (LLAMA3_SPECIALS, keras_hub.models.Llama3Tokenizer),
        "qwen2": (QWEN_SPECIALS, keras_hub.models.QwenTokenizer),
    }[name]
    return cls(vocabulary=byte_level_vocabulary(specials), merges=list(MERGES))


def backbone_of(name: str, vocabulary_size: int, **options):
    """A 2-layer backbone of width 32 (`options`: more constructor arguments)."""
    import keras_hub

    sizes = dict(vocabulary_size=vocabulary_size, num_layers=2, hidden_dim=32, intermediate_dim=64)
    sizes |= options
    if name == "deberta_v3":
        return keras_hub.models.DebertaV3Backbone(
            num_heads=2, max_sequence_length=512, bucket_size=256, **sizes
        )
    cls = {"llama3": keras_hub.models.Llama3Backbone, "qwen2": keras_hub.models.QwenBackbone}
    return cls[name](num_query_heads=4, num_key_value_heads=2, **sizes)


def reward_model(name: str, preset_dir: Path, dtype: str | None = None, **options):
    """(backbone, reward layer) of `name`, seeded, in `dtype` (default: Keras' policy); its
    backbone and tokenizer saved to `preset_dir` as a keras-hub preset."""
    import keras

    tokenizer = tokenizer_of(name)
    backbone = backbone_of(name, tokenizer.vocabulary_size(), dtype=dtype, **options)
    reward = keras.layers.Dense(1, name="reward", use_bias=name == "deberta_v3", dtype=dtype)
    reward.build((None, backbone.hidden_dim))
    rng = np.random.default_rng(SEED)
    seeded_weights(backbone, rng)
    seeded_weights(reward, rng)
    preset_dir.mkdir(parents=True, exist_ok=True)
    backbone.save_to_preset(str(preset_dir))
    tokenizer.save_to_preset(str(preset_dir))
    return backbone, reward


def token_sequences(name: str) -> list[list[int]]:
    """What the scores are compared on: each of TEXTS as the model reads one side (DeBERTa:
    [CLS] text [SEP]; Llama-3: its begin-of-text token first), and DeBERTa's PAIR."""
    tokenizer = tokenizer_of(name)
    ids = [np.asarray(tokenizer(text)).tolist() for text in TEXTS]
    if name == "deberta_v3":
        cls, sep = tokenizer.start_token_id, tokenizer.end_token_id
        first, second = (ids[i] for i in PAIR)
        return [[cls, *row, sep] for row in ids] + [[cls, *first, sep, *second, sep]]
    start = [tokenizer.start_token_id] if tokenizer.start_token_id is not None else []
    return [start + row for row in ids]


def padded(sequences: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, padding mask), both (N, longest), right-padded with `pad_id`."""
    longest = max(len(row) for row in sequences)
    ids = np.full((len(sequences), longest), pad_id, np.int32)
    mask = np.zeros_like(ids)
    for i, row in enumerate(sequences):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return ids, mask


def rewards(name: str, backbone, reward, sequences: list[list[int]]) -> np.ndarray:
    """jaxpref's reward of each sequence: the reward layer on the pooled state (encoders: the
    first token; decoders: the last real token), batched with padding."""
    ids, mask = padded(sequences, 0)
    hidden = np.asarray(backbone({"token_ids": ids, "padding_mask": mask}))
    last = mask.sum(axis=1) - 1
    pooled = hidden[:, 0] if name == "deberta_v3" else hidden[np.arange(len(ids)), last]
    return np.asarray(reward(pooled))[:, 0]


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file in `directory`, by name."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }
