"""jaxpref.data.responses through sources.read_responses: single responses to score, from CSV,
JSON lines, Parquet and folders of shards, each a row of a prompt's and a response's turns;
errors name the file, line or row and column."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_parquet_shards

from jaxpref.data import responses, sources
from jaxpref.data.arena import DataError

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "A joke?"},
]
RECORDS = [
    {"prompt": "Name a prime.", "response": " 7 "},
    {"prompt": CONVERSATION, "response": [{"role": "assistant", "content": "No."}]},
    {
        "prompt": "\n\nHuman: Hi\n\nAssistant: Hey.\n\nHuman: Bye",
        "response": "\n\nAssistant: Ciao.",
    },
]
TURNS = [
    (["Name a prime."], ["7"]),
    (["Be brief.\n\nHi!", "A joke?"], ["Hello.", "No."]),
    (["Hi", "Bye"], ["Hey.", "Ciao."]),
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def turns_of(frame: pd.DataFrame) -> list[tuple[list, list]]:
    return list(zip(frame["prompt"], frame["response"], strict=True))


def test_strings_conversations_and_dialogues_read_as_turns_in_every_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Parquet holds one type a column: the conversational record goes alone into a folder.
    standard = [RECORDS[0], RECORDS[2]]
    pq.write_table(pa.Table.from_pylist(standard), tmp_path / "standard.parquet")
    shards = write_parquet_shards(tmp_path / "chats", [RECORDS[1]] * 3, 2)
    frame = sources.read_responses(write_jsonl(tmp_path / "mixed.jsonl", RECORDS))
    assert frame.columns.tolist() == ["id", "prompt", "response", "line"]
    assert frame["id"].tolist() == ["mixed-1", "mixed-2", "mixed-3"]
    assert turns_of(frame) == TURNS
    parquet = sources.read_responses(tmp_path / "standard.parquet")
    assert parquet["id"].tolist() == ["standard-1", "standard-2"]
    assert turns_of(parquet) == [TURNS[0], TURNS[2]]
    assert turns_of(sources.read_responses(shards)) == [TURNS[1]] * 3


def test_a_csv_holds_plain_text_and_may_name_its_rows(tmp_path):
    path = tmp_path / "candidates.csv"
    path.write_text('id,prompt,response,score\nq1,"Say hi,\nplease.","[""Hi""]",3\nq2,2+2?,4,1\n')
    frame = sources.read_responses(path)
    assert frame["id"].tolist() == ["q1", "q2"] and frame["line"].tolist() == [2, 4]
    assert turns_of(frame) == [(["Say hi,\nplease."], ['["Hi"]']), (["2+2?"], ["4"])]
    path.write_text("prompt,response\nHi,Hello\n")
    assert sources.read_responses(path)["id"].tolist() == ["candidates-2"]


def test_ids_of_records_are_kept_as_text_and_must_be_unique(tmp_path):
    records = [{"id": 7, "prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}]
    frame = sources.read_responses(write_jsonl(tmp_path / "x.jsonl", records))
    assert frame["id"].tolist() == ["7", "x-2"]
    records.append({"id": "7", "prompt": "e", "response": "f"})
    with pytest.raises(DataError, match=r"x.jsonl, line 3, column 'id': duplicate id '7', first"):
        sources.read_responses(write_jsonl(tmp_path / "x.jsonl", records))


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": "a"}, "line 2, column 'response': missing field (found: 'prompt')"),
        ({"prompt": "a", "response": 3}, "column 'response': expected a string or a list of"),
        ({"prompt": CONVERSATION, "response": "b"},
         "column 'response': is a string but 'prompt' is a list of messages"),
        ({"prompt": CONVERSATION, "response": [{"role": "user", "content": "b"}]},
         "column 'response': a message is not an assistant's"),
        ({"prompt": [], "response": []}, "column 'prompt': empty list of messages"),
        ({"prompt": "a", "response": "b", "id": [1]}, "column 'id': expected a string or an"),
        ({"prompt": "a", "response": "b", "id": ""}, "column 'id': empty id"),
    ],
)  # fmt: skip
def test_a_bad_record_names_its_line_and_column(tmp_path, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [RECORDS[0], record])
    with pytest.raises(DataError, match=re.escape(message)):
        sources.read_responses(path)


def test_a_file_without_rows_or_columns_is_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows, expected records with a prompt and a response"):
        sources.read_responses(tmp_path / "empty.jsonl")
    (tmp_path / "wrong.csv").write_text("prompt,answer\na,b\n")
    with pytest.raises(DataError, match=r"wrong.csv, line 1, column 'response': missing from"):
        sources.read_responses(tmp_path / "wrong.csv")


def test_plain_values_make_rows_and_bad_ones_name_the_entry():
    frame = responses.responses_frame(["a", ["b", "c"]], ["x", ["y", None]], "score")
    assert frame["id"].tolist() == ["0", "1"]
    assert turns_of(frame) == [(["a"], ["x"]), (["b", "c"], ["y", None])]
    one = responses.responses_frame("a", "x", "score")
    assert turns_of(one) == [(["a"], ["x"])]
    with pytest.raises(DataError, match="a response in each list, but their lengths differ"):
        responses.responses_frame(["a"], ["x", "y"], "score")
    with pytest.raises(DataError, match=r"score, column 'prompt': str: pass two strings"):
        responses.responses_frame("a", ["x"], "score")
