"""Read and validate LMSYS Chatbot Arena CSV files, and split them into train and validation sets.

The competition files (``train.csv``, ``test.csv``) hold one comparison per record: an ``id``,
three text cells (``prompt``, ``response_a``, ``response_b``) that are JSON lists of conversation
turns, and in the training file three one-hot winner columns. Real exports contain quoted cells
with newlines, very large cells, JSON ``null`` turns and extra columns, so the reader uses the
:mod:`csv` module directly and reports every problem as a :class:`DataError` that names the file,
the line where the record starts, and the column, so that a bad row in a 57k-row file can be found
and fixed.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import pathlib
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Literal

import numpy as np
import pandas as pd

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_TEST_CSV",
    "DEFAULT_TRAIN_CSV",
    "LABEL_COLUMNS",
    "MIRROR",
    "NUM_CLASSES",
    "SAMPLE_DIR",
    "TEXT_COLUMNS",
    "DataError",
    "SUBSET",
    "check_id",
    "checked_pairs",
    "checked_texts",
    "csv_records",
    "decode_json",
    "json_type",
    "object_array",
    "open_input",
    "pairs_frame",
    "read_arena_csv",
    "texts_frame",
]

LABEL_COLUMNS = ("winner_model_a", "winner_model_b", "winner_tie")
"""The one-hot winner columns of a labelled file; ``label`` is the index of the one set to 1."""

TEXT_COLUMNS = ("prompt", "response_a", "response_b")
"""The text cells; each holds a JSON list of turns (strings, or null for a missing turn)."""

SUBSET = "subset"
"""An optional column of labelled rows naming the group each belongs to (RewardBench's subsets:
"chat", "safety-refusals", ...); readers keep it as text, `jaxpref evaluate` scores each group."""

MARGIN = "margin"
"""An optional float column of preference rows: how much the chosen side should beat the other
(TRL's reward-trainer ``margin``, e.g. a score difference); training reads it with
``--objective reward``."""

CLASS_NAMES = LABEL_COLUMNS
"""Class ``i`` of a model's output is ``CLASS_NAMES[i]``; also the submission's column names."""

NUM_CLASSES = len(CLASS_NAMES)

MIRROR = (1, 0, 2)
"""Class index after swapping sides A and B: A wins <-> B wins, a tie stays a tie."""

SAMPLE_DIR = pathlib.Path(__file__).resolve().parents[1] / "sample_data"
"""Folder of the embedded real sample files (see its README.md for source and licence)."""

DEFAULT_TRAIN_CSV = SAMPLE_DIR / "arena_train.csv"
"""1,000 real rows of the competition train.csv."""

DEFAULT_TEST_CSV = SAMPLE_DIR / "arena_test.csv"
"""The competition's real 3-row test.csv."""

_ID_COLUMN = "id"
_CSV_FIELD_LIMIT = 2**31 - 1  # cells can be megabytes; sys.maxsize overflows a C long on Windows.
_LABEL_VALUES = {0.0: 0, 1.0: 1}
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # in JSON source: may decode to one
_SCALAR_MODES = ("text", "error")

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A problem in an input file; the message names the file, line and column.

    The parts are also kept as attributes (``path``, ``line``, ``column``, ``row_id``, ``detail``;
    ``None`` where they do not apply) so that callers can report or test them. ``column`` is a
    column name, or a tuple of names when the problem involves several columns. ``unit`` names
    what ``line`` counts: ``"line"`` in text files, ``"row"`` (1-based) in Parquet files.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        detail: str,
        *,
        line: int | None = None,
        column: str | tuple[str, ...] | None = None,
        row_id: str | None = None,
        unit: str = "line",
    ) -> None:
        self.path = os.fspath(path)
        self.detail = detail
        self.line = line
        self.column = column
        self.row_id = row_id
        self.unit = unit
        where = self.path
        if line is not None:
            where += f", {unit} {line}"
            if row_id is not None:
                where += f" (id {row_id})"
        if isinstance(column, tuple):
            where += ", columns " + ", ".join(repr(name) for name in column)
        elif column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {detail}")


def _raise_field_limit() -> None:
    """Let the csv module read cells of any realistic size (its default limit is 128 KiB)."""
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(min(_CSV_FIELD_LIMIT, sys.maxsize))


def open_input(path: str, expected: str, mode: str = "r", **kwargs: object) -> IO:
    """``open(path, mode, **kwargs)``; a missing, directory or unreadable path is a DataError.

    ``expected`` names the kind of file wanted (for example ``"a CSV file"``) in the message.
    """
    try:
        return open(path, mode, **kwargs)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, f"is a directory, expected {expected}") from None
    except OSError as err:
        raise DataError(path, f"cannot open file ({err.strerror or err})") from None


def decode_json(text: str) -> object:
    """``json.loads`` that accepts raw control characters in strings; ValueError when invalid.

    Raw newlines and tabs inside JSON strings, which hand-edited or re-exported files contain,
    are still text. An unpaired surrogate escape (``\\ud83d`` without its low half) becomes
    U+FFFD: decoded as is, it gives a string the tokenizer cannot encode as UTF-8. Every failure
    (syntax, nesting too deep, a number too long for Python's integer conversion) is a
    ValueError whose message starts "not valid JSON".
    """
    try:
        value = json.loads(text, strict=False)
        return _replace_lone_surrogates(value) if _SURROGATE_ESCAPE.search(text) else value
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None
    except ValueError as err:  # JSONDecodeError, or int() refusing a number of over 4300 digits
        raise ValueError(f"not valid JSON ({err})") from None


def _replace_lone_surrogates(value: object) -> object:
    """``value`` with each lone surrogate in its strings (and keys) replaced by U+FFFD."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_replace_lone_surrogates(k): _replace_lone_surrogates(v) for k, v in value.items()}
    return value


def json_type(value: object) -> str:
    """Name a decoded JSON value's type the way JSON does, with a short excerpt."""
    if isinstance(value, bool):
        kind = "a boolean"
    elif isinstance(value, (int, float)):
        kind = "a number"
    elif isinstance(value, str):
        kind = "a string"
    elif isinstance(value, dict):
        kind = "an object"
    elif isinstance(value, list):
        kind = "a list"
    elif value is None:
        return "null"
    else:  # not from JSON: a Parquet cell can be bytes, a date, ...
        kind = type(value).__name__
    text = json.dumps(value, ensure_ascii=False, default=repr)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} ({text})"


def object_array(values: Sequence[object]) -> np.ndarray:
    """Pack values (lists) into a 1-D object array so that pandas keeps each one as one cell."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _parse_turns(cell: str, scalars_as_text: bool) -> tuple[list[str | None], bool]:
    """Decode one text cell into its list of turns; raise ValueError describing what is wrong.

    With ``scalars_as_text``, a JSON number or boolean turn becomes its JSON text and a cell that
    is one JSON scalar becomes a one-turn list; the flag returned says whether that happened.
    """
    if not cell.strip():
        raise ValueError("empty cell, expected a JSON list of turns")
    try:
        value = decode_json(cell)
    except ValueError as err:
        raise ValueError(
            f'{err}; expected a JSON list of turns such as ["Hi!", "Thanks."]'
        ) from None
    converted = False
    if scalars_as_text and (value is None or isinstance(value, (str, int, float))):
        value, converted = [value], True
    if not isinstance(value, list):
        raise ValueError(f"expected a JSON list of turns (strings or null), got {json_type(value)}")
    if not value:
        raise ValueError("empty list of turns, expected at least one turn")
    turns: list[str | None] = []
    for i, turn in enumerate(value):
        if scalars_as_text and isinstance(turn, (int, float)):  # bool is an int
            turn, converted = json.dumps(turn), True
        if turn is not None and not isinstance(turn, str):
            raise ValueError(f"turn {i} is {json_type(turn)}, expected a string or null")
        turns.append(turn)
    return turns, converted


def _parse_winner(cell: str) -> int:
    """Decode one winner cell ("0", "1", "0.0", "1.0", ...) to 0 or 1; raise ValueError if not."""
    text = cell.strip()
    if not text:
        raise ValueError("empty cell, expected 0 or 1")
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{cell!r} is not a number, expected 0 or 1") from None
    if number not in _LABEL_VALUES:
        raise ValueError(f"{cell!r} is not 0 or 1")
    return _LABEL_VALUES[number]


def read_arena_csv(
    path: str | os.PathLike,
    labelled: bool,
    scalars: Literal["text", "error"] | None = None,
) -> pd.DataFrame:
    """Read a Chatbot Arena CSV (competition ``train.csv`` or ``test.csv`` format) and validate it.

    Args:
        path: the CSV file. UTF-8, with or without a byte-order mark; LF or CRLF line endings;
            quoted cells may span several lines.
        labelled: ``True`` for training data, which must also hold the one-hot columns
            ``LABEL_COLUMNS``; ``False`` for test data (winner columns, if any, are ignored).
        scalars: how to read a text cell holding JSON numbers or booleans (``[42]``,
            ``[true]``) or a single JSON scalar instead of a list (``42``, ``"text"``):
            ``"text"`` reads each such value as its JSON text (``"42"``, ``"true"``) and a
            lone scalar as a one-turn list, logs a warning with the number of such cells and
            where the first one is, and stores the number in ``frame.attrs["scalar_cells"]``;
            ``"error"`` raises DataError. The default, ``None``, is ``"error"`` for labelled
            (training) data and ``"text"`` otherwise, so that inference predicts every row.

    Returns:
        A DataFrame in file order with a fresh ``RangeIndex`` and the columns ``id`` (the string
        exactly as written, so that a submission can repeat it verbatim), ``prompt``,
        ``response_a`` and ``response_b`` (each a ``list[str | None]`` of turns), ``label``
        (only when ``labelled``: 0, 1 or 2, the index in ``LABEL_COLUMNS`` of the winner),
        ``subset`` (when the file has one: `SUBSET`) and ``line`` (the 1-based line where the
        record starts). Other columns, such as ``model_a`` and ``model_b``, are ignored.

    Raises:
        DataError: for any problem with the file (missing, unreadable, empty, not UTF-8, bad
            header, a row with the wrong number of fields, malformed or wrongly shaped JSON, a
            winner row that is not one-hot, an empty or duplicate id). The message names the file,
            the line, the id where known, and the column.
        ValueError: ``scalars`` is not ``"text"``, ``"error"`` or ``None``.

    Winner cells may be written as integers or floats ("1", "1.0"); any value other than 0 or 1
    is an error. The prompt and response lists of a row are not required to have the same
    length (the model code decides how to pair turns), and a turn may be JSON ``null``. An
    unpaired surrogate escape becomes U+FFFD (see :func:`decode_json`).
    """
    path_str = os.fspath(path)
    if scalars is None:
        scalars = "error" if labelled else "text"
    if scalars not in _SCALAR_MODES:
        raise ValueError(f"scalars must be 'text', 'error' or None, got {scalars!r}")
    required = (_ID_COLUMN, *TEXT_COLUMNS, *(LABEL_COLUMNS if labelled else ()))
    ids: list[str] = []
    texts: dict[str, list[list[str | None]]] = {name: [] for name in TEXT_COLUMNS}
    labels: list[int] = []
    lines: list[int] = []
    subsets: list[str] = []
    first_line_of_id: dict[str, int] = {}
    scalar_cells: list[tuple[int, str]] = []  # (line, column) read with scalars="text"

    with open_input(path_str, "a CSV file", encoding="utf-8-sig", newline="") as handle:
        for start, cells in csv_records(path_str, handle, required, (SUBSET,)):
            row_id = cells[_ID_COLUMN]
            check_id(path_str, row_id, start, first_line_of_id)
            for name in TEXT_COLUMNS:
                texts[name].append(
                    _text_cell(path_str, cells, name, start, row_id, scalars, scalar_cells)
                )
            if labelled:
                labels.append(_parse_label(path_str, cells, start, row_id))
            ids.append(row_id)
            lines.append(start)
            if SUBSET in cells:
                subsets.append(cells[SUBSET])

    if not ids:
        raise DataError(path_str, "header line but no data rows after it", line=1)
    _warn_scalar_cells(path_str, scalar_cells)
    frame = _arena_frame(ids, texts, labels if labelled else None, subsets, lines)
    frame.attrs["scalar_cells"] = len(scalar_cells)
    return frame


def _arena_frame(
    ids: list[str],
    texts: dict[str, list[list[str | None]]],
    labels: list[int] | None,
    subsets: list[str],
    lines: list[int],
) -> pd.DataFrame:
    """`read_arena_csv`'s frame of its columns (`labels` None: unlabelled; no `subsets`: no
    subset column)."""
    columns = {_ID_COLUMN: ids, **{name: object_array(texts[name]) for name in TEXT_COLUMNS}}
    if labels is not None:
        columns["label"] = np.asarray(labels, dtype=np.int64)
    if subsets:
        columns[SUBSET] = subsets
    columns["line"] = np.asarray(lines, dtype=np.int64)
    return pd.DataFrame(columns)


def checked_pairs(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """The ``id`` and text columns of an in-memory frame, checked as ``read_arena_csv`` checks
    a file: at least one row, every text cell a list (tuple, array) of at least one turn, each
    a string or None. Other columns are left out.

    Raises:
        DataError: naming ``source`` (what the frame is, for the message), the row's index and
            id, and the column.
    """
    return checked_texts(frame, source, TEXT_COLUMNS)


def checked_texts(frame: pd.DataFrame, source: str, text_columns: Sequence[str]) -> pd.DataFrame:
    """The ``id`` and `text_columns` of an in-memory frame, each text cell checked as
    `checked_pairs` checks the arena's."""
    missing = [name for name in (_ID_COLUMN, *text_columns) if name not in frame.columns]
    if missing:
        detail = f"missing column(s) {', '.join(missing)}; expected those of read_arena_csv"
        raise DataError(source, detail, column=tuple(missing))
    if not len(frame):
        raise DataError(source, "no rows to predict")
    columns: dict[str, Sequence[object]] = {_ID_COLUMN: frame[_ID_COLUMN].tolist()}
    for name in text_columns:
        turns = []
        for index, row_id, cell in zip(frame.index, frame[_ID_COLUMN], frame[name], strict=True):
            try:
                turns.append(_turn_list(cell))
            except ValueError as err:
                where = {"line": index, "column": name, "row_id": row_id, "unit": "index"}
                raise DataError(source, str(err), **where) from None
        columns[name] = object_array(turns)
    return pd.DataFrame(columns)


def _turn_list(cell: object) -> list[str | None]:
    """A text cell's turns; ValueError saying what is wrong with it."""
    if not isinstance(cell, (list, tuple, np.ndarray)):
        raise ValueError(
            f"{type(cell).__name__}, expected a list of turns (strings or None), e.g. ['Hi!']"
        )
    if not len(cell):
        raise ValueError("empty list of turns, expected at least one turn")
    for i, turn in enumerate(cell):
        if turn is not None and not isinstance(turn, str):
            raise ValueError(f"turn {i} is {type(turn).__name__}, expected a string or None")
    return list(cell)


def pairs_frame(
    prompts: object, responses_a: object, responses_b: object, source: str
) -> pd.DataFrame:
    """Rows as ``read_arena_csv(..., labelled=False)`` gives them (less ``line``) from Python
    values: three strings (one pair, one turn each), or three lists of the same length holding
    one entry per pair, a string (one turn) or a list of turns. Ids are "0", "1", ...

    Raises:
        DataError: naming ``source``, the entry and the column, for lists of different lengths
            or a value that is neither a string nor a list of turns.
    """
    given = dict(zip(TEXT_COLUMNS, (prompts, responses_a, responses_b), strict=True))
    return texts_frame(given, source, "pair")


_COUNTS = {2: "two", 3: "three"}


def texts_frame(given: dict[str, object], source: str, unit: str) -> pd.DataFrame:
    """Rows of the text columns `given` ({column: value}) from Python values, as `pairs_frame`
    makes them: one string per column (one row), or one list per column, an entry a `unit` (a
    string or a list of turns). Ids are "0", "1", ...; checked by `checked_texts`."""
    if all(isinstance(value, str) for value in given.values()):
        given = {name: [value] for name, value in given.items()}
    count = _COUNTS.get(len(given), str(len(given)))
    entries = {}
    for name, values in given.items():
        if isinstance(values, str) or not isinstance(values, Iterable):
            kind = type(values).__name__
            detail = f"{kind}: pass {count} strings, or {count} lists (a {unit} each)"
            raise DataError(source, detail, column=name)
        entries[name] = [[value] if isinstance(value, str) else value for value in values]
    lengths = {name: len(values) for name, values in entries.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name} {length}" for name, length in lengths.items())
        detail = f"one entry a {unit} in each list, but their lengths differ: {shown}"
        raise DataError(source, detail)
    ids = [str(i) for i in range(next(iter(lengths.values())))]
    columns = {name: object_array(values) for name, values in entries.items()}
    frame = pd.DataFrame({_ID_COLUMN: ids, **columns})
    return checked_texts(frame, source, list(given))


def _text_cell(
    path: str,
    cells: dict[str, str],
    name: str,
    line: int,
    row_id: str,
    scalars: str,
    scalar_cells: list[tuple[int, str]],
) -> list[str | None]:
    """The turns of one text cell; notes in `scalar_cells` a cell read with scalars as text."""
    try:
        turns, converted = _parse_turns(cells[name], scalars == "text")
    except ValueError as err:
        raise DataError(path, str(err), line=line, column=name, row_id=row_id) from None
    if converted:
        scalar_cells.append((line, name))
    return turns


def _warn_scalar_cells(path: str, scalar_cells: list[tuple[int, str]]) -> None:
    if scalar_cells:
        log.warning(
            "%s: read %d text cell(s) holding JSON numbers, booleans or a lone scalar as text; "
            "the first is on line %d, column %r",
            path,
            len(scalar_cells),
            *scalar_cells[0],
        )


def csv_records(
    path: str, handle: IO[str], required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line where the record starts, {column: cell}) for each record of a CSV file open
    as text: the `required` columns, and those of `optional` the header has.

    Blank lines are skipped. A bad header, a record with the wrong number of fields, malformed
    CSV and text that is not UTF-8 raise DataError.
    """
    _raise_field_limit()
    reader = csv.reader(handle, strict=True)
    line = 1  # line where the record being read starts
    try:
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(path, "file is empty, expected a header line") from None
        header = [name.strip() for name in header]
        if any("\x00" in name for name in header):
            detail = "not valid UTF-8 text (NUL characters in the header: a UTF-16 file?)"
            raise DataError(path, detail, line=1)
        _check_header(path, header, required)
        present = (*required, *(name for name in optional if name in header))
        _check_header(path, header, present)  # an optional column once, too
        position = {name: header.index(name) for name in present}
        line = reader.line_num + 1
        for row in reader:
            start, line = line, reader.line_num + 1
            if not row:  # a blank line between records
                continue
            if len(row) != len(header):
                id_at = position[_ID_COLUMN]
                row_id = row[id_at] if len(row) > id_at else None
                raise _field_count_error(path, header, row, start, row_id)
            yield start, {name: row[at] for name, at in position.items()}
    except csv.Error as err:
        raise DataError(path, f"malformed CSV ({err})", line=line) from None
    except UnicodeDecodeError as err:
        # The decoder reads ahead in blocks, so find the offending line from the bytes.
        bad_line = _first_non_utf8_line(path) or line
        raise DataError(path, f"not valid UTF-8 text ({err.reason})", line=bad_line) from None


def check_id(
    path: str, row_id: str, line: int, first_line_of_id: dict[str, int], unit: str = "line"
) -> None:
    """Check that ``row_id`` is not blank and not seen before, then record its line (or row:
    ``unit``); DataError naming both lines otherwise."""
    where = {"line": line, "column": _ID_COLUMN, "unit": unit}
    if not row_id.strip():
        raise DataError(path, "empty id", **where)
    if row_id in first_line_of_id:
        detail = f"duplicate id {row_id!r}, first seen on {unit} {first_line_of_id[row_id]}"
        raise DataError(path, detail, **where)
    first_line_of_id[row_id] = line


def _field_count_error(
    path: str, header: list[str], row: list[str], line: int, row_id: str | None
) -> DataError:
    """Describe a record whose field count differs from the header's, naming the columns."""
    if len(row) < len(header):
        absent = tuple(header[len(row) :])
        detail = (
            f"has {len(row)} fields but the header has {len(header)}: no value for "
            f"{'this column' if len(absent) == 1 else 'these columns'}; "
            "check the quoting of this record"
        )
    else:
        absent = (header[-1],)
        detail = (
            f"has {len(row)} fields but the header has {len(header)}: "
            f"{len(row) - len(header)} extra field(s) after the last column; "
            "check the quoting of this record"
        )
    return DataError(
        path, detail, line=line, column=absent if len(absent) > 1 else absent[0], row_id=row_id
    )


def _first_non_utf8_line(path: str) -> int | None:
    """Return the 1-based physical line holding the first byte sequence that is not UTF-8."""
    with open(path, "rb") as raw:
        for number, data in enumerate(raw, start=1):
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def _check_header(path: str, header: list[str], required: tuple[str, ...]) -> None:
    """Check that every required column is present exactly once (duplicates would be ambiguous)."""
    missing = tuple(name for name in required if name not in header)
    if missing:
        found = ", ".join(repr(name) for name in header) or "none"
        raise DataError(
            path,
            f"missing from the header (found: {found}; required: {', '.join(required)})",
            line=1,
            column=missing if len(missing) > 1 else missing[0],
        )
    for name in required:
        if header.count(name) > 1:
            raise DataError(
                path, "column appears more than once in the header", line=1, column=name
            )


def _parse_label(path: str, cells: dict[str, str], line: int, row_id: str) -> int:
    """Turn the three winner cells of one row into a class index; they must be one-hot."""
    values = []
    for name in LABEL_COLUMNS:
        try:
            values.append(_parse_winner(cells[name]))
        except ValueError as err:
            raise DataError(path, str(err), line=line, column=name, row_id=row_id) from None
    if sum(values) != 1:
        shown = ", ".join(f"{name}={cells[name]}" for name in LABEL_COLUMNS)
        problem = (
            "no winner column is 1" if sum(values) == 0 else "more than one winner column is 1"
        )
        raise DataError(
            path,
            f"{problem} ({shown}); exactly one must be 1",
            line=line,
            column=LABEL_COLUMNS,
            row_id=row_id,
        )
    return values.index(1)
