"""Fuzz the file readers: mutated valid files must end in a DataError or a correct parse.

Each test starts from a small valid file (an arena CSV, or a preference file in one of the
formats of ``tests/fixtures``, or such records as a ``datasets`` save_to_disk directory or a
folder of Parquet shards, one of whose files is mutated), applies a few random mutations (bytes
flipped, quotes, delimiters, brackets and line breaks inserted, the file truncated, bytes
deleted, lines duplicated or dropped, the text re-encoded as latin-1, cp1252, UTF-16 or UTF-8
with a byte-order mark) and reads the result. Any exception other than `arena.DataError` is a
bug, and so is a frame that breaks the reader's contract (column types, unique ids, labels, text
that encodes as UTF-8 for the tokenizer). Re-encodings and duplicated records also have exact
expected results.

CI runs a few hundred examples in all (``EXAMPLES`` per test, under a minute together). Run
more with, for example::

    JAXPREF_FUZZ_EXAMPLES=5000 python -m pytest -q tests/test_fuzz_readers.py

(the variable sets the examples per test; ``--hypothesis-show-statistics`` shows how many
parsed and how many ended in DataError). Hypothesis keeps failing examples in ``.hypothesis/``
and replays them first on the next run.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_parquet_shards, write_saved_dataset
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st

from jaxpref.data.arena import LABEL_COLUMNS, TEXT_COLUMNS, DataError, read_arena_csv
from jaxpref.data.preferences import read_chosen_rejected
from jaxpref.data.sources import read_rows

EXAMPLES = int(os.environ.get("JAXPREF_FUZZ_EXAMPLES", "50"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FIXTURES = Path(__file__).parent / "fixtures"
PREFERENCE_FILES = sorted(path.name for path in FIXTURES.glob("*.jsonl"))

ARENA_HEADER = ["id", "model_a", "model_b", *TEXT_COLUMNS, *LABEL_COLUMNS]
ARENA_ROWS = [
    ["101", "m1", "m2", '["Hi?"]', '["Hello"]', '["Hey"]', "1", "0", "0"],
    ["102", "m1", "m3", '["two\\nlines", "more"]', '["a", null]', '["b", "c"]', "0", "1", "0"],
    ["103", "m2", "m3", '["ünï €"]', '["raw\nnewline"]', '["tab\there"]', "0", "0", "1"],
    ["104", "m3", "m1", '["q, ok"]', '["say \\"x\\""]', '["\\ud83d\\udc3e"]', "0.0", "1.0", "0"],
    ["105", "m2", "m1", '["n"]', "[true]", "[42]", "1", "0", "0"],  # scalars: inference only
]


def arena_bytes(rows: list[list[str]] = ARENA_ROWS) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(ARENA_HEADER)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


INSERTS = [b'"', b'""', b",", b"\n", b"\r", b"\r\n", b"[", b"]", b"{", b"}", b":", b"\\", b"\x00"]
INSERTS += [b"\xff", b"\xc3", b"\xef\xbb\xbf", b"null", b"true", b"1e999", b" ", b"9" * 4400]
INSERTS += [b'\\ud800"', b'"role": "bot", ', b'"content": 1, ', b'"prompt": [], ', b"[]"]
ENCODINGS = ["latin-1", "cp1252", "utf-16", "utf-16-le", "utf-8-sig"]


@st.composite
def mutation(draw: st.DrawFn) -> tuple[str, float, object]:
    """One (kind, where, argument) edit; ``where`` is a fraction of the length."""
    kind = draw(st.sampled_from(["flip", "insert", "truncate", "delete", "lines", "encode"]))
    where = draw(st.floats(0, 1))
    if kind == "flip":
        return kind, where, draw(st.integers(1, 255))
    if kind == "insert":
        return kind, where, draw(st.sampled_from(INSERTS) | st.binary(min_size=1, max_size=4))
    if kind == "delete":
        return kind, where, draw(st.integers(1, 40))
    if kind == "lines":
        return kind, where, draw(st.sampled_from([0, 2, 3]))  # copies of one line
    if kind == "encode":
        return kind, where, draw(st.sampled_from(ENCODINGS))
    return kind, where, None


def mutate(content: bytes, edits: list[tuple[str, float, object]]) -> bytes:
    """Apply the edits in order."""
    for kind, where, arg in edits:
        at = int(where * len(content))
        if kind == "flip" and content:
            at = min(at, len(content) - 1)
            content = content[:at] + bytes([content[at] ^ arg]) + content[at + 1 :]
        elif kind == "insert":
            content = content[:at] + arg + content[at:]
        elif kind == "truncate":
            content = content[:at]
        elif kind == "delete":
            content = content[:at] + content[at + arg :]
        elif kind == "lines":
            lines = content.splitlines(keepends=True)
            if lines:
                i = min(int(where * len(lines)), len(lines) - 1)
                lines[i : i + 1] = [lines[i]] * arg
                content = b"".join(lines)
        elif kind == "encode":
            content = content.decode("utf-8", "replace").encode(arg, "replace")
    return content


EDITS = st.lists(mutation(), min_size=1, max_size=4)


def check_frame(frame: pd.DataFrame, labels: set[int]) -> None:
    """The readers' contract: columns and types, unique ids, labels, UTF-8-encodable text."""
    assert list(frame.columns) == ["id", *TEXT_COLUMNS, *(["label"] if labels else []), "line"]
    assert len(frame) > 0 and isinstance(frame.index, pd.RangeIndex)
    assert frame["id"].map(lambda x: isinstance(x, str) and x.strip() != "").all()
    assert frame["id"].is_unique
    assert frame["line"].dtype == np.int64 and frame["line"].is_monotonic_increasing
    if labels:
        assert frame["label"].dtype == np.int64 and set(frame["label"]) <= labels
    for name in TEXT_COLUMNS:
        for turns in frame[name]:
            assert isinstance(turns, list) and turns
            for turn in turns:
                assert turn is None or isinstance(turn, str)
                if turn is not None:
                    turn.encode("utf-8")  # the tokenizer needs encodable text


def read(reader, path: Path, content: bytes, **kwargs) -> pd.DataFrame | DataError:
    """The reader's frame, or the DataError it raised (which must name the file)."""
    path.write_bytes(content)
    try:
        frame = reader(path, **kwargs)
    except DataError as err:
        assert str(path) in str(err) and "\n" not in str(err).replace(str(path), "")
        event("DataError")
        return err
    event("parsed")
    return frame


@pytest.mark.parametrize("labelled", [True, False])
@FUZZ
@given(edits=EDITS)
def test_arena_csv_survives_mutations(tmp_path, labelled, edits):
    rows = ARENA_ROWS if not labelled else ARENA_ROWS[:-1]
    got = read(
        read_arena_csv, tmp_path / "a.csv", mutate(arena_bytes(rows), edits), labelled=labelled
    )
    if isinstance(got, pd.DataFrame):
        check_frame(got, {0, 1, 2} if labelled else set())


@pytest.mark.parametrize("name", PREFERENCE_FILES)
@FUZZ
@given(edits=EDITS, compress=st.booleans())
def test_preference_jsonl_survives_mutations(tmp_path, name, edits, compress):
    content = mutate((FIXTURES / name).read_bytes(), edits)
    if compress:
        content = gzip.compress(content, mtime=0)
    got = read(read_chosen_rejected, tmp_path / f"p.jsonl{'.gz' * compress}", content)
    if isinstance(got, pd.DataFrame):
        check_frame(got, {0, 1})


@pytest.mark.parametrize("name", ["trl_standard.parquet", "trl_conversational_implicit.parquet"])
@FUZZ
@given(edits=st.lists(mutation().filter(lambda m: m[0] != "encode"), min_size=1, max_size=3))
def test_preference_parquet_survives_mutations(tmp_path, name, edits):
    got = read(read_chosen_rejected, tmp_path / name, mutate((FIXTURES / name).read_bytes(), edits))
    if isinstance(got, pd.DataFrame):
        check_frame(got, {0, 1})


# A directory's files, by kind: (name of the file to mutate in it, whether text edits apply).
DIRECTORY_FILES = {
    "saved": ["data-00000-of-00002.arrow", "data-00001-of-00002.arrow", "state.json"],
    "shards": ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"],
}
DIRECTORY_CASES = [(kind, name) for kind, names in DIRECTORY_FILES.items() for name in names]


@pytest.mark.parametrize(("kind", "target"), DIRECTORY_CASES)
@FUZZ
@given(
    name=st.sampled_from(["trl_standard.jsonl", "trl_conversational.jsonl"]),
    edits=st.lists(mutation(), min_size=1, max_size=3),
)
def test_directories_survive_a_mutated_file(tmp_path, kind, target, name, edits):
    """A save_to_disk directory (its Arrow stream files or state.json) or a folder of Parquet
    shards with one file mutated; errors name a file in the directory (the mutated one, or one
    a mutated state.json lists)."""
    records = [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()] * 2
    directory = Path(tempfile.mkdtemp(dir=tmp_path)) / "pairs"
    write = write_saved_dataset if kind == "saved" else write_parquet_shards
    write(directory, records, 2)
    path = directory / target
    path.write_bytes(mutate(path.read_bytes(), edits))
    try:
        frame = read_rows(directory)
    except DataError as err:
        assert str(directory) in str(err) and "\n" not in str(err)
        event("DataError")
        return
    event("parsed")
    check_frame(frame, {0, 1})


@FUZZ
@given(encoding=st.sampled_from(ENCODINGS), labelled=st.booleans(), ascii_only=st.booleans())
def test_arena_csv_encodings(tmp_path, encoding, labelled, ascii_only):
    """UTF-8 with a BOM reads the same; other encodings do unless a non-ASCII byte differs."""
    rows = ARENA_ROWS[:-1]
    if ascii_only:
        rows = [[cell.encode("ascii", "ignore").decode() for cell in row] for row in rows]
    original = arena_bytes(rows)
    expected = read_arena_csv(_written(tmp_path / "ok.csv", original), labelled=labelled)
    got = read(read_arena_csv, tmp_path / "a.csv", _reencode(original, encoding), labelled=labelled)
    if encoding == "utf-8-sig" or (ascii_only and encoding in ("latin-1", "cp1252")):
        pd.testing.assert_frame_equal(got, expected)
    else:
        assert isinstance(got, DataError) and "UTF-8" in got.detail


@FUZZ
@given(name=st.sampled_from(PREFERENCE_FILES), encoding=st.sampled_from(ENCODINGS))
def test_preference_encodings(tmp_path, name, encoding):
    """The fixtures hold non-ASCII text: only UTF-8 with a BOM reads the same."""
    original = (FIXTURES / name).read_bytes()
    got = read(read_chosen_rejected, tmp_path / "p.jsonl", _reencode(original, encoding))
    if encoding == "utf-8-sig":
        pd.testing.assert_frame_equal(got, read_chosen_rejected(FIXTURES / name))
    else:
        assert isinstance(got, DataError) and got.line is not None


@FUZZ
@given(index=st.integers(0, len(ARENA_ROWS) - 2), copies=st.integers(2, 3))
def test_duplicated_arena_record_names_both_lines(tmp_path, index, copies):
    rows = ARENA_ROWS[:-1]
    rows = rows[: index + 1] + [rows[index]] * (copies - 1) + rows[index + 1 :]
    got = read(read_arena_csv, tmp_path / "a.csv", arena_bytes(rows), labelled=True)
    assert isinstance(got, DataError) and got.column == "id"
    assert f"duplicate id {ARENA_ROWS[index][0]!r}" in got.detail


@FUZZ
@given(name=st.sampled_from(PREFERENCE_FILES), index=st.integers(0, 1), copies=st.integers(0, 3))
def test_duplicated_preference_lines_are_rows(tmp_path, name, index, copies):
    lines = (FIXTURES / name).read_bytes().splitlines(keepends=True)
    lines[index : index + 1] = [lines[index]] * copies
    got = read(read_chosen_rejected, tmp_path / "p.jsonl", b"".join(lines))
    original = read_chosen_rejected(FIXTURES / name)
    assert len(got) == len(original) + copies - 1
    assert list(got["line"]) == list(range(1, len(got) + 1))
    kept = [index] * copies + [i for i in range(len(original)) if i != index]
    assert sorted(map(str, got["prompt"])) == sorted(str(original["prompt"][i]) for i in kept)


def _written(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _reencode(content: bytes, encoding: str) -> bytes:
    """The text in another encoding; examples it cannot represent are rejected."""
    try:
        return content.decode("utf-8").encode(encoding)
    except UnicodeEncodeError:
        reject()
