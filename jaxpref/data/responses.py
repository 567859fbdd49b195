"""Single responses to score with a reward model (`jaxpref score --responses`,
`Predictor.score`): one (prompt, response) record a row.

A record has a ``prompt`` and a ``response`` field, and may have an ``id`` (other fields are
ignored). In a CSV file (read as `arena.read_arena_csv` reads: quoted cells may span lines) the
cells are plain text. In JSON lines or Parquet (the files `sources.read_rows` reads as
preference files) both are strings, or both lists of TRL messages (``{"role", "content"}``):
the prompt a conversation ending with a user turn, the response its assistant reply; strings
holding ``\\n\\nHuman:`` and ``\\n\\nAssistant:`` markers are an HH-RLHF dialogue
(`preferences.completion_turns`). A row is shaped as one side of an arena row: ``prompt`` the
user turns, ``response`` that side's assistant turns, the last being the one scored.

Ids are the record's ``id`` (a string or an integer, as text) where it has one, else the
source's name and the record's line (or row): ``candidates-7``; they must be unique.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import IO

import numpy as np
import pandas as pd

from jaxpref.data.arena import (
    DataError,
    check_id,
    csv_records,
    json_type,
    object_array,
    texts_frame,
)
from jaxpref.data.preferences import (
    PROMPT,
    FieldError,
    Fields,
    Record,
    completion_turns,
    same_form,
    text_field,
)

__all__ = [
    "FIELDS",
    "PROMPT",
    "RESPONSE",
    "TEXT_COLUMNS",
    "csv_file_records",
    "responses_frame",
    "rows",
]

RESPONSE, ID = "response", "id"
TEXT_COLUMNS = (PROMPT, RESPONSE)
"""A frame's text cells, each a list of turns (user turns; that conversation's replies)."""
FIELDS = Fields(TEXT_COLUMNS, (ID,))


def rows(records: Iterable[Record], unit: str, id_prefix: str) -> pd.DataFrame:
    """The frame of response records, in order: ``id``, ``prompt``, ``response`` (lists of
    turns) and ``line`` (each record's ``number``); empty when there are none.

    ``unit`` names what a record's ``row`` counts ("line" or "row") in messages.

    Raises:
        DataError: naming the record's file, row and field: a missing or mistyped field, a
            conversation that cannot be read, an empty or repeated id.
    """
    ids: list[str] = []
    prompts: list[list[str]] = []
    replies: list[list[str]] = []
    numbers: list[int] = []
    first_row_of_id: dict[str, int] = {}
    for record in records:
        try:
            turns = record_turns(record.fields)
            row_id = record_id(record.fields, f"{id_prefix}-{record.number}")
        except FieldError as err:
            where = {"line": record.row, "column": err.field, "unit": unit}
            raise DataError(record.path, str(err), **where) from None
        check_id(record.path, row_id, record.row, first_row_of_id, unit)
        ids.append(row_id)
        prompts.append([human for human, _ in turns])
        replies.append([reply for _, reply in turns])
        numbers.append(record.number)
    return pd.DataFrame(
        {
            ID: ids,
            PROMPT: object_array(prompts),
            RESPONSE: object_array(replies),
            "line": np.asarray(numbers, dtype=np.int64),
        }
    )


def record_turns(fields: dict) -> list[tuple[str, str]]:
    """(human, assistant) turns of one record, the last reply its response; FieldError."""
    prompt, response = (text_field(fields, name) for name in TEXT_COLUMNS)
    same_form(response, RESPONSE, prompt, PROMPT)
    turns = completion_turns(prompt, response, RESPONSE)
    if isinstance(response, list) and any(m["role"] != "assistant" for m in response):
        raise FieldError(RESPONSE, "a message is not an assistant's: expected the reply alone")
    return turns


def record_id(fields: dict, default: str) -> str:
    """A record's ``id`` as text (a string, or an integer), `default` when it has none."""
    value = fields.get(ID)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise FieldError(ID, f"expected a string or an integer, got {json_type(value)}")
    return str(value)


def csv_file_records(path: str, handle: IO[str]) -> Iterator[Record]:
    """The records of a CSV file open as text, numbered by the line each starts on."""
    for line, cells in csv_records(path, handle, TEXT_COLUMNS, (ID,)):
        yield Record(path, line, line, cells)


def responses_frame(prompts: object, responses: object, source: str) -> pd.DataFrame:
    """Rows as `rows` makes them (less ``line``) from Python values: two strings (one
    response), or two lists of the same length, one entry per response: a string (one turn) or
    a list of turns (the user's; that conversation's replies). Ids are "0", "1", ...

    Raises:
        DataError: naming `source`, the entry and the column (`arena.texts_frame`).
    """
    return texts_frame(
        dict(zip(TEXT_COLUMNS, (prompts, responses), strict=True)), source, "response"
    )
