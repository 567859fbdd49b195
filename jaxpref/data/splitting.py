"""Which rows train and which validate: a train/validation split and cross-validation folds,
both grouped by prompt so that one conversation never sits on both sides."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd


def split_train_valid(
    df: pd.DataFrame,
    valid_fraction: float = 0.1,
    seed: int = 0,
    group_by_prompt: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split labelled rows into a training and a validation set, stratified by ``label``.

    Stratifying keeps the class balance (model A wins / model B wins / tie) the same on both
    sides, so the validation log loss is comparable with the training one. With
    ``group_by_prompt=True`` rows whose ``prompt`` lists are identical always land on the same
    side (the same prompt is often asked many times in the arena), so validation measures
    generalisation to new prompts rather than memorised ones; this uses
    ``StratifiedGroupKFold(n_splits=round(1 / valid_fraction), shuffle=True,
    random_state=seed)`` and takes its first fold as validation (for ``valid_fraction > 0.5``
    the folds are sized from ``1 - valid_fraction`` and the sides swapped), so the validation
    size is only approximately ``valid_fraction``.

    If stratification is impossible (a class with fewer rows than needed, or more classes than
    rows on a side), the split falls back to a seeded non-stratified one instead of failing;
    grouping by prompt is still respected.

    Args:
        df: a frame from :func:`read_arena_csv` with ``labelled=True`` (needs ``label``, and
            ``prompt`` when grouping).
        valid_fraction: share of rows for validation, strictly between 0 and 1.
        seed: random seed; the same seed and input give the same split.
        group_by_prompt: keep identical prompts on one side.

    Returns:
        ``(train, valid)``: both non-empty, rows in their input order, index reset; together
        they hold every input row exactly once.

    Raises:
        ValueError: ``valid_fraction`` outside (0, 1), a missing column, fewer than 2 rows, or
            (when grouping) fewer than 2 distinct prompts.
    """
    if (
        isinstance(valid_fraction, bool)
        or not isinstance(valid_fraction, (int, float, np.integer, np.floating))
        or not 0.0 < float(valid_fraction) < 1.0
    ):
        raise ValueError(
            f"valid_fraction must be a number strictly between 0 and 1, got {valid_fraction!r}"
        )
    valid_fraction = float(valid_fraction)
    needed = ["label", *(["prompt"] if group_by_prompt else [])]
    missing = [name for name in needed if name not in df.columns]
    if missing:
        raise ValueError(
            f"split_train_valid needs column(s) {', '.join(map(repr, missing))}; "
            "read the data with read_arena_csv(..., labelled=True)"
        )
    n_rows = len(df)
    if n_rows < 2:
        raise ValueError(
            f"need at least 2 rows to split into train and validation sets, got {n_rows}"
        )
    labels = df["label"].to_numpy()

    if group_by_prompt:
        valid_mask = _grouped_valid_mask(df["prompt"], labels, valid_fraction, seed)
    else:
        valid_mask = _plain_valid_mask(labels, valid_fraction, seed)

    train = df[~valid_mask].reset_index(drop=True)
    valid = df[valid_mask].reset_index(drop=True)
    return train, valid


def _plain_valid_mask(labels: np.ndarray, valid_fraction: float, seed: int) -> np.ndarray:
    """Pick validation rows with ``train_test_split``; stratified when the class counts allow."""
    from sklearn.model_selection import train_test_split

    n_rows = len(labels)
    n_valid = min(max(1, round(valid_fraction * n_rows)), n_rows - 1)
    _, counts = np.unique(labels, return_counts=True)
    can_stratify = counts.min() >= 2 and min(n_valid, n_rows - n_valid) >= len(counts)
    _, valid_idx = train_test_split(
        np.arange(n_rows),
        test_size=n_valid,
        random_state=seed,
        shuffle=True,
        stratify=labels if can_stratify else None,
    )
    mask = np.zeros(n_rows, dtype=bool)
    mask[valid_idx] = True
    return mask


def _prompt_key(prompt: object) -> str:
    """A canonical string for a prompt list, so that equal lists compare equal."""
    return json.dumps(prompt, ensure_ascii=False, separators=(",", ":"))


def prompt_groups(frame: pd.DataFrame) -> np.ndarray:
    """An integer group per row; rows with identical prompt lists share one."""
    groups, _ = pd.factorize(pd.Series([_prompt_key(p) for p in frame["prompt"]], dtype=object))
    return groups


def _grouped_valid_mask(
    prompts: pd.Series, labels: np.ndarray, valid_fraction: float, seed: int
) -> np.ndarray:
    """Pick validation rows so that no prompt is on both sides; stratified when possible."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_rows = len(labels)
    groups, uniques = pd.factorize(pd.Series([_prompt_key(p) for p in prompts], dtype=object))
    n_groups = len(uniques)
    if n_groups < 2:
        raise ValueError(
            "cannot split with group_by_prompt=True: every row has the same prompt, "
            "so one side would be empty"
        )
    swap = valid_fraction > 0.5
    fold_fraction = 1.0 - valid_fraction if swap else valid_fraction
    n_splits = max(2, round(1.0 / fold_fraction))

    _, counts = np.unique(labels, return_counts=True)
    mask = None
    if n_groups >= n_splits and counts.min() >= n_splits:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, fold_idx = next(splitter.split(np.zeros(n_rows), labels, groups))
        if 0 < len(fold_idx) < n_rows:
            mask = np.zeros(n_rows, dtype=bool)
            mask[fold_idx] = True
    if mask is None:
        mask = _random_group_fold(groups, n_groups, fold_fraction, seed)
    return ~mask if swap else mask


def _random_group_fold(groups: np.ndarray, n_groups: int, fraction: float, seed: int) -> np.ndarray:
    """Non-stratified fallback: add whole groups, in a seeded random order, up to ``fraction``."""
    n_rows = len(groups)
    target = max(1, round(fraction * n_rows))
    sizes = np.bincount(groups, minlength=n_groups)
    order = np.random.default_rng(seed).permutation(n_groups)
    chosen = np.zeros(n_groups, dtype=bool)
    taken = 0
    for group in order[:-1]:  # always leave at least one group for the other side
        if taken >= target:
            break
        chosen[group] = True
        taken += sizes[group]
    return chosen[groups]


def fold_indices(
    frame: pd.DataFrame, folds: int, seed: int, train_fraction: float = 1.0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, validation rows) per fold; one prompt never sits in two folds.

    With `train_fraction` < 1 each fold trains on a seeded subset of its training rows and is
    still scored on all of its validation rows: a learning curve whose points are scored on the
    same rows, so their differences are paired. Smaller fractions take prefixes of the same
    shuffle (nested subsets).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    if not 0 < train_fraction <= 1:
        raise ValueError(f"--train-fraction must be in (0, 1], got {train_fraction}")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    labels = frame["label"].to_numpy()
    splits = splitter.split(np.zeros(len(frame)), labels, prompt_groups(frame))
    rng = np.random.default_rng(seed)
    return [
        (np.sort(rng.permutation(train)[: max(1, round(train_fraction * len(train)))]), valid)
        for train, valid in splits
    ]
