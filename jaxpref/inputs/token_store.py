"""Token storage: every row's two token sequences kept without padding, and their on-disk cache.

A packer (`inputs.packers`) writes `TokenizedPairs`; batches read back only the sides they
feed, padded only to their bucket length. The cache holds one .npz file per (packing, texts),
named so that tokens written by other code or for other texts are never reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TOKEN_FORMAT = 3
"""Version of what the token cache holds; bump it whenever truncation, packing, text
formatting or storage changes, so no cache written by older code is reused (3: ragged tokens,
no side padded to L)."""

FILE_NAMES = {"parts": "segments"}
"""Fields saved under another name: the names of format 3's first files, kept so that caches
written before `segments` became `parts` stay valid (and readable by that code)."""

SideIndex = tuple[np.ndarray, np.ndarray] | slice
"""Selects sides of `TokenizedPairs.starts` / `lengths`: (rows, sides) index arrays, or all."""


@dataclasses.dataclass
class TokenizedPairs:
    """Both sides of every row as token rows without padding; `lengths` are real tokens.

    `values` holds the token ids of every side back to back and `parts` each token's part id
    (which part of its sequence it belongs to, numbered by the packer: for a pair's side the
    backbone's segment ids, 0 context and 1 response; for a cross-encoded row `CONVERSATION`,
    `FIRST`, `SECOND`); side `s` of row `i` is `values[starts[i, s] : starts[i, s] +
    lengths[i, s]]`. Padding every side to the full sequence length would hold (N, 2, L)
    arrays, mostly padding: about 0.6 GB for the 57k competition rows at L = 1,024.
    `padded_ids` and `padded_parts` pad just the sides of one batch; `token_ids` and
    `part_ids` pad them all, for small data and tests. Rows and sides are views into the
    shared token arrays, so `take` and `swap_sides` copy no tokens. A cross-encoded row's two
    sides are its two orders of the responses (`packers.CrossPacker`).
    """

    values: np.ndarray  # (total,) int32
    parts: np.ndarray  # (total,) int8
    starts: np.ndarray  # (N, 2) int64
    lengths: np.ndarray  # (N, 2) int32
    sequence_length: int
    pad_id: int

    @classmethod
    def from_padded(
        cls, token_ids: np.ndarray, part_ids: np.ndarray, lengths: np.ndarray, pad_id: int
    ) -> TokenizedPairs:
        """From (N, 2, L) arrays whose sides hold `lengths` real tokens followed by padding."""
        real = np.arange(token_ids.shape[-1]) < lengths[..., None]
        ends = np.cumsum(lengths, dtype=np.int64).reshape(lengths.shape)
        return cls(
            token_ids[real].astype(np.int32), part_ids[real].astype(np.int8),
            ends - lengths, lengths.astype(np.int32), token_ids.shape[-1], int(pad_id),
        )  # fmt: skip

    @classmethod
    def concatenate(cls, pieces: Sequence[TokenizedPairs]) -> TokenizedPairs:
        """The rows of every piece, in order (pieces as made by `from_padded`: starts at 0)."""
        offsets = np.cumsum([0, *(len(p.values) for p in pieces[:-1])])
        first = pieces[0]
        return cls(
            np.concatenate([p.values for p in pieces]),
            np.concatenate([p.parts for p in pieces]),
            np.concatenate([p.starts + o for p, o in zip(pieces, offsets, strict=True)]),
            np.concatenate([p.lengths for p in pieces]), first.sequence_length, first.pad_id,
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

    def padded_parts(self, index: SideIndex, length: int) -> np.ndarray:
        """Part ids of the sides `starts[index]`, cut or padded (with 0) to `length`."""
        return self._padded(self.parts, 0, index, length)

    @property
    def token_ids(self) -> np.ndarray:
        """(N, 2, L) int32 token ids, padded with `pad_id`."""
        return self.padded_ids(slice(None), self.sequence_length)

    @property
    def part_ids(self) -> np.ndarray:
        """(N, 2, L) int8 part ids, padded with 0."""
        return self.padded_parts(slice(None), self.sequence_length)

    def _padded(self, flat: np.ndarray, fill: int, index: SideIndex, length: int) -> np.ndarray:
        positions = np.arange(length)
        real = positions < self.lengths[index][..., None]
        if not flat.size:
            return np.full(real.shape, fill, flat.dtype)
        at = np.where(real, self.starts[index][..., None] + positions, 0)
        return np.where(real, flat[at], flat.dtype.type(fill))

    def save(self, path: Path) -> None:
        """Write every field to one .npz file, atomically (a reader never sees half a file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        np.savez(tmp, **{FILE_NAMES.get(name, name): value for name, value in fields.items()})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> TokenizedPairs:
        """The tokens `save` wrote to `path`."""
        field_of = {saved: name for name, saved in FILE_NAMES.items()}
        with np.load(path) as saved:
            fields = {field_of.get(k, k): saved[k] for k in saved.files}
        scalars = ("sequence_length", "pad_id")
        return cls(**{k: int(v) if k in scalars else v for k, v in fields.items()})


def swap_sides(tokens: TokenizedPairs) -> TokenizedPairs:
    """The same rows with sides A and B exchanged (for swap test-time augmentation)."""
    return dataclasses.replace(
        tokens, starts=tokens.starts[:, ::-1], lengths=tokens.lengths[:, ::-1]
    )


def default_cache_dir() -> Path | None:
    """`JAXPREF_CACHE` or ~/.cache/jaxpref/tokens; JAXPREF_CACHE=off disables the cache."""
    value = os.environ.get("JAXPREF_CACHE")
    if value == "off":
        return None
    return Path(value) if value else Path.home() / ".cache" / "jaxpref" / "tokens"


def cache_file(
    cache_dir: Path, fingerprint: str, sequence_length: int, texts: dict[str, np.ndarray]
) -> Path:
    """Where the tokens of `texts` packed by a packer of `fingerprint` are cached."""
    name = f"v{TOKEN_FORMAT}-{fingerprint}-{sequence_length}-{texts_digest(texts)}.npz"
    return Path(cache_dir) / name


def texts_digest(texts: dict[str, np.ndarray]) -> str:
    """16 hex digits identifying every text of every column."""
    digest = hashlib.sha256()
    for key in sorted(texts):
        for value in texts[key]:
            digest.update(str(value).encode("utf-8", "surrogatepass"))
            digest.update(b"\0")
    return digest.hexdigest()[:16]
