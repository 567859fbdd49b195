"""Files of class probabilities per row id: submissions, out-of-fold predictions, soft labels.

One format, `id,winner_model_a,winner_model_b,winner_tie` (what `prediction.write_submission`
writes), read and checked in one place, so every consumer (distillation, ensembling) refuses the
same bad rows with a one-line DataError naming the file, line and column.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from jaxpref.data.arena import LABEL_COLUMNS, DataError, open_input

ID_COLUMN = "id"
SUM_TOLERANCE = 0.01
"""How far from 1 a row's probabilities may sum (rounded writers); rows are then rescaled."""
OOF_FILE = "oof.csv"
"""Out-of-fold predictions, as cross-validation and blending write them."""


@dataclasses.dataclass(frozen=True)
class Probabilities:
    """The rows of one probability file: ids in file order and (n, 3) rows summing to 1."""

    path: str
    ids: np.ndarray
    probs: np.ndarray

    def aligned(self, ids: Sequence[str], source: str) -> np.ndarray:
        """The rows in the order of `ids`; DataError unless the file has exactly those ids."""
        wanted = pd.Index(list(ids))
        missing = wanted.difference(self.ids)
        unknown = pd.Index(self.ids).difference(wanted)
        if len(missing) or len(unknown):
            parts = [f"{len(missing)} id(s) of {source} missing"] if len(missing) else []
            parts += [f"{len(unknown)} not in it"] if len(unknown) else []
            example = (missing if len(missing) else unknown)[0]
            raise DataError(self.path, f"ids differ: {', '.join(parts)} (e.g. {example!r})")
        return self.probs[pd.Index(self.ids).get_indexer(wanted)]


def read_probabilities(path: str | os.PathLike) -> Probabilities:
    """Read and check a probability file; DataError for a missing column, an empty or repeated
    id, a cell that is not a non-negative number, or a row not summing to 1 within
    `SUM_TOLERANCE`."""
    path = os.fspath(path)
    ids: list[str] = []
    rows: list[list[float]] = []
    first_line: dict[str, int] = {}
    with open_input(path, "a CSV file", encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in (ID_COLUMN, *LABEL_COLUMNS) if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(path, f"missing column(s) {', '.join(missing)}", line=1)
        for record in reader:
            line = reader.line_num
            row_id = record[ID_COLUMN] or ""
            if not row_id:
                raise DataError(path, "empty id", line=line, column=ID_COLUMN)
            if row_id in first_line:
                detail = f"id repeats line {first_line[row_id]}"
                raise DataError(path, detail, line=line, column=ID_COLUMN, row_id=row_id)
            first_line[row_id] = line
            ids.append(row_id)
            rows.append([probability(path, record, c, line, row_id) for c in LABEL_COLUMNS])
    if not ids:
        raise DataError(path, "header line but no data rows after it", line=1)
    probs = np.asarray(rows, dtype=np.float64)
    sums = probs.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > SUM_TOLERANCE)
    if len(bad):
        i = int(bad[0])
        line = first_line[ids[i]]
        detail = f"probabilities sum to {sums[i]:.4g}, not 1 ({len(bad)} such row(s))"
        raise DataError(path, detail, line=line, column=LABEL_COLUMNS, row_id=ids[i])
    return Probabilities(path, np.asarray(ids, dtype=object), probs / sums[:, None])


def probability(path: str, record: dict, column: str, line: int, row_id: str) -> float:
    """One cell as a finite, non-negative float; DataError naming the cell otherwise."""
    cell = record.get(column)
    try:
        value = float(cell)
    except (TypeError, ValueError):
        detail = "missing value" if cell is None else f"{cell!r} is not a number"
        raise DataError(path, detail, line=line, column=column, row_id=row_id) from None
    if not math.isfinite(value) or value < 0:
        detail = f"{cell!r} is not a probability (expected a number >= 0)"
        raise DataError(path, detail, line=line, column=column, row_id=row_id)
    return value


def submission_frame(ids, probs: np.ndarray) -> pd.DataFrame:
    """The submission's rows: `id, winner_model_a, winner_model_b, winner_tie`, each row of
    `probs` (n, 3) rescaled to sum to 1; ValueError for a non-finite value."""
    probs = np.asarray(probs, dtype="float64")
    if not np.all(np.isfinite(probs)):
        raise ValueError("predictions contain non-finite values")
    probs = probs / probs.sum(axis=1, keepdims=True)
    frame = pd.DataFrame(probs, columns=list(LABEL_COLUMNS))
    frame.insert(0, ID_COLUMN, list(ids))
    return frame


def write_submission(ids, probs: np.ndarray, path: str | os.PathLike) -> Path:
    """Write `submission_frame(ids, probs)` as CSV, atomically (temp file + rename)."""
    return write_csv(submission_frame(ids, probs), path)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write `frame` as CSV without its index, atomically (temp file + rename): a reader never
    sees half a file, and an interrupted write leaves the earlier one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Opened here rather than by tempfile.mkstemp, whose files are private (0600) whatever
    # the umask: a submission must stay readable to whoever uploads it.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        with open(tmp, "x", newline="") as handle:
            frame.to_csv(handle, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
