"""Tests for jaxpref.data.preferences: chosen/rejected JSON lines read as labelled arena rows."""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxpref.data import text
from jaxpref.data.arena import DEFAULT_TRAIN_CSV, DataError, read_arena_csv
from jaxpref.data.preferences import pair_to_row, parse_dialogue, read_chosen_rejected


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
        ('["chosen", "rejected"]', None, "expected a JSON object, got a list"),
        (
            json.dumps({"chosen": dialogue("q", "a"), "id": 7}),
            "rejected",
            r"missing field \(found: 'chosen', 'id'\)",
        ),
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


def test_huge_json_number_is_a_data_error(tmp_path):
    """Regression: int() refuses over 4,300 digits with a ValueError that escaped the reader."""
    path = write_jsonl(tmp_path / "big.jsonl", ['{"chosen": ' + "9" * 5000 + ', "rejected": ""}'])
    with pytest.raises(DataError, match="not valid JSON") as info:
        read_chosen_rejected(path)
    assert info.value.line == 1


def test_lone_surrogate_becomes_replacement_character(tmp_path):
    """Regression (fuzzing): an unpaired \\ud83d escape gave text that TensorFlow cannot encode."""
    line = json.dumps({"chosen": dialogue("q", "ok"), "rejected": dialogue("q", "x")})
    path = write_jsonl(tmp_path / "s.jsonl", [line.replace("x", "\\ud83d x \\ud83d\\udc3e")])
    frame = read_chosen_rejected(path)
    replies = {frame["response_a"][0][-1], frame["response_b"][0][-1]}
    assert replies == {"ok", "\ufffd x \U0001f43e"}


# TRL formats and Parquet

FIXTURES = Path(__file__).parent / "fixtures"
TRL_FILES = [
    "trl_standard.jsonl",
    "trl_standard_implicit.jsonl",
    "trl_conversational.jsonl",
    "trl_conversational_implicit.jsonl",
    "trl_standard.parquet",
    "trl_conversational_implicit.parquet",
]


def chosen_and_rejected(frame: pd.DataFrame) -> list[tuple[list, list, list]]:
    """(prompt, chosen replies, rejected replies) per row, undoing the random A/B order."""
    out = []
    for row in frame.itertuples():
        a, b = row.response_a, row.response_b
        out.append((row.prompt, *((a, b) if row.label == 0 else (b, a))))
    return out


def test_hh_fixture_rows():
    rows = chosen_and_rejected(read_chosen_rejected(FIXTURES / "hh_rlhf.jsonl"))
    assert rows == [
        (["What color is the sky on a clear day?"], ["Blue."], ["Green, mostly."]),
        (['Translate "thank you" into French.'], ["Merci."], ["Danke — that's German."]),
        (["Name a prime number.", "Another one?"], ["7.", "11."], ["7.", "12."]),
    ]


@pytest.mark.parametrize("name", TRL_FILES)
def test_every_format_gives_the_hh_rows(name):
    """Each fixture holds the HH fixture's pairs (standard ones: the single-turn two)."""
    expected = read_chosen_rejected(FIXTURES / "hh_rlhf.jsonl", seed=3, id_prefix="x")
    frame = read_chosen_rejected(FIXTURES / name, seed=3, id_prefix="x")
    expected = expected.head(len(frame))
    assert len(frame) == (2 if "standard" in name else 3)
    pd.testing.assert_frame_equal(frame, expected)


def test_parquet_matches_arena_dtypes():
    frame = read_chosen_rejected(FIXTURES / "trl_conversational_implicit.parquet")
    arena = read_arena_csv(DEFAULT_TRAIN_CSV, labelled=True)
    assert frame.dtypes.to_dict() == arena.dtypes.to_dict()
    assert list(frame["line"]) == [1, 2, 3]
    assert all(isinstance(t, str) for turns in frame["response_a"] for t in turns)


@pytest.mark.parametrize(
    ("chosen", "rejected", "prompt", "replies"),
    [
        ("The sky is blue.", "The sky is black.", "The sky is", ("blue.", "black.")),
        ("The sky", "The sky is blue", "The sky", ("", "is blue")),
        ("Yes.", "No.", "", ("Yes.", "No.")),
        ("Same text", "Same text", "Same text", ("", "")),
    ],
)
def test_implicit_prompt_is_shared_prefix_at_word_boundary(
    tmp_path, chosen, rejected, prompt, replies
):
    path = write_jsonl(tmp_path / "p.jsonl", [{"chosen": chosen, "rejected": rejected}])
    rows = chosen_and_rejected(read_chosen_rejected(path))
    assert rows == [([prompt], [replies[0]], [replies[1]])]


def test_prompt_extracted_hh_keeps_turns(tmp_path):
    record = {
        "prompt": dialogue("q1", "r1", "q2") + "\n\nAssistant:",
        "chosen": " a",
        "rejected": " b",
    }
    path = write_jsonl(tmp_path / "p.jsonl", [record])
    assert chosen_and_rejected(read_chosen_rejected(path)) == [
        (["q1", "q2"], ["r1", "a"], ["r1", "b"])
    ]


def test_system_messages_join_the_first_user_turn(tmp_path):
    system = {"role": "system", "content": "Be brief."}
    record = {
        "prompt": [system, {"role": "user", "content": "Hi?"}],
        "chosen": [{"role": "assistant", "content": "Hello."}],
        "rejected": [{"role": "assistant", "content": "Greetings to you."}],
    }
    path = write_jsonl(tmp_path / "p.jsonl", [record])
    assert chosen_and_rejected(read_chosen_rejected(path)) == [
        (["Be brief.\n\nHi?"], ["Hello."], ["Greetings to you."])
    ]


USER = {"role": "user", "content": "q"}
REPLY = {"role": "assistant", "content": "a"}


@pytest.mark.parametrize(
    ("record", "column", "message"),
    [
        ({"chosen": [USER, {"role": "bot", "content": "a"}], "rejected": [USER, REPLY]},
         "chosen", "message 1 has role 'bot'"),
        ({"chosen": [USER, REPLY], "rejected": [USER, {"role": 3, "content": "a"}]},
         "rejected", "message 1 has role a number"),
        ({"chosen": [USER, {"content": "a"}], "rejected": [USER, REPLY]},
         "chosen", "message 1 has no 'role'"),
        ({"chosen": [USER, REPLY], "rejected": [{"role": "user"}, REPLY]},
         "rejected", "message 0 has no 'content'"),
        ({"chosen": [USER, {"role": "assistant", "content": 7}], "rejected": [USER, REPLY]},
         "chosen", "message 1 content is a number"),
        ({"chosen": [USER, {"role": "assistant", "content": None}], "rejected": [USER, REPLY]},
         "chosen", "content is null"),
        ({"chosen": [USER, {"role": "assistant", "content": [{"type": "text"}]}],
          "rejected": [USER, REPLY]}, "chosen", "content is a list"),
        ({"chosen": [USER, "a"], "rejected": [USER, REPLY]}, "chosen", "message 1 is a string"),
        ({"chosen": [], "rejected": [USER, REPLY]}, "chosen", "empty list of messages"),
        ({"prompt": [], "chosen": [REPLY], "rejected": [REPLY]}, "prompt", "empty list"),
        ({"chosen": [USER, REPLY], "rejected": [{"role": "system", "content": "s"}]},
         "rejected", "only 'system'"),
        ({"chosen": [USER, REPLY, {"role": "system", "content": "s"}], "rejected": [USER, REPLY]},
         "chosen", "'system' message after"),
        ({"chosen": [REPLY, USER, REPLY], "rejected": [USER, REPLY]},
         "chosen", "starts with an 'assistant'"),
        ({"chosen": [USER, REPLY], "rejected": [USER]}, "rejected", "no 'assistant'"),
        ({"chosen": [USER, REPLY], "rejected": "a"}, "rejected", "a string but 'chosen' is a list"),
        ({"prompt": "q", "chosen": [REPLY], "rejected": [REPLY]}, "prompt", "is a string but"),
        ({"prompt": 5, "chosen": "a", "rejected": "b"}, "prompt", "is a number (5) but"),
        ({"chosen": {"a": 1}, "rejected": "b"}, "chosen", "got an object"),
        ({"prompt": "q", "rejected": "b"}, "chosen", "missing field"),
    ],
)  # fmt: skip
def test_malformed_trl_record_names_file_line_and_field(tmp_path, record, column, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [pair(0), json.dumps(record)])
    with pytest.raises(DataError, match=re.escape(message)) as info:
        read_chosen_rejected(path)
    err = info.value
    assert (err.path, err.line, err.column) == (str(path), 2, column)
    assert str(err).startswith(f"{path}, line 2, column {column!r}: ")
    assert "\n" not in str(err)


def write_parquet(path: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def test_parquet_error_names_row_and_field(tmp_path):
    records = [
        {"chosen": [USER, REPLY], "rejected": [USER, REPLY]},
        {"chosen": [USER, REPLY], "rejected": [USER, {"role": "bot", "content": "x"}]},
    ]
    path = write_parquet(tmp_path / "bad.parquet", records)
    with pytest.raises(DataError, match="role 'bot'") as info:
        read_chosen_rejected(path)
    assert (info.value.line, info.value.column, info.value.unit) == (2, "rejected", "row")
    assert str(info.value).startswith(f"{path}, row 2, column 'rejected': message 1")


def test_parquet_missing_column(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", [{"prompt": "q", "chosen": "a", "score": 1}])
    with pytest.raises(DataError, match="missing column") as info:
        read_chosen_rejected(path)
    assert info.value.column == "rejected"
    assert "'score'" in str(info.value)


def test_parquet_detected_by_magic_bytes(tmp_path):
    renamed = tmp_path / "pairs.data"
    renamed.write_bytes((FIXTURES / "trl_standard.parquet").read_bytes())
    assert len(read_chosen_rejected(renamed)) == 2


def flipped(content: bytes, where: float, mask: int) -> bytes:
    """``content`` with the byte at fraction ``where`` of its length XOR-ed with ``mask``."""
    at = int(where * len(content))
    return content[:at] + bytes([content[at] ^ mask]) + content[at + 1 :]


@pytest.mark.parametrize(
    ("name", "corrupt"),
    [
        ("trl_standard.parquet", lambda b: b[:-20]),
        # Regressions found by fuzzing: a message spanning lines (a missing first byte), and a
        # UnicodeDecodeError escaping pyarrow (a corrupt string value, a corrupt column name).
        ("trl_standard.parquet", lambda b: b[1:]),
        ("trl_standard.parquet", lambda b: flipped(b, 0.0625, 128)),
        ("trl_conversational_implicit.parquet", lambda b: flipped(b, 0.40234375, 128)),
    ],
)
def test_corrupt_parquet_is_a_one_line_data_error(tmp_path, name, corrupt):
    broken = tmp_path / name
    broken.write_bytes(corrupt((FIXTURES / name).read_bytes()))
    with pytest.raises(DataError, match="not a readable Parquet file") as info:
        read_chosen_rejected(broken)
    assert str(broken) in str(info.value) and "\n" not in str(info.value)


def test_parquet_binary_cell_is_a_type_error(tmp_path):
    """Regression (fuzzing): naming a bytes value's type raised TypeError in json.dumps."""
    path = write_parquet(tmp_path / "b.parquet", [{"chosen": b"\xff", "rejected": "y"}])
    with pytest.raises(DataError, match="got bytes") as info:
        read_chosen_rejected(path)
    assert (info.value.line, info.value.column) == (1, "chosen")


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"pip install jaxpref\[parquet\]") as info:
        read_chosen_rejected(FIXTURES / "trl_standard.parquet")
    assert "\n" not in str(info.value)
