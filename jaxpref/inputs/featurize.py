"""The seam between rows and batches: a frame featurized once with the model's packer.

`featurize` formats a frame's texts, packs them into tokens (`tokenize`: once per data set,
cached on disk) and, for models that read them, computes the per-side features; the result,
`FeaturizedRows`, plans batches (`plan`) and feeds them (`feeding.make_dataset`). Training
and prediction both start here, so they tokenize and plan alike.

    rows = featurize(frame, model.build_packer(preset, 512), with_side_features=True)
    plan = rows.plan(batch_size=8)
    dataset = feeding.make_dataset(rows, [plan])
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jaxpref.data.text import SIDE_COUNTS, SIDES, format_pairs, side_counts, turn_counts
from jaxpref.inputs import batching, token_store
from jaxpref.inputs.packers import Packer
from jaxpref.inputs.token_store import TokenizedPairs

if TYPE_CHECKING:
    import pandas as pd

SIDE_FEATURES = "side_features"  # the model input holding them
NUM_SIDE_FEATURES = len(SIDE_COUNTS) + 2


@dataclasses.dataclass(frozen=True)
class FeaturizedRows:
    """Rows ready to feed: their tokens as `packer` packed them and, for models that read
    them, their (n, 2, F) per-side features (`side_features`)."""

    packer: Packer
    tokens: TokenizedPairs
    side_features: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def buckets(self) -> tuple[int, ...]:
        """The padded lengths a batch may take (`batching.bucket_lengths`)."""
        return batching.bucket_lengths(self.packer.sequence_length)

    def plan(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        swap: bool = False,
    ) -> list[batching.Batch]:
        """Global batches of `batch_size` rows over the packer's bucket lengths
        (`batching.plan_batches`: in length order, or shuffled per (seed, epoch))."""
        lengths = self.tokens.row_lengths()
        return batching.plan_batches(lengths, batch_size, self.buckets, shuffle, seed, epoch, swap)

    def padding_efficiency(self, plan: list[batching.Batch]) -> float:
        """Real tokens / computed tokens over `plan`."""
        return batching.padding_efficiency(self.tokens.lengths, plan)

    def swapped(self) -> FeaturizedRows:
        """The same rows with sides A and B exchanged (for swap test-time augmentation)."""
        features = None if self.side_features is None else self.side_features[:, ::-1]
        return FeaturizedRows(self.packer, token_store.swap_sides(self.tokens), features)


def featurize(
    frame: pd.DataFrame,
    packer: Packer,
    with_side_features: bool = False,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> FeaturizedRows:
    """`frame`'s rows packed by `packer` (tokens cached in `cache_dir`), with their per-side
    features when `with_side_features`."""
    tokens = tokenize(packer.texts(frame), packer, cache_dir, progress)
    features = side_features(format_pairs(frame), tokens) if with_side_features else None
    return FeaturizedRows(packer, tokens, features)


def tokenize(
    texts: dict[str, np.ndarray],
    packer: Packer,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> TokenizedPairs:
    """Every row packed once (`Packer.pack_rows`), reusing the on-disk cache when present."""
    if cache_dir is None:
        return packer.pack_rows(texts, progress)
    path = token_store.cache_file(cache_dir, packer.fingerprint(), packer.sequence_length, texts)
    if path.exists():
        return TokenizedPairs.load(path)
    tokens = packer.pack_rows(texts, progress)
    tokens.save(path)
    return tokens


def side_features(texts: dict[str, np.ndarray], tokens: TokenizedPairs) -> np.ndarray:
    """(n, 2, 10) per-side features for the head, log1p-scaled: `text.side_counts`, the token
    length and the number of user turns; `texts` as `text.format_pairs` makes them."""
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
