"""Input pipeline: text pairs -> tokens (once) -> length-bucketed (B, 2, T) batches via tf.data.

1. `tokenize` runs the preset's keras-hub tokenizer and segment packer inside a tf.data parallel
   map, once per data set (and caches the result on disk, keyed by texts and tokenizer), keeping
   the end of each conversation and the start of each response (`truncate_pair`).
2. `plan_batches` groups rows of similar length into global batches, each padded only to its
   bucket length (a small fixed set, so XLA compiles a bounded number of shapes). The plan is a
   pure function of (lengths, seed, epoch): every process computes the same plan, a resumed run
   sees the same order, and shuffling stays random across buckets between epochs. Rows left
   over in a bucket move up to the next bucket; the final partial batch is filled with
   zero-weight copies, so no row is dropped and every batch splits evenly over devices
   (partial batches break sharded JAX steps, keras issue #21167).
3. `make_dataset` turns a plan into a prefetched tf.data pipeline of this process's share of
   every global batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from jaxpref import monitoring
from jaxpref.config import ConfigError
from jaxpref.data.arena import MIRROR, NUM_CLASSES
from jaxpref.data.text import (
    CROSS_KEYS,
    FEATURE_KEYS,
    SIDE_COUNTS,
    SIDES,
    format_cross,
    format_pairs,
    side_counts,
    turn_counts,
)

log = logging.getLogger("jaxpref")

TOKENIZE_CHUNK = 256
PAIR, CROSS = "pair", "cross"  # input layouts: both sides apart (B, 2, L), or one sequence (B, L)
PART_IDS = "part_ids"
CONVERSATION, FIRST, SECOND = 1, 2, 3  # part ids of a cross-encoded sequence (0: padding)
TOKEN_FORMAT = 3
"""Version of what the token cache holds; bump it whenever truncation, packing, text
formatting or storage changes, so no cache written by older code is reused (3: ragged tokens,
no side padded to L)."""


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


@dataclasses.dataclass
class PairEncoder:
    """Tokenizes and packs both sides of each row with the preset's preprocessor."""

    preprocessor: object
    input_keys: tuple[str, ...]
    layout = PAIR
    text_keys = FEATURE_KEYS

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

    def texts(self, frame) -> dict[str, np.ndarray]:
        return format_pairs(frame)

    def save(self, preset_dir: str) -> None:
        """Write what rebuilds this encoder into a keras-hub preset directory."""
        self.preprocessor.save_to_preset(preset_dir)

    def encode_side(self, context, response) -> dict:
        tokenizer = self.preprocessor.tokenizer
        context, response = truncate_pair(tokenizer(context), tokenizer(response), self.budget)
        token_ids, segment_ids = self.preprocessor.packer((context, response))
        return {"token_ids": token_ids, "segment_ids": segment_ids}

    def __call__(self, texts: dict) -> dict:
        """{context_a, ...} strings (N,) -> token_ids/segment_ids (N, 2, L), lengths (N, 2)."""
        import tensorflow as tf

        sides = [self.encode_side(texts[f"context_{s}"], texts[f"response_{s}"]) for s in SIDES]
        out = {k: tf.stack([side[k] for side in sides], axis=1) for k in sides[0]}
        out["lengths"] = tf.reduce_sum(tf.cast(out["token_ids"] != self.pad_id, tf.int32), -1)
        return out

    def fingerprint(self) -> str:
        """Identifies the tokenization: preprocessor config and vocabulary."""
        digest = hashlib.sha256(repr(self.preprocessor.get_config()).encode())
        return tokenizer_digest(self.preprocessor.tokenizer, digest)


RESPONSE_SEPARATOR = "\nAssistant: "  # between a decoder side's context and its response


@dataclasses.dataclass
class DecoderPairEncoder:
    """Tokenizes and packs each side of each row apart for a decoder LLM (a siamese reward
    model), with its own tokenizer: `<bos> context "\nAssistant: " response` (<bos> where the
    tokenizer has one), the context keeping its end and the response its start
    (`truncate_pair`). Sides are right-padded, and their last real token, which the model
    reads, is the response's last: no end-of-text token follows, since the transformers export
    pads with one (Qwen-2, Llama-3.0) and its classifiers read the rightmost token that is not
    padding. Decoders take no segment ids; the stored ones are part ids (`CONVERSATION` up to
    the separator, `FIRST` for the response), and a side's length counts its real tokens (a
    tokenizer's pad id can be a real token, e.g. keras-hub's 0 for Llama-3)."""

    tokenizer: object
    sequence_length: int
    input_keys: tuple[str, ...]
    layout = PAIR
    text_keys = FEATURE_KEYS

    def __post_init__(self) -> None:
        start = getattr(self.tokenizer, "start_token_id", None)
        separator = np.asarray(self.tokenizer(RESPONSE_SEPARATOR)).tolist()
        self.pieces = [[] if start is None else [int(start)], separator]
        self.budget = checked_budget(self.sequence_length, sum(len(p) for p in self.pieces))
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_id = 0 if pad is None else int(pad)

    def texts(self, frame) -> dict[str, np.ndarray]:
        return format_pairs(frame)

    def save(self, preset_dir: str) -> None:
        """Write what rebuilds this encoder into a keras-hub preset directory."""
        self.tokenizer.save_to_preset(preset_dir)

    def encode_side(self, context, response) -> tuple:
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

    def __call__(self, texts: dict) -> dict:
        """{context_a, ...} strings (N,) -> token_ids/part ids (N, 2, L), lengths (N, 2)."""
        import tensorflow as tf

        sides = [self.encode_side(texts[f"context_{s}"], texts[f"response_{s}"]) for s in SIDES]
        token_ids = tf.stack([side[0] for side in sides], axis=1)
        part_ids = tf.stack([side[1] for side in sides], axis=1)
        lengths = tf.reduce_sum(tf.cast(part_ids > 0, tf.int32), -1)
        return {"token_ids": token_ids, "segment_ids": part_ids, "lengths": lengths}

    def fingerprint(self) -> str:
        """Identifies the tokenization: layout, pieces and vocabulary."""
        digest = hashlib.sha256(repr(("decoder pair", self.pieces)).encode())
        return tokenizer_digest(self.tokenizer, digest)


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


MIN_TEXT_TOKENS = 16  # of a packed sequence (cross-encoded, or a decoder side), after its tags


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


@dataclasses.dataclass
class CrossEncoder:
    """Tokenizes each row as one sequence, twice: (conversation, A, B) and (conversation, B, A).

    Encoders read `[CLS] conversation [SEP] first [SEP] second [SEP]` (segment id 0 for the
    conversation, 1 for both responses: BERT-style backbones have two segment types); decoders
    read the competition winners' tagged text `<bos><PROMPT>..</PROMPT>\n<RESPONSE A>..
    </RESPONSE A>\n<RESPONSE B>..</RESPONSE B>` through their own tokenizer. The conversation
    keeps its end, each response its start, and unused budget flows to the other parts. The
    stored `segment_ids` are part ids (`CONVERSATION`, `FIRST`, `SECOND`; 0 = padding), from
    which the model pools each response; order 1 is the swapped pair.
    """

    tokenizer: object
    sequence_length: int
    input_keys: tuple[str, ...]
    decoder: bool = False
    layout = CROSS
    text_keys = CROSS_KEYS

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
        """Write what rebuilds this encoder into a keras-hub preset directory."""
        self.tokenizer.save_to_preset(preset_dir)

    def encode_order(self, conversation, first, second) -> tuple:
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
        orders = [self.encode_order(conversation, a, b), self.encode_order(conversation, b, a)]
        token_ids = tf.stack([o[0] for o in orders], axis=1)
        part_ids = tf.stack([o[1] for o in orders], axis=1)
        lengths = tf.reduce_sum(tf.cast(part_ids > 0, tf.int32), -1)
        return {"token_ids": token_ids, "segment_ids": part_ids, "lengths": lengths}

    def fingerprint(self) -> str:
        """Identifies the tokenization: layout, pieces and vocabulary."""
        digest = hashlib.sha256(repr((CROSS, self.decoder, self.pieces)).encode())
        return tokenizer_digest(self.tokenizer, digest)


SideIndex = tuple[np.ndarray, np.ndarray] | slice
"""Selects sides of `TokenizedPairs.starts` / `lengths`: (rows, sides) index arrays, or all."""


@dataclasses.dataclass
class TokenizedPairs:
    """Both sides of every row as token rows without padding; `lengths` are real tokens.

    `values` holds the token ids of every side back to back and `segments` their segment ids;
    side `s` of row `i` is `values[starts[i, s] : starts[i, s] + lengths[i, s]]`. Padding every
    side to the full sequence length would hold (N, 2, L) arrays, mostly padding: about 0.6 GB
    for the 57k competition rows at L = 1,024. `padded_ids` and `padded_segments` pad just the
    sides of one batch; `token_ids` and `segment_ids` pad them all, for small data and tests.
    Rows and sides are views into the shared token arrays, so `take` and `swap_sides` copy no
    tokens. For the `CROSS` layout the two sides of a row are its two orders (`CrossEncoder`)
    and `segments` hold part ids.
    """

    values: np.ndarray  # (total,) int32
    segments: np.ndarray  # (total,) int8
    starts: np.ndarray  # (N, 2) int64
    lengths: np.ndarray  # (N, 2) int32
    sequence_length: int
    pad_id: int

    @classmethod
    def from_padded(
        cls, token_ids: np.ndarray, segment_ids: np.ndarray, lengths: np.ndarray, pad_id: int
    ) -> TokenizedPairs:
        """From (N, 2, L) arrays whose sides hold `lengths` real tokens followed by padding."""
        real = np.arange(token_ids.shape[-1]) < lengths[..., None]
        ends = np.cumsum(lengths, dtype=np.int64).reshape(lengths.shape)
        return cls(
            token_ids[real].astype(np.int32), segment_ids[real].astype(np.int8),
            ends - lengths, lengths.astype(np.int32), token_ids.shape[-1], int(pad_id),
        )  # fmt: skip

    @classmethod
    def concatenate(cls, parts: Sequence[TokenizedPairs]) -> TokenizedPairs:
        """The rows of every part, in order (parts as made by `from_padded`: starts at 0)."""
        offsets = np.cumsum([0, *(len(p.values) for p in parts[:-1])])
        first = parts[0]
        return cls(
            np.concatenate([p.values for p in parts]),
            np.concatenate([p.segments for p in parts]),
            np.concatenate([p.starts + o for p, o in zip(parts, offsets, strict=True)]),
            np.concatenate([p.lengths for p in parts]), first.sequence_length, first.pad_id,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.lengths)

    def row_lengths(self) -> np.ndarray:
        """Tokens each row needs: the longer of its two sides."""
        return self.lengths.max(axis=1)

    def take(self, rows: np.ndarray) -> TokenizedPairs:
        """Only the given rows, in the given order."""
        return dataclasses.replace(self, starts=self.starts[rows], lengths=self.lengths[rows])

    def padded_ids(self, index: SideIndex, length: int) -> np.ndarray:
        """Token ids of the sides `starts[index]`, cut or padded to `length`: (..., length)."""
        return self._padded(self.values, self.pad_id, index, length)

    def padded_segments(self, index: SideIndex, length: int) -> np.ndarray:
        """Segment ids of the sides `starts[index]`, cut or padded (with 0) to `length`."""
        return self._padded(self.segments, 0, index, length)

    @property
    def token_ids(self) -> np.ndarray:
        """(N, 2, L) int32 token ids, padded with `pad_id`."""
        return self.padded_ids(slice(None), self.sequence_length)

    @property
    def segment_ids(self) -> np.ndarray:
        """(N, 2, L) int8 segment ids, padded with 0."""
        return self.padded_segments(slice(None), self.sequence_length)

    def _padded(self, flat: np.ndarray, fill: int, index: SideIndex, length: int) -> np.ndarray:
        positions = np.arange(length)
        real = positions < self.lengths[index][..., None]
        if not flat.size:
            return np.full(real.shape, fill, flat.dtype)
        at = np.where(real, self.starts[index][..., None] + positions, 0)
        return np.where(real, flat[at], flat.dtype.type(fill))

    def save(self, path: Path) -> None:
        """Write every field to one .npz file (`dataclasses.asdict` would copy the arrays)."""
        np.savez(path, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @classmethod
    def load(cls, path: Path) -> TokenizedPairs:
        """The tokens `save` wrote to `path`."""
        with np.load(path) as saved:
            fields = {k: saved[k] for k in saved.files}
        scalars = ("sequence_length", "pad_id")
        return cls(**{k: int(v) if k in scalars else v for k, v in fields.items()})


def _texts_digest(texts: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(texts):
        for value in texts[key]:
            digest.update(str(value).encode("utf-8", "surrogatepass"))
            digest.update(b"\0")
    return digest.hexdigest()[:16]


def default_cache_dir() -> Path | None:
    """`JAXPREF_CACHE` or ~/.cache/jaxpref/tokens; JAXPREF_CACHE=off disables the cache."""
    value = os.environ.get("JAXPREF_CACHE")
    if value == "off":
        return None
    return Path(value) if value else Path.home() / ".cache" / "jaxpref" / "tokens"


def _text_chunks(
    texts: dict[str, np.ndarray], keys: Sequence[str], n: int
) -> Iterator[dict[str, list[str]]]:
    """`TOKENIZE_CHUNK` rows at a time, as Python strings.

    Not one NumPy string array: its fixed width is the longest text's, 4 bytes a character,
    which for 57k rows with one 25k-character conversation is 5.7 GB for one column.
    """
    for start in range(0, n, TOKENIZE_CHUNK):
        stop = start + TOKENIZE_CHUNK
        yield {key: [str(value) for value in texts[key][start:stop]] for key in keys}


def tokenize(
    texts: dict[str, np.ndarray],
    encoder: PairEncoder,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> TokenizedPairs:
    """Tokenize every row once (parallel tf.data map), reusing an on-disk cache when present."""
    import tensorflow as tf

    n = len(next(iter(texts.values())))
    cache_file = None
    if cache_dir is not None:
        name = (
            f"v{TOKEN_FORMAT}-{encoder.fingerprint()}-{encoder.sequence_length}-"
            f"{_texts_digest(texts)}.npz"
        )
        cache_file = Path(cache_dir) / name
        if cache_file.exists():
            return TokenizedPairs.load(cache_file)
    keys = encoder.text_keys
    spec = {key: tf.TensorSpec((None,), tf.string) for key in keys}
    ds = tf.data.Dataset.from_generator(lambda: _text_chunks(texts, keys, n), output_signature=spec)
    ds = ds.map(encoder, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    parts: list[TokenizedPairs] = []
    ticker = monitoring.Ticker("tokenizing", n) if progress and n > TOKENIZE_CHUNK else None
    for chunk in ds.as_numpy_iterator():
        lengths = chunk["lengths"].astype(np.int32)
        parts.append(
            TokenizedPairs.from_padded(
                chunk["token_ids"], chunk["segment_ids"], lengths, encoder.pad_id
            )
        )
        if ticker is not None:
            ticker.add(len(lengths))
    tokens = TokenizedPairs.concatenate(parts)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}.npz")
        tokens.save(tmp)
        os.replace(tmp, cache_file)
    return tokens


def bucket_lengths(sequence_length: int) -> tuple[int, ...]:
    """Padded lengths a batch may take: every 64 tokens up to 256, then every 128, then L.

    About ten shapes at L=1024: few enough compilations, fine enough to waste little padding.
    """
    sizes = [*range(64, 257, 64), *range(384, sequence_length, 128)]
    return (*[s for s in sizes if s < sequence_length], sequence_length)


@dataclasses.dataclass(frozen=True)
class Batch:
    """One global batch: row indices, sample weights (0 = filler copy) and padded length."""

    rows: np.ndarray
    weights: np.ndarray
    length: int
    swap: np.ndarray | None = None  # rows fed with sides A and B exchanged (augmentation)


def plan_batches(
    lengths: np.ndarray,
    global_batch_size: int,
    buckets: Sequence[int],
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    swap: bool = False,
) -> list[Batch]:
    """Group rows of similar length into global batches; identical on every process.

    Without `shuffle`, rows keep ascending length order inside the plan (inference restores the
    input order from `Batch.rows`). With it, rows are shuffled within buckets and batches across
    buckets, differently for each epoch but reproducibly for a (seed, epoch), every epoch
    opening with a batch of its shortest padded length (no recompilation at epoch starts). With
    `swap`, a random half of the rows is fed with sides A and B exchanged (and labels to match).
    """
    lengths = np.asarray(lengths)
    if len(lengths) < 1:
        raise ValueError("no rows to feed")
    rng = np.random.default_rng([seed, epoch])
    bucket_of = np.searchsorted(np.asarray(buckets), lengths, side="left")
    bucket_of = np.minimum(bucket_of, len(buckets) - 1)
    batches: list[Batch] = []
    carry = np.empty(0, dtype=np.int64)
    for b, size in enumerate(buckets):
        rows = np.flatnonzero(bucket_of == b)
        rows = rng.permutation(rows) if shuffle else rows[np.argsort(lengths[rows], kind="stable")]
        rows = np.concatenate([carry, rows])
        full = len(rows) // global_batch_size * global_batch_size
        for start in range(0, full, global_batch_size):
            chunk = rows[start : start + global_batch_size]
            batches.append(Batch(chunk, np.ones(len(chunk), np.float32), size))
        carry = rows[full:]
    if len(carry):
        fill = global_batch_size - len(carry)
        rows = np.concatenate([carry, np.resize(carry, fill)])
        weights = np.concatenate([np.ones(len(carry)), np.zeros(fill)]).astype(np.float32)
        batches.append(Batch(rows, weights, buckets[-1]))
    if shuffle:
        batches = open_with_shortest([batches[i] for i in rng.permutation(len(batches))])
    if swap:
        batches = [dataclasses.replace(b, swap=rng.random(len(b.rows)) < 0.5) for b in batches]
    return batches


def open_with_shortest(batches: list[Batch]) -> list[Batch]:
    """`batches` with the first of the shortest padded length moved to the front.

    Keras resets its metric variables at each epoch start, and on one device JAX then compiles
    the train step again for the epoch's first shape unless that shape opened an epoch before:
    every epoch opens with the same (the shortest) padded length.
    """
    first = min(range(len(batches)), key=lambda i: batches[i].length)
    return [batches[first], *batches[:first], *batches[first + 1 :]]


def split_plan(plan: Sequence[Batch], parts: int) -> list[list[Batch]]:
    """`plan` cut into `parts` consecutive periods of near-equal length (validation points
    inside an epoch). Keras trains each as an epoch, so each opens with the plan's shortest
    padded length (`open_with_shortest`): a period without a batch of that length swaps its
    first batch for one from a period with several, while there is one."""
    if not 1 <= parts <= len(plan):
        raise ValueError(f"cannot cut {len(plan)} batches into {parts} periods")
    bounds = np.linspace(0, len(plan), parts + 1).round().astype(int)
    periods = [list(plan[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    shortest = min(b.length for b in plan)
    for period in periods:
        if any(b.length == shortest for b in period):
            continue
        donor = next((p for p in periods if sum(b.length == shortest for b in p) > 1), None)
        if donor is not None:
            i = max(i for i, b in enumerate(donor) if b.length == shortest)
            donor[i], period[0] = period[0], donor[i]
    return [open_with_shortest(period) for period in periods]


def padding_efficiency(tokens: TokenizedPairs, plan: Sequence[Batch]) -> float:
    """Real tokens / computed tokens over a plan (filler rows count as computed)."""
    real = sum(int(tokens.lengths[b.rows[b.weights > 0]].sum()) for b in plan)
    computed = sum(2 * len(b.rows) * b.length for b in plan)
    return real / computed


SIDE_FEATURES = "side_features"
NUM_SIDE_FEATURES = len(SIDE_COUNTS) + 2


def side_features(texts: dict[str, np.ndarray], tokens: TokenizedPairs) -> np.ndarray:
    """(n, 2, 10) per-side features for the head, log1p-scaled: `text.side_counts`, the token
    length and the number of user turns."""
    sides = [
        np.hstack(
            [
                side_counts(texts, s),
                np.log1p(tokens.lengths[:, i : i + 1]),
                np.log1p(turn_counts(texts, s))[:, None],
            ]
        )
        for i, s in enumerate(SIDES)
    ]
    return np.stack(sides, axis=1).astype(np.float32)


def swap_sides(tokens: TokenizedPairs) -> TokenizedPairs:
    """The same rows with sides A and B exchanged (for swap test-time augmentation)."""
    return dataclasses.replace(
        tokens, starts=tokens.starts[:, ::-1], lengths=tokens.lengths[:, ::-1]
    )


def _local_batches(
    tokens: TokenizedPairs,
    plans: Sequence[Sequence[Batch]],
    input_keys: Sequence[str],
    targets: np.ndarray | None,
    process_index: int,
    process_count: int,
    extra: np.ndarray | None = None,
    layout: str = PAIR,
) -> Iterator[tuple]:
    for plan in plans:
        for batch in plan:
            share = len(batch.rows) // process_count
            part = slice(process_index * share, (process_index + 1) * share)
            rows, length = batch.rows[part], batch.length
            sides = np.array([[0, 1]] * len(rows))
            row_targets = None if targets is None else targets[rows]  # a copy
            if batch.swap is not None:
                flip = batch.swap[part]
                sides[flip] = [1, 0]
                if row_targets is not None:
                    row_targets[flip] = row_targets[flip][:, list(MIRROR)]
            pick = (rows[:, None], sides)
            # A pair feeds both sides (B, 2, T); a cross-encoded row one order of it (B, T).
            chosen = pick if layout == PAIR else (rows, sides[:, 0])
            x = batch_features(tokens, chosen, length, input_keys, layout)
            if extra is not None:
                x[SIDE_FEATURES] = extra[pick]
            if targets is None:
                yield (x,)
            else:
                yield x, row_targets, batch.weights[part]


def batch_features(
    tokens: TokenizedPairs, chosen: SideIndex, length: int, keys: Sequence[str], layout: str
) -> dict[str, np.ndarray]:
    """The model inputs named `keys` for the `chosen` (row, side) indices, `length` tokens.

    Only these sides are padded, and only to `length`: int32 (..., length) arrays.
    """
    features = {}
    if "token_ids" in keys:
        features["token_ids"] = tokens.padded_ids(chosen, length)
    if "padding_mask" in keys:
        real = np.arange(length) < tokens.lengths[chosen][..., None]
        features["padding_mask"] = real.astype(np.int32)
    if "segment_ids" in keys or PART_IDS in keys:
        segments = tokens.padded_segments(chosen, length).astype(np.int32)
        # Cross-encoded rows store part ids; the backbone's segments are conversation/responses.
        cross_segments = (segments > CONVERSATION).astype(np.int32)
        features["segment_ids"] = segments if layout == PAIR else cross_segments
        features[PART_IDS] = segments
    return {key: features[key] for key in keys}


def make_dataset(
    tokens: TokenizedPairs,
    plans: Sequence[Sequence[Batch]],
    input_keys: Sequence[str],
    labels: np.ndarray | None = None,
    process_index: int = 0,
    process_count: int = 1,
    extra: np.ndarray | None = None,
    layout: str = PAIR,
):
    """A tf.data pipeline of this process's share of every batch of `plans`, in order.

    `labels` are class indices (n,) or target rows (n, 3) of probabilities (soft labels); rows
    fed swapped get mirrored targets. Elements are `(x, y, sample_weight)` with labels, `y`
    (B/process_count, 3) float32 targets, else `(x,)`; `x` maps the model's input
    names to int32 (B/process_count, 2, T) for the `PAIR` layout or (B/process_count, T) for
    `CROSS`, T the batch's bucket length, and, when `extra` (n, 2, F) side features are given,
    `side_features` to (B/process_count, 2, F) float32.
    """
    import tensorflow as tf

    keys = tuple(input_keys)
    targets = None
    if labels is not None:
        labels = np.asarray(labels)
        one_hot = np.eye(NUM_CLASSES, dtype=np.float32)
        targets = labels.astype(np.float32) if labels.ndim == 2 else one_hot[labels]
    shape = (None, 2, None) if layout == PAIR else (None, None)
    x_spec = {k: tf.TensorSpec(shape, tf.int32) for k in keys}
    if extra is not None:
        x_spec[SIDE_FEATURES] = tf.TensorSpec((None, 2, extra.shape[-1]), tf.float32)
    spec = (x_spec,)
    if targets is not None:
        y_spec = tf.TensorSpec((None, NUM_CLASSES), tf.float32)
        spec = (x_spec, y_spec, tf.TensorSpec((None,), tf.float32))
    shard = (process_index, process_count)
    ds = tf.data.Dataset.from_generator(
        lambda: _local_batches(tokens, plans, keys, targets, *shard, extra, layout),
        output_signature=spec,
    )
    steps = sum(len(plan) for plan in plans)
    ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
    return ds.prefetch(tf.data.AUTOTUNE)
