"""Tests for jaxpref.data.arena: reading and validating arena CSVs, and the train/valid split."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxpref.data.arena import (
    CLASS_NAMES,
    DEFAULT_TEST_CSV,
    DEFAULT_TRAIN_CSV,
    LABEL_COLUMNS,
    SAMPLE_DIR,
    TEXT_COLUMNS,
    DataError,
    read_arena_csv,
)
from jaxpref.data.splitting import split_train_valid

TRAIN_HEADER = ["id", "model_a", "model_b", *TEXT_COLUMNS, *LABEL_COLUMNS]
TEST_HEADER = ["id", *TEXT_COLUMNS]


def turns(*texts: str | None) -> str:
    return json.dumps(list(texts))


def raw_turns(*texts: str) -> str:
    """A JSON list whose strings hold raw (unescaped) newlines, so the CSV record spans lines."""
    return "[" + ", ".join(f'"{t}"' for t in texts) + "]"


def train_row(row_id: str, label: int = 0, text: str = "Hi?", **cells: str) -> list[str]:
    values = {
        "id": row_id,
        "model_a": "model-x",
        "model_b": "model-y",
        "prompt": turns(text),
        "response_a": turns("Hello from A"),
        "response_b": turns("Hello from B"),
        **{name: str(int(i == label)) for i, name in enumerate(LABEL_COLUMNS)},
    }
    values.update(cells)
    return [values[name] for name in TRAIN_HEADER]


def write_csv(path: Path, header: list[str], rows: list[list[str]], **kwargs) -> Path:
    with open(path, "w", newline="", encoding=kwargs.pop("encoding", "utf-8")) as f:
        writer = csv.writer(f, **kwargs)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_train(tmp_path: Path, rows: list[list[str]], name: str = "train.csv") -> Path:
    return write_csv(tmp_path / name, TRAIN_HEADER, rows)


def assert_names(err: DataError, path: Path, line: int | None, column: str | None) -> None:
    """The message names the file, the line and the column; so do the attributes."""
    message = str(err)
    assert str(path) in message
    if line is not None:
        assert f"line {line}" in message
        assert err.line == line
    if column is not None:
        assert repr(column) in message
        assert err.column == column or column in err.column


# --------------------------------------------------------------------------- embedded data


def test_constants():
    assert CLASS_NAMES == LABEL_COLUMNS == ("winner_model_a", "winner_model_b", "winner_tie")
    assert TEXT_COLUMNS == ("prompt", "response_a", "response_b")
    assert SAMPLE_DIR == DEFAULT_TRAIN_CSV.parent == DEFAULT_TEST_CSV.parent
    for name in ("arena_train.csv", "arena_test.csv", "arena_sample_submission.csv", "README.md"):
        assert (SAMPLE_DIR / name).is_file()
    assert issubclass(DataError, ValueError)


def test_read_embedded_train():
    df = read_arena_csv(DEFAULT_TRAIN_CSV, labelled=True)
    assert list(df.columns) == ["id", *TEXT_COLUMNS, "label", "line"]
    assert len(df) == 1000
    assert isinstance(df.index, pd.RangeIndex)
    assert df["label"].between(0, 2).all()
    # class counts equal the sums of the one-hot columns, read independently with pandas
    raw = pd.read_csv(DEFAULT_TRAIN_CSV, dtype={"id": str})
    counts = df["label"].value_counts().reindex(range(3), fill_value=0)
    assert counts.tolist() == [int(raw[name].sum()) for name in LABEL_COLUMNS]
    assert df["id"].tolist() == raw["id"].tolist()
    assert all(isinstance(i, str) for i in df["id"])
    assert df["line"].tolist() == list(range(2, 1002))  # no record spans lines in this file
    for name in TEXT_COLUMNS:
        assert all(isinstance(v, list) and v for v in df[name])
        assert all(t is None or isinstance(t, str) for v in df[name] for t in v)
    assert (df["prompt"].map(len) > 1).sum() == 131
    assert sum(t is None for name in TEXT_COLUMNS for v in df[name] for t in v) == 5


def test_read_embedded_test():
    df = read_arena_csv(DEFAULT_TEST_CSV, labelled=False)
    assert list(df.columns) == ["id", *TEXT_COLUMNS, "line"]
    assert df["id"].tolist() == ["136060", "211333", "1233961"]
    assert df["line"].tolist() == [2, 3, 4]
    assert df["prompt"][0] == [
        "I have three oranges today, I ate an orange yesterday. How many oranges do I have?"
    ]
    submission = pd.read_csv(SAMPLE_DIR / "arena_sample_submission.csv", dtype={"id": str})
    assert submission["id"].tolist() == df["id"].tolist()
    assert list(submission.columns) == ["id", *CLASS_NAMES]


def test_embedded_test_needs_labels_when_labelled():
    with pytest.raises(DataError) as info:
        read_arena_csv(DEFAULT_TEST_CSV, labelled=True)
    assert_names(info.value, DEFAULT_TEST_CSV, 1, "winner_model_a")
    for name in LABEL_COLUMNS:
        assert repr(name) in str(info.value)


def test_train_file_read_unlabelled_ignores_winner_columns():
    df = read_arena_csv(DEFAULT_TRAIN_CSV, labelled=False)
    assert "label" not in df.columns
    assert len(df) == 1000


# --------------------------------------------------------------------------- accepted input


def test_small_file_round_trip(tmp_path):
    path = write_train(
        tmp_path,
        [train_row("007", 0), train_row("12", 1), train_row("3", 2)],
    )
    df = read_arena_csv(path, labelled=True)
    assert df["id"].tolist() == ["007", "12", "3"]  # verbatim strings, leading zero kept
    assert df["label"].tolist() == [0, 1, 2]
    assert df["line"].tolist() == [2, 3, 4]
    assert df["prompt"][0] == ["Hi?"]
    assert df["response_b"][2] == ["Hello from B"]


def test_path_may_be_str(tmp_path):
    path = write_train(tmp_path, [train_row("1")])
    assert len(read_arena_csv(str(path), labelled=True)) == 1


def test_null_turns_and_multi_turn(tmp_path):
    rows = [
        train_row(
            "1",
            **{
                "prompt": turns("first", "second", "third"),
                "response_a": turns("a1", None, "a3"),
                "response_b": turns(None, None, None),
            },
        ),
        train_row("2", **{"prompt": turns(None), "response_a": turns("")}),
    ]
    df = read_arena_csv(write_train(tmp_path, rows), labelled=True)
    assert df["prompt"][0] == ["first", "second", "third"]
    assert df["response_a"][0] == ["a1", None, "a3"]
    assert df["response_b"][0] == [None, None, None]
    assert df["prompt"][1] == [None]
    assert df["response_a"][1] == [""]


def test_turn_lists_of_different_lengths_are_accepted(tmp_path):
    row = train_row("1", **{"prompt": turns("p1", "p2"), "response_a": turns("only one")})
    df = read_arena_csv(write_train(tmp_path, [row]), labelled=True)
    assert len(df["prompt"][0]) == 2 and len(df["response_a"][0]) == 1


def test_unicode_and_escapes(tmp_path):
    text = 'Grüße 😀, "quoted", back\\slash, tab\t, 中文'
    row = train_row("1", **{"response_a": json.dumps([text], ensure_ascii=True)})
    row2 = train_row("2", **{"response_a": json.dumps([text], ensure_ascii=False)})
    df = read_arena_csv(write_train(tmp_path, [row, row2]), labelled=True)
    assert df["response_a"].tolist() == [[text], [text]]


def test_extra_columns_and_other_order(tmp_path):
    header = ["winner_tie", "extra", "response_b", "id", "winner_model_b", "prompt"]
    header += ["response_a", "winner_model_a", "another"]
    values = {
        "winner_tie": "1",
        "extra": "x",
        "response_b": turns("b"),
        "id": "42",
        "winner_model_b": "0",
        "prompt": turns("p"),
        "response_a": turns("a"),
        "winner_model_a": "0",
        "another": "",
    }
    path = write_csv(tmp_path / "t.csv", header, [[values[h] for h in header]])
    df = read_arena_csv(path, labelled=True)
    assert list(df.columns) == ["id", *TEXT_COLUMNS, "label", "line"]
    assert df.iloc[0].to_dict() == {
        "id": "42",
        "prompt": ["p"],
        "response_a": ["a"],
        "response_b": ["b"],
        "label": 2,
        "line": 2,
    }


def test_header_names_are_stripped(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(' id , prompt,response_a ,response_b\n1,"[""p""]","[""a""]","[""b""]"\n')
    assert read_arena_csv(path, labelled=False)["id"].tolist() == ["1"]


@pytest.mark.parametrize("a,b,tie,label", [("1.0", "0.0", "0.0", 0), ("0", " 1 ", "0", 1)])
def test_float_style_labels(tmp_path, a, b, tie, label):
    row = train_row("1", winner_model_a=a, winner_model_b=b, winner_tie=tie)
    assert read_arena_csv(write_train(tmp_path, [row]), labelled=True)["label"][0] == label


def test_utf8_bom(tmp_path):
    path = write_csv(
        tmp_path / "bom.csv",
        TRAIN_HEADER,
        [train_row("1"), train_row("2", 2)],
        encoding="utf-8-sig",
    )
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    df = read_arena_csv(path, labelled=True)
    assert df["id"].tolist() == ["1", "2"]
    assert df["label"].tolist() == [0, 2]


def test_crlf_line_endings(tmp_path):
    rows = [
        train_row("1", **{"prompt": raw_turns("line one\r\nline two")}),
        train_row("2", 1),
    ]
    path = write_csv(tmp_path / "crlf.csv", TRAIN_HEADER, rows, lineterminator="\r\n")
    assert b"\r\n" in path.read_bytes()
    df = read_arena_csv(path, labelled=True)
    assert df["prompt"][0] == ["line one\r\nline two"]
    assert df["line"].tolist() == [2, 4]  # the first record spans lines 2-3


def test_multiline_cells_keep_line_numbers(tmp_path):
    rows = [
        train_row("1", **{"prompt": raw_turns("a\nb\nc")}),  # lines 2-4
        train_row("2", **{"response_a": raw_turns("x\ny")}),  # lines 5-6
        train_row("3"),  # line 7
        train_row("4", **{"response_b": '[\n  "z"\n]'}),  # lines 8-10
        train_row("5"),  # line 11
    ]
    df = read_arena_csv(write_train(tmp_path, rows), labelled=True)
    assert df["line"].tolist() == [2, 5, 7, 8, 11]
    assert df["prompt"][0] == ["a\nb\nc"]
    assert df["response_a"][1] == ["x\ny"]
    assert df["response_b"][3] == ["z"]

    rows[4] = train_row("5", **{"prompt": "[oops"})
    path = write_train(tmp_path, rows, name="bad.csv")
    with pytest.raises(DataError) as info:
        read_arena_csv(path, labelled=True)
    assert_names(info.value, path, 11, "prompt")
    assert "(id 5)" in str(info.value)


def test_blank_lines_between_records_are_skipped(tmp_path):
    path = tmp_path / "t.csv"
    row = 'X,"[""p""]","[""a""]","[""b""]"'
    path.write_text("id,prompt,response_a,response_b\n" + row.replace("X", "1") + "\n\n")
    path.write_text(path.read_text() + row.replace("X", "2") + "\n")
    df = read_arena_csv(path, labelled=False)
    assert df["line"].tolist() == [2, 4]


# --------------------------------------------------------------------------- file-level errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="not found") as info:
        read_arena_csv(path, labelled=True)
    assert str(path) in str(info.value)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(DataError, match="directory") as info:
        read_arena_csv(tmp_path, labelled=False)
    assert str(tmp_path) in str(info.value)


def test_unreadable_file(tmp_path):
    """A path that cannot be opened: through a regular file (chmod would not stop root, as CI)."""
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "train.csv"
    with pytest.raises(DataError, match="cannot open") as info:
        read_arena_csv(path, labelled=True)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf"], ids=["zero-bytes", "bom-only"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match="empty") as info:
        read_arena_csv(path, labelled=True)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("trailer", ["", "\n", "\n\n"])
def test_header_only(tmp_path, trailer):
    path = tmp_path / "header.csv"
    path.write_text(",".join(TRAIN_HEADER) + trailer)
    with pytest.raises(DataError, match="no data rows") as info:
        read_arena_csv(path, labelled=True)
    assert_names(info.value, path, 1, None)


def test_missing_one_column(tmp_path):
    header = [h for h in TRAIN_HEADER if h != "response_b"]
    path = write_csv(tmp_path / "t.csv", header, [])
    with pytest.raises(DataError, match="missing") as info:
        read_arena_csv(path, labelled=True)
    assert_names(info.value, path, 1, "response_b")


def test_missing_several_columns(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["id", "prompt", "winner_tie"], [["1", turns("p"), "1"]])
    with pytest.raises(DataError) as info:
        read_arena_csv(path, labelled=True)
    assert_names(info.value, path, 1, "response_a")
    assert info.value.column == ("response_a", "response_b", "winner_model_a", "winner_model_b")
    assert "'winner_tie'" not in str(info.value).split(":")[0]


def test_no_header_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('1,"[""p""]","[""a""]","[""b""]"\n')  # data where the header should be
    with pytest.raises(DataError, match="missing") as info:
        read_arena_csv(path, labelled=False)
    assert_names(info.value, path, 1, "id")


def test_duplicate_header_column(tmp_path):
    path = write_csv(tmp_path / "t.csv", [*TEST_HEADER, "prompt"], [])
    with pytest.raises(DataError, match="more than once") as info:
        read_arena_csv(path, labelled=False)
    assert_names(info.value, path, 1, "prompt")


def test_invalid_utf8_names_the_line(tmp_path):
    rows = [train_row(str(i)) for i in range(1, 6)]
    path = write_train(tmp_path, rows)
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"Hi?", b"Hi\xff?")  # record 3 is on line 4
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match="UTF-8") as info:
        read_arena_csv(path, labelled=True)
    assert_names(info.value, path, 4, None)


def test_unterminated_quote(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        "id,prompt,response_a,response_b\n"
        '1,"[""p""]","[""a""]","[""b""]"\n'
        '2,"[""p""]","[""a""]","[""b""]\n'
        '3,"[""p""]","[""a""]","[""b""]"\n'
    )
    with pytest.raises(DataError) as info:
        read_arena_csv(path, labelled=False)
    assert_names(info.value, path, 3, None)


def test_stray_quote_inside_unquoted_cell_is_an_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('id,prompt,response_a,response_b\n1,"[""p""]"x,"[""a""]","[""b""]"\n')
    with pytest.raises(DataError, match="malformed CSV") as info:
        read_arena_csv(path, labelled=False)
    assert_names(info.value, path, 2, None)


def test_very_large_cell(tmp_path):
    big = "x" * 300_000  # larger than the csv module's default 128 KiB field limit
    df = read_arena_csv(write_train(tmp_path, [train_row("1", text=big)]), labelled=True)
    assert df["prompt"][0] == [big]


# --------------------------------------------------------------------------- row-level errors


def test_row_with_too_few_fields(tmp_path):
    rows = [train_row("1"), train_row("2")[:-1], train_row("3")]
    path = write_train(tmp_path, rows)
    with pytest.raises(DataError, match="8 fields but the header has 9") as info:
        read_arena_csv(path, labelled=True)
    assert_names(info.value, path, 3, "winner_tie")
    assert "(id 2)" in str(info.value)


def test_row_with_too_many_fields(tmp_path):
    rows = [train_row("1"), train_row("2"), [*train_row("3"), "surplus"]]
    path = write_train(tmp_path, rows)
    with pytest.raises(DataError, match="10 fields but the header has 9") as info:
        read_arena_csv(path, labelled=True)
    assert_names(info.value, path, 4, "winner_tie")


@pytest.mark.parametrize("column", TEXT_COLUMNS)
def test_malformed_json(tmp_path, column):
    rows = [train_row("1"), train_row("2"), train_row("57", **{column: '["unterminated'})]
    path = write_train(tmp_path, rows)
    with pytest.raises(DataError, match="not valid JSON") as info:
        read_arena_csv(path, labelled=True)
    assert_names(info.value, path, 4, column)
    assert "(id 57)" in str(info.value)


@pytest.mark.parametrize(
    "cell,problem",
    [
        ("3", "got a number"),
        ('{"a": 1}', "got an object"),
        ('"just text"', "got a string"),
        ("null", "got null"),
        ("true", "got a boolean"),
        ("[]", "empty list"),
        ('["ok", 5]', "turn 1 is a number"),
        ('[["nested"]]', "turn 0 is a list"),
        ('[{"role": "user"}]', "turn 0 is an object"),
        ("[true]", "turn 0 is a boolean"),
        ("", "empty cell"),
        ("hello", 'not valid JSON (Expecting value: line 1 column 1 (char 0)); expected a JSON '
         'list of turns such as ["Hi!", "Thanks."]'),
    ],
)  # fmt: skip
def test_text_cell_with_wrong_shape(tmp_path, cell, problem):
    path = write_train(tmp_path, [train_row("1"), train_row("2", **{"response_b": cell})])
    with pytest.raises(DataError) as info:
        read_arena_csv(path, labelled=True)
    assert problem in str(info.value)
    assert_names(info.value, path, 3, "response_b")


@pytest.mark.parametrize(
    "cells,column,problem",
    [
        (("abc", "0", "0"), "winner_model_a", "not a number"),
        (("0", "", "1"), "winner_model_b", "empty cell"),
        (("0", "0", "2"), "winner_tie", "not 0 or 1"),
        (("0.5", "0.5", "0"), "winner_model_a", "not 0 or 1"),
        (("-1", "1", "1"), "winner_model_a", "not 0 or 1"),
        (("nan", "0", "1"), "winner_model_a", "not 0 or 1"),
        (("0", "0", "0"), "winner_model_a", "no winner column is 1"),
        (("1", "1", "0"), "winner_model_a", "more than one winner column is 1"),
        (("1.0", "1", "1"), "winner_tie", "more than one winner column is 1"),
    ],
)
def test_labels_not_one_hot(tmp_path, cells, column, problem):
    label_cells = dict(zip(LABEL_COLUMNS, cells, strict=True))
    path = write_train(tmp_path, [train_row("1"), train_row("2"), train_row("9", **label_cells)])
    with pytest.raises(DataError) as info:
        read_arena_csv(path, labelled=True)
    assert problem in str(info.value)
    assert_names(info.value, path, 4, column)
    assert "(id 9)" in str(info.value)


def test_bad_labels_ignored_when_unlabelled(tmp_path):
    row = train_row("1", winner_model_a="x", winner_model_b="y", winner_tie="z")
    assert len(read_arena_csv(write_train(tmp_path, [row]), labelled=False)) == 1


def test_duplicate_ids_name_both_lines(tmp_path):
    rows = [train_row("1"), train_row("2", **{"prompt": raw_turns("a\nb")}), train_row("3")]
    rows.append(train_row("2"))  # lines: 2, 3-4, 5, 6
    path = write_train(tmp_path, rows)
    with pytest.raises(DataError, match="duplicate id '2'") as info:
        read_arena_csv(path, labelled=True)
    assert_names(info.value, path, 6, "id")
    assert "line 3" in str(info.value)


@pytest.mark.parametrize("row_id", ["", "   "])
def test_empty_id(tmp_path, row_id):
    path = write_train(tmp_path, [train_row("1"), train_row(row_id)])
    with pytest.raises(DataError, match="empty id") as info:
        read_arena_csv(path, labelled=True)
    assert_names(info.value, path, 3, "id")


def test_error_message_format(tmp_path):
    path = write_train(tmp_path, [train_row("12345", **{"prompt": "x"})])
    with pytest.raises(DataError) as info:
        read_arena_csv(path, labelled=True)
    assert str(info.value).startswith(f"{path}, line 2 (id 12345), column 'prompt': not valid JSON")
    assert (info.value.path, info.value.line, info.value.column) == (str(path), 2, "prompt")
    assert info.value.row_id == "12345"


# --------------------------------------------------------------------------- split


@pytest.fixture(scope="module")
def arena() -> pd.DataFrame:
    return read_arena_csv(DEFAULT_TRAIN_CSV, labelled=True)


def synthetic(n_rows: int, n_prompts: int, seed: int = 0) -> pd.DataFrame:
    """Rows with repeated prompts (the arena has many) and random labels."""
    rng = np.random.default_rng(seed)
    prompt_ids = rng.integers(0, n_prompts, n_rows)
    return pd.DataFrame(
        {
            "id": [str(i) for i in range(n_rows)],
            "prompt": [
                [f"prompt {p}", None] if p % 7 == 0 else [f"prompt {p}"] for p in prompt_ids
            ],
            "response_a": [["a"]] * n_rows,
            "response_b": [["b"]] * n_rows,
            "label": rng.integers(0, 3, n_rows),
            "line": np.arange(2, n_rows + 2),
        }
    )


def assert_partition(df: pd.DataFrame, train: pd.DataFrame, valid: pd.DataFrame) -> None:
    assert len(train) > 0 and len(valid) > 0
    assert len(train) + len(valid) == len(df)
    assert isinstance(train.index, pd.RangeIndex) and train.index[0] == 0
    assert isinstance(valid.index, pd.RangeIndex) and valid.index[0] == 0
    assert not set(train["id"]) & set(valid["id"])
    assert set(train["id"]) | set(valid["id"]) == set(df["id"])
    assert list(train.columns) == list(df.columns) == list(valid.columns)
    # rows are unchanged and keep their input order on each side
    by_id = df.set_index("id")
    for side in (train, valid):
        assert side["line"].is_monotonic_increasing
        pd.testing.assert_frame_equal(
            side.set_index("id"), by_id.loc[side["id"]], check_names=False
        )


@pytest.mark.parametrize("fraction,n_valid", [(0.1, 100), (0.25, 250), (0.5, 500), (0.9, 900)])
def test_split_sizes(arena, fraction, n_valid):
    train, valid = split_train_valid(arena, valid_fraction=fraction, seed=3)
    assert len(valid) == n_valid
    assert_partition(arena, train, valid)


def test_split_is_deterministic(arena):
    a_train, a_valid = split_train_valid(arena, seed=7)
    b_train, b_valid = split_train_valid(arena, seed=7)
    pd.testing.assert_frame_equal(a_train, b_train)
    pd.testing.assert_frame_equal(a_valid, b_valid)
    _, c_valid = split_train_valid(arena, seed=8)
    assert set(c_valid["id"]) != set(a_valid["id"])


def test_split_does_not_modify_input(arena):
    before = arena.copy()
    split_train_valid(arena, seed=1, group_by_prompt=True)
    split_train_valid(arena, seed=1)
    pd.testing.assert_frame_equal(arena, before)


@pytest.mark.parametrize("group_by_prompt", [False, True])
def test_split_is_stratified(arena, group_by_prompt):
    overall = arena["label"].value_counts(normalize=True).sort_index()
    for seed in range(3):
        train, valid = split_train_valid(
            arena, valid_fraction=0.2, seed=seed, group_by_prompt=group_by_prompt
        )
        for side in (train, valid):
            share = side["label"].value_counts(normalize=True).sort_index()
            assert np.allclose(share.to_numpy(), overall.to_numpy(), atol=0.02)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5, 0.8])
def test_group_by_prompt_keeps_prompts_on_one_side(fraction):
    df = synthetic(600, 90)
    train, valid = split_train_valid(df, valid_fraction=fraction, seed=1, group_by_prompt=True)
    assert_partition(df, train, valid)
    keys = lambda side: {json.dumps(p) for p in side["prompt"]}  # noqa: E731
    assert not keys(train) & keys(valid)
    assert abs(len(valid) / len(df) - fraction) < 0.1
    # the same seed gives the same split
    _, again = split_train_valid(df, valid_fraction=fraction, seed=1, group_by_prompt=True)
    assert again["id"].tolist() == valid["id"].tolist()


def test_group_by_prompt_on_real_data(arena):
    train, valid = split_train_valid(arena, seed=0, group_by_prompt=True)
    assert_partition(arena, train, valid)
    assert not {json.dumps(p) for p in train["prompt"]} & {json.dumps(p) for p in valid["prompt"]}
    assert 80 <= len(valid) <= 120


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, math.nan, True, "0.1", None])
def test_bad_valid_fraction(arena, fraction):
    with pytest.raises(ValueError, match="valid_fraction"):
        split_train_valid(arena, valid_fraction=fraction)


@pytest.mark.parametrize("n_rows", [0, 1])
def test_too_few_rows(n_rows):
    with pytest.raises(ValueError, match="at least 2 rows"):
        split_train_valid(synthetic(n_rows, 5))


def test_two_rows_split_one_each():
    df = synthetic(2, 2)
    train, valid = split_train_valid(df, valid_fraction=0.1)
    assert (len(train), len(valid)) == (1, 1)
    assert_partition(df, train, valid)


@pytest.mark.parametrize("group_by_prompt", [False, True])
def test_falls_back_when_stratification_is_impossible(group_by_prompt):
    df = synthetic(21, 21)
    df["label"] = [0] * 10 + [1] * 10 + [2]  # a class with a single row
    train, valid = split_train_valid(df, valid_fraction=0.2, group_by_prompt=group_by_prompt)
    assert_partition(df, train, valid)
    again = split_train_valid(df, valid_fraction=0.2, group_by_prompt=group_by_prompt)
    assert again[1]["id"].tolist() == valid["id"].tolist()


def test_group_by_prompt_with_few_prompts_still_splits():
    df = synthetic(40, 3)
    train, valid = split_train_valid(df, valid_fraction=0.1, group_by_prompt=True)
    assert_partition(df, train, valid)
    assert not {json.dumps(p) for p in train["prompt"]} & {json.dumps(p) for p in valid["prompt"]}


def test_group_by_prompt_with_one_prompt_fails():
    df = synthetic(10, 1)
    with pytest.raises(ValueError, match="same prompt"):
        split_train_valid(df, group_by_prompt=True)


def test_split_needs_label_column(arena):
    with pytest.raises(ValueError, match="'label'"):
        split_train_valid(arena.drop(columns="label"))


# --------------------------------------------------------------------------- scalars, regressions

SCALAR_CELLS = {"prompt": "[true]", "response_a": '["a", 42, -1.5, null]', "response_b": "7"}


def test_unlabelled_reads_json_scalars_as_text_and_warns(tmp_path, caplog):
    rows = [train_row("1"), train_row("2", **SCALAR_CELLS), train_row("3", response_b='"b"')]
    path = write_train(tmp_path, rows)
    with caplog.at_level(logging.WARNING, logger="jaxpref.data.arena"):
        frame = read_arena_csv(path, labelled=False)
    assert list(frame["id"]) == ["1", "2", "3"]
    assert frame["prompt"][1] == ["true"]
    assert frame["response_a"][1] == ["a", "42", "-1.5", None]
    assert frame["response_b"][1] == ["7"]
    assert frame["response_b"][2] == ["b"]
    assert frame.attrs["scalar_cells"] == 4
    [record] = caplog.records
    message = record.getMessage()
    assert str(path) in message and "read 4 text cell(s)" in message
    assert "line 3, column 'prompt'" in message


def test_plain_file_reports_no_scalar_cells(tmp_path, caplog):
    path = write_train(tmp_path, [train_row("1")])
    with caplog.at_level(logging.WARNING, logger="jaxpref.data.arena"):
        frame = read_arena_csv(path, labelled=False)
    assert frame.attrs["scalar_cells"] == 0
    assert not caplog.records


def test_labelled_is_strict_unless_asked(tmp_path):
    path = write_train(tmp_path, [train_row("1"), train_row("2", **SCALAR_CELLS)])
    with pytest.raises(DataError, match="turn 0 is a boolean") as info:
        read_arena_csv(path, labelled=True)
    assert_names(info.value, path, 3, "prompt")
    frame = read_arena_csv(path, labelled=True, scalars="text")
    assert frame["response_a"][1] == ["a", "42", "-1.5", None]
    assert list(frame["label"]) == [0, 0]
    with pytest.raises(DataError, match="turn 0 is a boolean"):
        read_arena_csv(path, labelled=False, scalars="error")


@pytest.mark.parametrize("cell", ['[{"a": 1}]', '[["x"]]', "[]", "{}", "oops"])
def test_scalars_as_text_still_rejects_non_scalars(tmp_path, cell):
    path = write_train(tmp_path, [train_row("1", prompt=cell)])
    with pytest.raises(DataError) as info:
        read_arena_csv(path, labelled=False)
    assert_names(info.value, path, 2, "prompt")


def test_bad_scalars_mode(tmp_path):
    with pytest.raises(ValueError, match="scalars must be"):
        read_arena_csv(write_train(tmp_path, [train_row("1")]), labelled=False, scalars="skip")


def test_lone_surrogate_becomes_replacement_character(tmp_path):
    """Regression (fuzzing): an unpaired \\ud83d escape gave text that TensorFlow cannot encode."""
    cell = '["pet \\ud83d", "\\ud83d\\udc3e ok", "\\udc3e"]'
    path = write_train(tmp_path, [train_row("1", response_a=cell)])
    frame = read_arena_csv(path, labelled=True)
    assert frame["response_a"][0] == ["pet \ufffd", "\U0001f43e ok", "\ufffd"]
    assert all(turn.encode("utf-8") for turn in frame["response_a"][0])


def test_huge_json_number_is_not_valid_json(tmp_path):
    path = write_train(tmp_path, [train_row("1", prompt="[" + "9" * 5000 + "]")])
    with pytest.raises(DataError, match="not valid JSON") as info:
        read_arena_csv(path, labelled=False)
    assert_names(info.value, path, 2, "prompt")


def test_utf16_without_bom_names_the_encoding(tmp_path):
    """Fuzzing: UTF-16-LE text is valid UTF-8 (NULs), and was reported as a header problem."""
    path = tmp_path / "u16.csv"
    path.write_bytes(write_train(tmp_path, [train_row("1")]).read_text().encode("utf-16-le"))
    with pytest.raises(DataError, match="UTF-16") as info:
        read_arena_csv(path, labelled=True)
    assert_names(info.value, path, 1, None)
