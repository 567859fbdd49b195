"""Soft training targets: a blend of the hard label and a teacher's probabilities (knowledge
distillation from, e.g., the `oof.csv` of a stronger configuration's cross-validation), and a
tie share for preference rows that cannot tie.

Cross-entropy against the target (1 - W) * one-hot + W * teacher is, up to a constant,
(1 - W) * the usual loss + W * KL(teacher || student): the student also learns how sure the
teacher was (how close to a tie a pair is), which a single hard label does not say.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from jaxpref.data.arena import CLASS_NAMES, NUM_CLASSES, DataError
from jaxpref.data.probabilities import Probabilities, read_probabilities

log = logging.getLogger("jaxpref")


def load_teacher(path: str | os.PathLike, train_ids: Sequence[str]) -> Probabilities:
    """The teacher's probability file, checked; logs how many training rows it covers and how
    many of its ids match no training row (validation rows, or another data set's)."""
    teacher = read_probabilities(path)
    matched = np.isin(teacher.ids, np.asarray(train_ids, dtype=object))
    if not matched.any():
        raise DataError(teacher.path, "no id matches a training row; wrong --soft-labels file?")
    log.info(
        "soft labels: %s covers %d of %d training rows; %d of its ids match no training row",
        teacher.path, int(matched.sum()), len(train_ids), int((~matched).sum()),
    )  # fmt: skip
    return teacher


def soft_targets(
    ids: Sequence[str], labels: np.ndarray, teacher: Probabilities, weight: float
) -> np.ndarray:
    """(n, 3) float32 training targets: (1 - weight) * one-hot + weight * teacher for rows the
    teacher covers, the one-hot label for the others."""
    targets = np.eye(NUM_CLASSES)[np.asarray(labels)]
    index = pd.Index(teacher.ids).get_indexer(list(ids))
    covered = index >= 0
    targets[covered] = (1 - weight) * targets[covered] + weight * teacher.probs[index[covered]]
    return targets.astype(np.float32)


def with_tie_share(targets: np.ndarray, rows: np.ndarray, share: float) -> np.ndarray:
    """(n, 3) float32 targets: `rows` get (1 - share) * their target + share * a tie.

    `targets` are class indices (n,) or target rows (n, 3). Chosen/rejected preference data has
    no tie class; trained on as one-hot wins, it teaches the model that ties do not happen.
    """
    targets = np.asarray(targets)
    if targets.ndim == 1:
        targets = np.eye(NUM_CLASSES)[targets]
    targets = targets.astype(np.float32)
    tie = np.eye(NUM_CLASSES, dtype=np.float32)[CLASS_NAMES.index("winner_tie")]
    targets[rows] = (1 - share) * targets[rows] + share * tie
    return targets
