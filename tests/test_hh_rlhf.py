"""Tests for jaxpref.hh_rlhf: chosen/rejected JSON lines read as labelled arena rows."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxpref import text
from jaxpref.data import DEFAULT_TRAIN_CSV, DataError, read_arena_csv
from jaxpref.hh_rlhf import pair_to_row, parse_dialogue, read_chosen_rejected


def dialogue(*turns: str) -> str:
    """HH-RLHF text from alternating human, assistant, human, ... turns."""
    roles = ("Human", "Assistant")
    return "".join(f"\n\n{roles[i % 2]}: {turn}" for i, turn in enumerate(turns))


def pair(i: int, turns: int = 1) -> dict[str, str]:
    """A synthetic pair sharing every turn but the last reply."""
    shared = [t for k in range(turns - 1) for t in (f"q{i}.{k}", f"r{i}.{k}")]
    question = f"q{i}.last"
    return {
        "chosen": dialogue(*shared, question, f"good {i}"),
        "rejected": dialogue(*shared, question, f"bad {i}"),
    }


def write_jsonl(path: Path, lines: list[object | str]) -> Path:
    """Write objects as JSON lines (strings are written verbatim); gzip if the name ends .gz."""
    body = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(body)
    return path


# parse_dialogue


def test_parse_single_turn():
    text_ = "\n\nHuman: Why is the sky blue?\n\nAssistant: Rayleigh scattering."
    assert parse_dialogue(text_) == [("Why is the sky blue?", "Rayleigh scattering.")]


def test_parse_multi_turn_keeps_order_and_inline_role_words():
    text_ = dialogue("hi", "Human: is quoted here", "and?", "done")
    assert parse_dialogue(text_) == [("hi", "Human: is quoted here"), ("and?", "done")]


def test_parse_accepts_marker_at_start_and_blank_preamble():
    assert parse_dialogue("Human: a\n\nAssistant: b") == [("a", "b")]
    assert parse_dialogue("  \n\n\nHuman: a\n\nAssistant: b\n") == [("a", "b")]


def test_parse_joins_same_role_runs_and_pads_trailing_human():
    text_ = "\n\nHuman: a\n\nHuman: b\n\nAssistant: c\n\nAssistant: d\n\nHuman: e"
    assert parse_dialogue(text_) == [("a\n\nb", "c\n\nd"), ("e", "")]


def test_parse_keeps_empty_final_reply():
    assert parse_dialogue("\n\nHuman: a\n\nAssistant: ") == [("a", "")]


@pytest.mark.parametrize(
    ("text_", "message"),
    [
        ("", "no Human turn"),
        ("just text", "no Human turn"),
        ("\n\nAssistant: hi", "no Human turn"),
        ("intro\n\nHuman: a\n\nAssistant: b", "before the first Human"),
        ("\n\nAssistant: x\n\nHuman: a\n\nAssistant: b", "before the first Human"),
        ("\n\nHuman: a", "no Assistant turn"),
        ("\n\nHuman: a\n\nHuman: b", "no Assistant turn"),
    ],
)
def test_parse_rejects_bad_dialogues(text_, message):
    with pytest.raises(ValueError, match=message):
        parse_dialogue(text_)


# pair_to_row


def test_label_is_zero_exactly_when_a_holds_the_chosen_reply():
    rng = np.random.default_rng(0)
    seen = set()
    for i in range(50):
        p = pair(i, turns=2)
        row = pair_to_row(p["chosen"], p["rejected"], rng)
        assert row["prompt"] == [f"q{i}.0", f"q{i}.last"]
        assert row["response_a"][0] == row["response_b"][0] == f"r{i}.0"
        a_is_chosen = row["response_a"][-1] == f"good {i}"
        assert row["label"] == (0 if a_is_chosen else 1)
        assert {row["response_a"][-1], row["response_b"][-1]} == {f"good {i}", f"bad {i}"}
        seen.add(row["label"])
    assert seen == {0, 1}


def test_balance_over_200_pairs():
    rng = np.random.default_rng(123)
    labels = [pair_to_row(**pair(i), rng=rng)["label"] for i in range(200)]
    assert 0.35 <= np.mean(labels) <= 0.65


def test_differing_human_turns_use_chosen_prompt_and_pad():
    chosen = dialogue("q1", "r1", "q2", "good")
    rejected = dialogue("other q1", "bad")
    row = pair_to_row(chosen, rejected, np.random.default_rng(0))
    assert row["prompt"] == ["q1", "q2"]
    chosen_side, rejected_side = (
        (row["response_a"], row["response_b"])
        if row["label"] == 0
        else (row["response_b"], row["response_a"])
    )
    assert chosen_side == ["r1", "good"]
    assert rejected_side == ["bad", ""]


def test_shorter_chosen_pads_prompt_too():
    row = pair_to_row(
        dialogue("q", "good"), dialogue("q", "r", "q2", "bad"), np.random.default_rng(0)
    )
    assert row["prompt"] == ["q", ""]
    assert len(row["response_a"]) == len(row["response_b"]) == 2


# read_chosen_rejected


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.jsonl.gz"])
def test_read_plain_and_gzip(tmp_path, name):
    path = write_jsonl(tmp_path / name, [pair(0), "", pair(1, turns=3), "   ", pair(2)])
    frame = read_chosen_rejected(path, id_prefix="x")
    assert list(frame["id"]) == ["x-1", "x-3", "x-5"]
    assert list(frame["line"]) == [1, 3, 5]
    assert list(frame["prompt"].map(len)) == [1, 3, 1]
    assert set(frame["label"]) <= {0, 1}
    for row in frame.itertuples():
        chosen = row.response_a if row.label == 0 else row.response_b
        assert chosen[-1].startswith("good")


def test_gzip_detected_by_magic_bytes(tmp_path):
    gz = write_jsonl(tmp_path / "pairs.jsonl.gz", [pair(0), pair(1)])
    renamed = gz.rename(tmp_path / "pairs.jsonl")
    assert len(read_chosen_rejected(renamed)) == 2


def test_frame_matches_arena_columns_and_concatenates(tmp_path):
    frame = read_chosen_rejected(write_jsonl(tmp_path / "p.jsonl", [pair(i) for i in range(5)]))
    arena = read_arena_csv(DEFAULT_TRAIN_CSV, labelled=True)
    assert list(frame.columns) == list(arena.columns)
    assert frame.dtypes.to_dict() == arena.dtypes.to_dict()
    assert isinstance(frame.index, pd.RangeIndex)
    combined = pd.concat([arena, frame], ignore_index=True)
    assert combined.dtypes.to_dict() == arena.dtypes.to_dict()
    features = text.format_pairs(combined)
    assert set(features) == set(text.FEATURE_KEYS)
    assert all(v.shape == (len(combined),) for v in features.values())
    tail = text.format_pairs(frame)
    assert tail["context_a"][0] == tail["context_b"][0] == "q0.last"


def test_deterministic_for_a_seed_and_balanced(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [pair(i) for i in range(200)])
    first = read_chosen_rejected(path, seed=7)
    pd.testing.assert_frame_equal(first, read_chosen_rejected(path, seed=7))
    other = read_chosen_rejected(path, seed=8)
    assert not np.array_equal(first["label"], other["label"])
    assert 0.35 <= first["label"].mean() <= 0.65


@pytest.mark.parametrize(
    ("line", "column", "message"),
    [
        ("{not json", None, "not valid JSON"),
        ('["chosen", "rejected"]', None, "expected a JSON object, got an array"),
        (json.dumps({"chosen": dialogue("q", "a")}), "rejected", "missing field"),
        (json.dumps({"chosen": 3, "rejected": dialogue("q", "a")}), "chosen", "a number"),
        (json.dumps({"chosen": dialogue("q", "a"), "rejected": None}), "rejected", "null"),
        (json.dumps({"chosen": dialogue("q"), "rejected": dialogue("q", "a")}), "chosen", "no Ass"),
        (json.dumps({"chosen": dialogue("q", "a"), "rejected": "x"}), "rejected", "no Human"),
    ],
)
def test_bad_line_names_file_line_and_field(tmp_path, line, column, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [pair(0), "", line])
    with pytest.raises(DataError, match=message) as info:
        read_chosen_rejected(path)
    err = info.value
    assert (err.path, err.line, err.column) == (str(path), 3, column)
    assert str(path) in str(err) and "line 3" in str(err)
    if column:
        assert repr(column) in str(err)


def test_not_utf8_names_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(pair(0)).encode() + b'\n{"chosen": "\xff"}\n')
    with pytest.raises(DataError, match="UTF-8") as info:
        read_chosen_rejected(path)
    assert info.value.line == 2


@pytest.mark.parametrize("content", [b"", b"\n  \n\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match="empty") as info:
        read_chosen_rejected(path)
    assert str(path) in str(info.value)


def test_missing_file_and_bad_gzip(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_chosen_rejected(tmp_path / "absent.jsonl")
    fake = tmp_path / "fake.jsonl.gz"
    fake.write_text(json.dumps(pair(0)) + "\n")
    with pytest.raises(DataError, match="gzip") as info:
        read_chosen_rejected(fake)
    assert str(fake) in str(info.value)
