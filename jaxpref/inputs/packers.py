"""Packers: a row's texts -> token sequences, truncated to fit, in one input layout of the model.

A packer is what ties a model to its inputs: `PairPacker` packs each side of a pair apart
(context and response, with the preset's own preprocessor) for a siamese model, and
`DecoderPairPacker` does so with a decoder LLM's tokenizer (a siamese reward model); `CrossPacker`
packs conversation and both responses into one sequence, in both orders, for a cross-encoder.
Either stores a row as two token sequences (`token_store.TokenizedPairs`) and knows how a
batch reads them back as the model's inputs (`batch_inputs`), so nothing else asks which
layout a model has. `pack_rows` runs a packer over every row once, in a parallel tf.data map.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from collections.abc import Iterator, Sequence

import numpy as np

from jaxpref import monitoring
from jaxpref.config import ConfigError
from jaxpref.data.text import CROSS_KEYS, FEATURE_KEYS, SIDES, format_cross, format_pairs
from jaxpref.inputs.token_store import SideIndex, TokenizedPairs

TOKENIZE_CHUNK = 256  # rows per call of a packer in `pack_rows`
PART_IDS = "part_ids"  # the cross-encoder's input naming each token's part
CONVERSATION, FIRST, SECOND = 1, 2, 3  # part ids of a cross-encoded sequence (0: padding)
MIN_TEXT_TOKENS = 16  # of a packed sequence (cross-encoded, or a decoder side), after its tags
RESPONSE_SEPARATOR = "\nAssistant: "  # between a decoder side's context and its response


class Packer(abc.ABC):
    """Packs rows' texts into two token sequences per row, and reads them back as model inputs.

    Besides the methods, a packer has `input_keys` (the integer inputs of its model),
    `sequence_length`, `pad_id`, `text_keys` (the text columns `texts` makes and `__call__`
    reads), `sequences_per_pair` (sequences the backbone reads for one row) and
    `batch_shape` (the shape of each integer input of a batch; None: any size).
    """

    input_keys: tuple[str, ...]
    sequence_length: int
    text_keys: tuple[str, ...]
    sequences_per_pair: int
    batch_shape: tuple[int | None, ...]

    @abc.abstractmethod
    def texts(self, frame) -> dict[str, np.ndarray]:
        """The text columns this packer reads, from an arena frame."""

    @abc.abstractmethod
    def __call__(self, texts: dict) -> dict:
        """Strings (N,) per text key -> token_ids / part_ids (N, 2, L), lengths (N, 2) (tf)."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Identifies the packing: equal fingerprints pack equal texts to equal tokens."""

    @abc.abstractmethod
    def save(self, preset_dir: str) -> None:
        """Write what rebuilds this packer into a keras-hub preset directory."""

    @abc.abstractmethod
    def fed_sides(self, rows: np.ndarray, sides: np.ndarray) -> SideIndex:
        """Which stored sides a batch feeds, given its rows (B,) and each row's order of its
        sides (B, 2): the index into `TokenizedPairs.starts` / `lengths`."""

    @abc.abstractmethod
    def part_inputs(self, part_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The model inputs read from the fed sides' padded part ids (int32)."""

    def batch_inputs(
        self, tokens: TokenizedPairs, rows: np.ndarray, sides: np.ndarray, length: int
    ) -> dict[str, np.ndarray]:
        """The model inputs (`input_keys`) of one batch: its rows (B,), each fed with its sides
        in the order `sides` (B, 2) gives, padded only to `length`: int32 (B, ..., length).
        """
        chosen = self.fed_sides(rows, sides)
        inputs = {}
        if "token_ids" in self.input_keys:
            inputs["token_ids"] = tokens.padded_ids(chosen, length)
        if "padding_mask" in self.input_keys:
            real = np.arange(length) < tokens.lengths[chosen][..., None]
            inputs["padding_mask"] = real.astype(np.int32)
        if {"segment_ids", PART_IDS} & set(self.input_keys):
            inputs.update(self.part_inputs(tokens.padded_parts(chosen, length).astype(np.int32)))
        return {key: inputs[key] for key in self.input_keys}

    def pack_rows(self, texts: dict[str, np.ndarray], progress: bool = True) -> TokenizedPairs:
        """Every row of `texts` packed once, `TOKENIZE_CHUNK` rows a call in a parallel tf.data
        map; with `progress`, a progress line per chunk for more than one chunk."""
        import tensorflow as tf

        n = len(next(iter(texts.values())))
        keys = self.text_keys
        spec = {key: tf.TensorSpec((None,), tf.string) for key in keys}
        chunks = tf.data.Dataset.from_generator(
            lambda: text_chunks(texts, keys, n), output_signature=spec
        )
        chunks = chunks.map(self, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        pieces: list[TokenizedPairs] = []
        ticker = monitoring.Ticker("tokenizing", n) if progress and n > TOKENIZE_CHUNK else None
        for chunk in chunks.as_numpy_iterator():
            lengths = chunk["lengths"].astype(np.int32)
            pieces.append(
                TokenizedPairs.from_padded(
                    chunk["token_ids"], chunk["part_ids"], lengths, self.pad_id
                )
            )
            if ticker is not None:
                ticker.add(len(lengths))
        return TokenizedPairs.concatenate(pieces)


def text_chunks(
    texts: dict[str, np.ndarray], keys: Sequence[str], n: int
) -> Iterator[dict[str, list[str]]]:
    """`TOKENIZE_CHUNK` rows at a time, as Python strings.

    Not one NumPy string array: its fixed width is the longest text's, 4 bytes a character,
    which for 57k rows with one 25k-character conversation is 5.7 GB for one column.
    """
    for start in range(0, n, TOKENIZE_CHUNK):
        stop = start + TOKENIZE_CHUNK
        yield {key: [str(value) for value in texts[key][start:stop]] for key in keys}


def truncate_pair(context, response, budget: int):
    """Fit ragged (context, response) token rows into `budget` tokens.

    Each segment may use half the budget; one that needs less gives the rest to the other.
    The context keeps its end (the latest turns decide the vote); the response keeps its start.
    """
    import tensorflow as tf

    context_len = context.row_lengths()
    response_len = response.row_lengths()
    half = tf.cast(budget // 2, context_len.dtype)
    keep_response = tf.minimum(response_len, tf.maximum(half, budget - context_len))
    keep_context = tf.minimum(context_len, budget - keep_response)
    positions = tf.ragged.range(context_len)
    context = tf.ragged.boolean_mask(
        context, positions >= tf.expand_dims(context_len - keep_context, 1)
    )
    positions = tf.ragged.range(response_len)
    response = tf.ragged.boolean_mask(response, positions < tf.expand_dims(keep_response, 1))
    return context, response


class SidePacker(Packer):
    """A packer for a siamese model: each side of a row, (context, response), packed apart by
    `pack_side`, and a batch feeds both sides of each row, (B, 2, T)."""

    text_keys = FEATURE_KEYS
    sequences_per_pair = 2
    batch_shape = (None, 2, None)

    @abc.abstractmethod
    def pack_side(self, context, response) -> tuple:
        """(token_ids, part ids), both (N, L) tf, of one side's ragged strings (N,)."""

    @abc.abstractmethod
    def side_lengths(self, token_ids, part_ids):
        """The real tokens of each packed side (N, 2) (tf)."""

    def texts(self, frame) -> dict[str, np.ndarray]:
        return format_pairs(frame)

    def __call__(self, texts: dict) -> dict:
        """{context_a, ...} strings (N,) -> token_ids/part_ids (N, 2, L), lengths (N, 2)."""
        import tensorflow as tf

        sides = [self.pack_side(texts[f"context_{s}"], texts[f"response_{s}"]) for s in SIDES]
        token_ids = tf.stack([side[0] for side in sides], axis=1)
        part_ids = tf.stack([side[1] for side in sides], axis=1)
        lengths = self.side_lengths(token_ids, part_ids)
        return {"token_ids": token_ids, "part_ids": part_ids, "lengths": lengths}

    def fed_sides(self, rows: np.ndarray, sides: np.ndarray) -> SideIndex:
        return rows[:, None], sides


@dataclasses.dataclass
class PairPacker(SidePacker):
    """Packs both sides of each row apart with the preset's preprocessor, for a siamese model:
    each side is `[CLS] context [SEP] response [SEP]` (`truncate_pair`), and a batch feeds both
    sides of a row, (B, 2, T). A side's part ids are the backbone's segment ids."""

    preprocessor: object
    input_keys: tuple[str, ...]

    def __post_init__(self) -> None:
        import tensorflow as tf

        self.preprocessor.build(None)
        self.sequence_length = int(self.preprocessor.sequence_length)
        empty = tf.ragged.constant([[]], dtype=tf.int32)
        packed, _ = self.preprocessor.packer((empty, empty))
        specials = int(tf.reduce_sum(tf.cast(packed != self.pad_id, tf.int32)))
        self.budget = self.sequence_length - specials

    @property
    def pad_id(self) -> int:
        return int(self.preprocessor.tokenizer.pad_token_id)

    def save(self, preset_dir: str) -> None:
        self.preprocessor.save_to_preset(preset_dir)

    def pack_side(self, context, response) -> tuple:
        """Token ids and segment ids (N, L) of one side."""
        tokenizer = self.preprocessor.tokenizer
        context, response = truncate_pair(tokenizer(context), tokenizer(response), self.budget)
        return self.preprocessor.packer((context, response))

    def side_lengths(self, token_ids, part_ids):
        import tensorflow as tf

        return tf.reduce_sum(tf.cast(token_ids != self.pad_id, tf.int32), -1)

    def fingerprint(self) -> str:
        """Identifies the tokenization: preprocessor config and vocabulary."""
        digest = hashlib.sha256(repr(self.preprocessor.get_config()).encode())
        return tokenizer_digest(self.preprocessor.tokenizer, digest)

    def part_inputs(self, part_ids: np.ndarray) -> dict[str, np.ndarray]:
        return {"segment_ids": part_ids}


@dataclasses.dataclass
class DecoderPairPacker(SidePacker):
    """Packs both sides of each row apart with a decoder LLM's tokenizer, for a siamese reward
    model: `<bos> context "\nAssistant: " response` (<bos> where the tokenizer has one), the
    context keeping its end and the response its start (`truncate_pair`).

    Sides are right-padded, and their last real token, which the model reads, is the
    response's last: no end-of-text token follows, since the transformers export pads with one
    (Qwen-2, Llama-3.0) and its classifiers read the rightmost token that is not padding.
    Decoders take no segment ids; the part ids (`CONVERSATION` up to the separator, `FIRST` for
    the response) count a side's real tokens, since a tokenizer's pad id can be a real token
    (keras-hub's 0 for Llama-3).
    """

    tokenizer: object
    sequence_length: int
    input_keys: tuple[str, ...]

    def __post_init__(self) -> None:
        start = getattr(self.tokenizer, "start_token_id", None)
        separator = np.asarray(self.tokenizer(RESPONSE_SEPARATOR)).tolist()
        self.pieces = [[] if start is None else [int(start)], separator]
        self.budget = checked_budget(self.sequence_length, sum(len(p) for p in self.pieces))
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_id = 0 if pad is None else int(pad)

    def save(self, preset_dir: str) -> None:
        self.tokenizer.save_to_preset(preset_dir)

    def pack_side(self, context, response) -> tuple:
        """(token_ids, part ids), both (N, L), of one side."""
        import tensorflow as tf

        context, response = truncate_pair(
            self.tokenizer(context), self.tokenizer(response), self.budget
        )
        n = tf.shape(context.row_lengths())[0]
        start, separator = (
            tf.RaggedTensor.from_tensor(tf.tile(tf.constant([p], tf.int32), [n, 1]))
            for p in self.pieces
        )
        parts = [start, tf.cast(context, tf.int32), separator, tf.cast(response, tf.int32)]
        ids = [tf.ones_like(p) * (CONVERSATION if i < 3 else FIRST) for i, p in enumerate(parts)]
        shape = [None, self.sequence_length]
        return (
            tf.concat(parts, axis=1).to_tensor(self.pad_id, shape=shape),
            tf.concat(ids, axis=1).to_tensor(0, shape=shape),
        )

    def side_lengths(self, token_ids, part_ids):
        import tensorflow as tf

        return tf.reduce_sum(tf.cast(part_ids > 0, tf.int32), -1)

    def fingerprint(self) -> str:
        """Identifies the tokenization: layout, pieces and vocabulary."""
        digest = hashlib.sha256(repr(("decoder pair", self.pieces)).encode())
        return tokenizer_digest(self.tokenizer, digest)

    def part_inputs(self, part_ids: np.ndarray) -> dict[str, np.ndarray]:
        return {}


def checked_budget(sequence_length: int, tags: int) -> int:
    """The tokens a sequence of `sequence_length` leaves its texts after `tags` tokens of
    special tokens and tags; a ConfigError naming the length that works when that is fewer
    than `MIN_TEXT_TOKENS` (the texts (nearly) empty: every row the same, nothing to learn)."""
    budget = sequence_length - tags
    if budget < MIN_TEXT_TOKENS:
        raise ConfigError(
            f"--sequence-length {sequence_length} leaves {budget} tokens for the texts after "
            f"this tokenizer's {tags} tokens of special tokens and tags; use --sequence-length "
            f"{tags + MIN_TEXT_TOKENS} or more"
        )
    return budget


def tokenizer_digest(tokenizer, digest) -> str:
    """`digest` updated with the tokenizer's vocabulary, as 16 hex digits."""
    for attr in ("proto", "vocabulary", "merges"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            digest.update(repr(value).encode() if not isinstance(value, bytes) else value)
    return digest.hexdigest()[:16]


def truncate_parts(parts: Sequence, budget: int, keep_end: Sequence[bool]) -> list:
    """Fit ragged token rows of several parts into `budget` tokens together.

    Each part may use an equal share; a part that needs less gives the rest to the others
    (water-filling; see `share_leftover` for the rounding). A part in
    `keep_end` keeps its last tokens (the conversation: the latest turns decide the vote),
    the others their first.
    """
    import tensorflow as tf

    lengths = tf.stack([p.row_lengths() for p in parts], axis=1)
    ordered = tf.sort(lengths, axis=1)
    count = len(parts)
    remaining = tf.fill(tf.shape(lengths)[:1], tf.cast(budget, lengths.dtype))
    level = tf.fill(tf.shape(lengths)[:1], lengths.dtype.max)
    capped = tf.zeros(tf.shape(lengths)[:1], tf.bool)
    # From the shortest part up: one shorter than an equal share of what is left keeps all of
    # itself; the first that is not caps itself and every longer part at that share.
    for i in range(count):
        share = remaining // (count - i)
        here = ~capped & (ordered[:, i] >= share)
        level = tf.where(here, share, level)
        capped = capped | here
        remaining = tf.where(capped, remaining, remaining - ordered[:, i])
    keep = tf.minimum(lengths, level[:, None])
    keep = share_leftover(lengths, keep, budget)
    out = []
    for i, (part, end) in enumerate(zip(parts, keep_end, strict=True)):
        positions = tf.ragged.range(part.row_lengths())
        n = tf.expand_dims(keep[:, i], 1)
        first = tf.expand_dims(part.row_lengths() - keep[:, i], 1)
        out.append(tf.ragged.boolean_mask(part, positions >= first if end else positions < n))
    return out


def share_leftover(lengths, keep, budget: int):
    """Hand out the tokens that rounding the shares down left (fewer than the parts): first to
    the conversation, then evenly to the responses, so that both orders of a pair truncate
    each response alike (one token may stay unused)."""
    import tensorflow as tf

    short = lengths > keep
    leftover = budget - tf.reduce_sum(keep, axis=1)
    conversation = tf.cast(short[:, 0] & (leftover > 0), keep.dtype)
    leftover -= conversation
    both = short[:, 1] & short[:, 2]
    first = tf.where(both, leftover // 2, tf.where(short[:, 1], leftover, 0))
    second = tf.where(both, leftover // 2, tf.where(short[:, 2], leftover, 0))
    return keep + tf.stack([conversation, first, second], axis=1)


@dataclasses.dataclass
class CrossPacker(Packer):
    """Packs each row as one sequence, twice: (conversation, A, B) and (conversation, B, A), for
    a cross-encoder.

    Encoders read `[CLS] conversation [SEP] first [SEP] second [SEP]` (segment id 0 for the
    conversation, 1 for both responses: BERT-style backbones have two segment types); decoders
    read the competition winners' tagged text `<bos><PROMPT>..</PROMPT>\n<RESPONSE A>..
    </RESPONSE A>\n<RESPONSE B>..</RESPONSE B>` through their own tokenizer. The conversation
    keeps its end, each response its start, and unused budget flows to the other parts. The
    part ids (`CONVERSATION`, `FIRST`, `SECOND`; 0 = padding) say from which tokens the model
    pools each response. A row's two stored sides are its two orders (order 1 is the swapped
    pair); a batch feeds one order of each row, (B, T).
    """

    tokenizer: object
    sequence_length: int
    input_keys: tuple[str, ...]
    decoder: bool = False
    text_keys = CROSS_KEYS
    sequences_per_pair = 1
    batch_shape = (None, None)

    def __post_init__(self) -> None:
        tokenizer = self.tokenizer
        start = getattr(tokenizer, "start_token_id", None)
        end = getattr(tokenizer, "end_token_id", None)
        if self.decoder:
            tags = ["<PROMPT>", "</PROMPT>\n<RESPONSE A>", "</RESPONSE A>\n<RESPONSE B>"]
            pieces = [np.asarray(tokenizer(tag)).tolist() for tag in [*tags, "</RESPONSE B>"]]
            if start is not None:
                pieces[0].insert(0, int(start))
        else:
            pieces = [[int(start)], [int(end)], [int(end)], [int(end)]]
        self.pieces = pieces
        self.budget = checked_budget(self.sequence_length, sum(len(p) for p in pieces))
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = 0 if pad is None else int(pad)

    def texts(self, frame) -> dict[str, np.ndarray]:
        return format_cross(frame)

    def save(self, preset_dir: str) -> None:
        self.tokenizer.save_to_preset(preset_dir)

    def pack_order(self, conversation, first, second) -> tuple:
        """(token_ids, part ids), both (N, L), for one order of the responses."""
        import tensorflow as tf

        parts = truncate_parts([conversation, first, second], self.budget, (True, False, False))
        n = tf.shape(conversation.row_lengths())[0]
        tokens, ids = [], []
        owners = (CONVERSATION, CONVERSATION, SECOND)  # who the piece before each part counts as
        part_ids = (CONVERSATION, FIRST, SECOND)
        for piece, part, owner, part_id in zip(
            self.pieces[:3], parts, owners, part_ids, strict=True
        ):
            fixed = tf.RaggedTensor.from_tensor(tf.tile(tf.constant([piece], tf.int32), [n, 1]))
            tokens += [fixed, tf.cast(part, tf.int32)]
            ids += [tf.ones_like(fixed) * owner, tf.ones_like(part, tf.int32) * part_id]
        last = tf.RaggedTensor.from_tensor(tf.tile(tf.constant([self.pieces[3]], tf.int32), [n, 1]))
        tokens.append(last)
        ids.append(tf.ones_like(last) * SECOND)
        shape = [None, self.sequence_length]
        return (
            tf.concat(tokens, axis=1).to_tensor(self.pad_id, shape=shape),
            tf.concat(ids, axis=1).to_tensor(0, shape=shape),
        )

    def __call__(self, texts: dict) -> dict:
        """Strings (N,) -> token_ids / part ids (N, 2, L) for both orders, lengths (N, 2)."""
        import tensorflow as tf

        conversation, a, b = (self.tokenizer(texts[k]) for k in CROSS_KEYS)
        orders = [self.pack_order(conversation, a, b), self.pack_order(conversation, b, a)]
        token_ids = tf.stack([o[0] for o in orders], axis=1)
        part_ids = tf.stack([o[1] for o in orders], axis=1)
        lengths = tf.reduce_sum(tf.cast(part_ids > 0, tf.int32), -1)
        return {"token_ids": token_ids, "part_ids": part_ids, "lengths": lengths}

    def fingerprint(self) -> str:
        """Identifies the tokenization: layout, pieces and vocabulary ("cross" as it always
        was, so that caches stay valid)."""
        digest = hashlib.sha256(repr(("cross", self.decoder, self.pieces)).encode())
        return tokenizer_digest(self.tokenizer, digest)

    def fed_sides(self, rows: np.ndarray, sides: np.ndarray) -> SideIndex:
        return rows, sides[:, 0]  # one order per row: 1 (B first) for a row fed swapped

    def part_inputs(self, part_ids: np.ndarray) -> dict[str, np.ndarray]:
        # The backbone's segments are two: the conversation, then both responses.
        return {"segment_ids": (part_ids > CONVERSATION).astype(np.int32), PART_IDS: part_ids}
