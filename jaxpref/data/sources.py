"""One reader for every source of comparisons, told apart by what its path is.

`read_rows(path)` reads, as `arena.read_arena_csv` frames:

- a *directory holding state.json*: a Hugging Face ``datasets`` directory written by
  ``Dataset.save_to_disk`` (``data-*.arrow`` Arrow IPC stream files listed in state.json's
  ``_data_files``, with ``dataset_info.json``), read with pyarrow alone: no ``datasets``
  package, no network. A ``DatasetDict`` directory (``dataset_dict.json``) is refused with the
  advice to pass one of its splits' directories;
- *another directory holding* ``*.parquet`` *files*: the shards of one table, read in sorted
  name order (a Hugging Face repository's folder of one split, say);
- a *file named* ``.csv``: an arena CSV;
- a *file named* ``.jsonl``, ``.json``, ``.ndjson`` *or* ``.parquet`` (``.gz`` allowed): a
  preference file (TRL standard or conversational records, Anthropic HH-RLHF dialogues; see
  `jaxpref.data.preferences`);
- *any other file* by its first bytes: Parquet or gzip magic bytes, or a ``{`` as the first
  character that is not blank, make a preference file; anything else is read as an arena CSV.

The records of directories are preference records too. Preference rows get their A/B order
from a fixed seed (`ROW_ORDER_SEED`), so every command reads the same frame from a file and
the labels a run was trained and validated on are those `jaxpref evaluate` reads back. Their
ids are the source's name (less its suffixes) and the record's number: ``prefs-12`` is line 12
of ``prefs.jsonl``; in a directory the number counts rows over its files in order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from jaxpref.data import arena, preferences
from jaxpref.data.arena import DataError, decode_json, open_input
from jaxpref.data.preferences import Record

__all__ = [
    "ARENA_CSV",
    "PARQUET_SHARDS",
    "PREFERENCE_FILE",
    "ROW_ORDER_SEED",
    "SAVED_DATASET",
    "check_distinct_ids",
    "read_pairs",
    "read_rows",
    "source_kind",
    "training_file",
]

ARENA_CSV = "an arena CSV"
PREFERENCE_FILE = "a preference file"
SAVED_DATASET = "a datasets save_to_disk directory"
PARQUET_SHARDS = "a folder of Parquet shards"
PREFERENCE_SUFFIXES = (".jsonl", ".json", ".ndjson", ".parquet", ".gz")
STATE_FILE = "state.json"  # what datasets' save_to_disk writes beside its Arrow files
DATASET_DICT_FILE = "dataset_dict.json"  # DatasetDict.save_to_disk: one folder per split
ROW_ORDER_SEED = 0
"""Seeds the A/B order of preference rows read by `read_rows`: a file's rows are a function of
the file alone (not of a run's --seed), so every command agrees on its labels."""

_SNIFF_BYTES = 64
_MAGIC = (b"PAR1", b"\x1f\x8b")  # Parquet, gzip
_BOM = b"\xef\xbb\xbf"

log = logging.getLogger(__name__)


def source_kind(path: str | os.PathLike) -> str:
    """Which source `path` is: ARENA_CSV, PREFERENCE_FILE, SAVED_DATASET or PARQUET_SHARDS
    (rules in the module docstring).

    Raises:
        DataError: naming the path, when it does not exist, cannot be read, or is a directory
            of neither kind (saying what it lacks).
    """
    path_str = os.fspath(path)
    if os.path.isdir(path_str):
        return _directory_kind(path_str)
    with open_input(path_str, "a file of rows", "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    name = path_str.lower()
    if name.endswith(".csv"):
        return ARENA_CSV
    if name.endswith(PREFERENCE_SUFFIXES) or head.startswith(_MAGIC):
        return PREFERENCE_FILE
    return PREFERENCE_FILE if head.removeprefix(_BOM).lstrip()[:1] == b"{" else ARENA_CSV


def _directory_kind(path: str) -> str:
    """SAVED_DATASET or PARQUET_SHARDS; DataError for a DatasetDict or a directory of neither."""
    if os.path.isfile(os.path.join(path, STATE_FILE)):
        return SAVED_DATASET
    if os.path.isfile(os.path.join(path, DATASET_DICT_FILE)):
        splits = sorted(entry.name for entry in os.scandir(path) if entry.is_dir())
        example = os.path.join(path, splits[0] if splits else "train")
        raise DataError(
            path, f"a datasets DatasetDict directory ({DATASET_DICT_FILE}): pass the directory "
            f"of one of its splits ({', '.join(splits) or 'none found'}), e.g. {example}",
        )  # fmt: skip
    if _parquet_shards(path):
        return PARQUET_SHARDS
    raise DataError(
        path, f"neither a datasets save_to_disk directory (no {STATE_FILE}) nor a folder of "
        "Parquet shards (no *.parquet file)",
    )  # fmt: skip


def read_rows(path: str | os.PathLike, labelled: bool = True) -> pd.DataFrame:
    """The rows of any source (an arena CSV, a preference file, a datasets save_to_disk
    directory or a folder of Parquet shards), as `arena.read_arena_csv(path, labelled)`
    returns them: ``id``, ``prompt``, ``response_a``, ``response_b`` (lists of turns),
    ``label`` when `labelled`, ``line``.

    Preference rows never tie (``label`` 0 or 1, the chosen side); unlabelled, they are the
    same rows without ``label``, so predictions of them line up with `read_rows(path)`'s labels.

    Raises:
        DataError: naming the file (the shard file, in a directory), the line or row and the
            column or field at fault; or the path, when it is no source (`source_kind`).

    Example:
        train = read_rows("hh-rlhf/train")  # a datasets.save_to_disk directory
        test = read_rows("test.csv", labelled=False)
    """
    path_str = os.fspath(path)
    if source_kind(path_str) == ARENA_CSV:
        return arena.read_arena_csv(path_str, labelled)
    frame = read_pairs(path_str)
    return frame if labelled else frame.drop(columns="label")


def read_pairs(
    path: str | os.PathLike, seed: int = ROW_ORDER_SEED, id_prefix: str | None = None
) -> pd.DataFrame:
    """The labelled rows of a source of preference records (any `read_rows` source but an
    arena CSV), A/B order drawn from `seed`, ids ``f"{id_prefix}-{number}"`` (default prefix:
    the source's name less its suffixes). Returns what `preferences.read_chosen_rejected` does.

    Raises:
        DataError: as `read_rows`; also for an arena CSV, which holds no preference records.
    """
    path_str = os.fspath(path)
    kind = source_kind(path_str)
    prefix = id_prefix if id_prefix is not None else source_name(path_str)
    if kind == ARENA_CSV:
        raise DataError(
            path_str, "an arena CSV, expected preference records (chosen and rejected): "
            "arena rows are training or validation rows, not extra ones",
        )  # fmt: skip
    if kind == PREFERENCE_FILE:
        return preferences.read_chosen_rejected(path_str, seed, prefix)
    if kind == SAVED_DATASET:
        shards, reader = _saved_dataset_shards(path_str), preferences.arrow_stream_records
    else:
        shards, reader = _parquet_shards(path_str), preferences.parquet_records
    frame = preferences.rows_of_records(
        _shard_records(shards, reader), "row", np.random.default_rng(seed), prefix
    )
    if not len(frame):
        raise DataError(path_str, f"{kind} without rows, expected records with chosen and rejected")
    log.info("%s: %d rows in %d shard(s) (%s)", path_str, len(frame), len(shards), kind)
    return frame


def source_name(path: str) -> str:
    """A source's name for its row ids: the file or directory name less PREFERENCE_SUFFIXES."""
    name = Path(os.path.abspath(path)).name
    while name.lower().endswith(PREFERENCE_SUFFIXES) and "." in name[1:]:
        name = name[: name.rindex(".")]
    return name


def _parquet_shards(directory: str) -> list[str]:
    """The ``*.parquet`` files directly in `directory`, in sorted name order."""
    names = sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.name.endswith(".parquet") and not entry.is_dir()
    )
    return [os.path.join(directory, name) for name in names]


def _saved_dataset_shards(directory: str) -> list[str]:
    """The Arrow files state.json lists (``_data_files``), in its order."""
    path = os.path.join(directory, STATE_FILE)
    with open_input(path, "a JSON file", "rb") as handle:
        content = handle.read()
    try:
        state = decode_json(content.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise DataError(path, f"not valid UTF-8 text ({err.reason})") from None
    except ValueError as err:
        raise DataError(path, str(err)) from None
    files = state.get("_data_files") if isinstance(state, dict) else None
    names = [entry.get("filename") if isinstance(entry, dict) else None for entry in files or []]
    if not names or not all(isinstance(name, str) for name in names):
        detail = 'expected a list of {"filename": ...} (the Arrow files save_to_disk wrote)'
        raise DataError(path, detail, column="_data_files")
    for name in names:
        if os.path.basename(name) != name or name in ("", ".", ".."):
            detail = f"{name!r} is not the name of a file in {directory}"
            raise DataError(path, detail, column="_data_files")
    return [os.path.join(directory, name) for name in names]


def _shard_records(shards: list[str], reader) -> Iterator[Record]:
    """The records of each shard in turn (`reader(path, handle)` yields (row, record)),
    numbered over all of them."""
    number = 0
    for shard in shards:
        with open_input(shard, "a data file", "rb") as handle:
            for row, fields in reader(shard, handle):
                number += 1
                yield Record(shard, row, number, fields)


def check_distinct_ids(frames: dict[str, pd.DataFrame]) -> None:
    """DataError naming both sources when an id is in two of the frames ({source: frame}):
    a run's split.csv maps each id to one split, and a row in two splits would leak."""
    first_source: dict[str, str] = {}
    for source, frame in frames.items():
        for row_id, line in zip(frame["id"], frame["line"], strict=True):
            if row_id in first_source:
                raise DataError(
                    source, f"id {row_id!r} is also in {first_source[row_id]}: the training "
                    "and validation files must not share ids", line=int(line), column="id",
                )  # fmt: skip
        first_source.update(dict.fromkeys(frame["id"], source))


def training_file(path: str) -> str:
    """The labelled rows to train on: `path`, or (when empty) the embedded sample, said loudly:
    a model of its 1,000 rows is a demonstration, not one to submit."""
    if path:
        return path
    log.warning(
        "warning: no --train-file given: training on the embedded 1,000-row sample (%s), a "
        "demonstration; pass --train-file with the competition's train.csv for a real model",
        arena.DEFAULT_TRAIN_CSV,
    )
    return str(arena.DEFAULT_TRAIN_CSV)
