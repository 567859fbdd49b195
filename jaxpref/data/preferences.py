"""Read chosen/rejected preference pairs (TRL formats, Anthropic HH-RLHF) as extra arena rows.

A file holds one pair a record: JSON lines (``.jsonl``, gzip-compressed or not) or Parquet
(``.parquet``; needs ``pip install jaxpref[parquet]``). A record is in one of TRL's preference
formats (other fields are ignored):

- *standard*: ``prompt``, ``chosen`` and ``rejected`` strings, the prompt and two completions;
- *standard, implicit prompt*: ``chosen`` and ``rejected`` strings holding the whole text; the
  prompt is their shared prefix (cut back to a word boundary);
- *conversational*: ``prompt``, ``chosen`` and ``rejected`` lists of ``{"role", "content"}``
  messages (roles ``user`` and ``assistant``, after optional ``system`` messages, which are
  joined to the first user turn); the conversation is the prompt, then the completion;
- *conversational, implicit prompt*: ``chosen`` and ``rejected`` hold whole conversations;
- *Anthropic HH-RLHF*: strings written as ``\\n\\nHuman: ...\\n\\nAssistant: ...``. A string
  record whose text (prompt, then completion) holds both markers is read as such a dialogue, so
  prompt-extracted HH sets (``"prompt": "\\n\\nHuman: ...\\n\\nAssistant:"``) keep their turns.

Each pair becomes one row shaped like `arena.read_arena_csv`'s labelled output: the
user turns are the prompt, the two conversations' assistant turns are the two responses in a
random order, and the label says which side was chosen (0 = A, 1 = B; never a tie). The frame can
thus be concatenated to arena training rows. Texts are stripped of surrounding whitespace. A
``subset`` field (RewardBench's: the group of the pair, a string in every record) is kept as
the frame's ``subset`` column (`arena.SUBSET`), and a ``margin`` field (TRL's reward-trainer
margin: a finite number in every record) as the float ``margin`` column (`arena.MARGIN`).

The same records in other shapes reuse these parts: `read_records` reads any fields of a
JSON-lines or Parquet file (`Fields`), `completion_turns` makes turns of one prompt and one
completion (`jaxpref.data.responses`).
"""

from __future__ import annotations

import gzip
import io
import math
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from typing import IO, NamedTuple

import numpy as np
import pandas as pd

from jaxpref.data.arena import (
    MARGIN,
    SUBSET,
    TEXT_COLUMNS,
    DataError,
    decode_json,
    json_type,
    object_array,
    open_input,
)

__all__ = [
    "PAIR_FIELDS",
    "FieldError",
    "Fields",
    "Record",
    "arrow_stream_records",
    "completion_turns",
    "pair_to_row",
    "parquet_records",
    "parse_dialogue",
    "read_chosen_rejected",
    "read_records",
    "rows_of_records",
    "same_form",
    "text_field",
]

HUMAN = "Human"
ASSISTANT = "Assistant"
PROMPT = "prompt"
FIELDS = ("chosen", "rejected")
ROLES = ("system", "user", "assistant")
PARQUET_INSTALL = "pip install jaxpref[parquet]"

# A role marker starts the text or follows a blank line ("\n\nHuman:"); "Human:" inside a turn
# (which real HH-RLHF replies contain) is text, not a new turn.
_MARKER = re.compile(r"(?:\A|\n\n)(Human|Assistant):")
_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_EXPECTED = "a JSON-lines or Parquet file"

Turns = list[tuple[str, str]]


class FieldError(ValueError):
    """A problem with one field of a record; the reader adds the file and line."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field


class Fields(NamedTuple):
    """The fields a record is read for (the columns read of a table): those it must have,
    and those it may."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


PAIR_FIELDS = Fields(FIELDS, (PROMPT, SUBSET, MARGIN))


def parse_dialogue(text: str) -> Turns:
    """Split a ``Human:``/``Assistant:`` dialogue into (human, assistant) turns, text stripped.

    A role marker counts only at the start of the text or after a blank line (``\\n\\n``). Text
    before the first Human turn must be blank. Consecutive segments of the same role (two Human
    turns in a row, say) are joined with a blank line into one turn, and a trailing Human turn
    without a reply gets an empty reply, so the result always alternates.

    Raises:
        ValueError: the dialogue has no Human turn, non-blank text before the first one, or no
            Assistant turn at all.
    """
    pieces = _MARKER.split(text)  # [preamble, role, body, role, body, ...]
    if HUMAN not in pieces[1::2]:
        raise ValueError(f"no Human turn (no '\\n\\nHuman:' marker) in {_excerpt(text)}")
    first = pieces.index(HUMAN, 1)
    preamble = "".join(pieces[:first])
    if preamble.strip():
        raise ValueError(f"text before the first Human turn: {_excerpt(preamble)}")
    roles = pieces[first::2]
    if ASSISTANT not in roles:
        raise ValueError(f"no Assistant turn in {_excerpt(text)}")
    bodies = [body.strip() for body in pieces[first + 1 :: 2]]
    return _alternate(list(zip(roles, bodies, strict=True)))


def _alternate(segments: list[tuple[str, str]]) -> Turns:
    """(human, assistant) turns from (role, text) segments that start with a Human one.

    Runs of one role are joined with a blank line; a trailing Human turn gets an empty reply.
    """
    merged: list[tuple[str, list[str]]] = []
    for role, body in segments:
        if merged and merged[-1][0] == role:
            merged[-1][1].append(body)
        else:
            merged.append((role, [body]))
    texts = ["\n\n".join(bodies) for _, bodies in merged]
    if len(texts) % 2:
        texts.append("")
    return list(zip(texts[0::2], texts[1::2], strict=True))


def _excerpt(text: str, limit: int = 60) -> str:
    """A short quoted excerpt of ``text`` for error messages."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def pair_to_row(chosen: str, rejected: str, rng: np.random.Generator) -> dict[str, object]:
    """One arena-style row (``prompt``, ``response_a``, ``response_b``, ``label``) from a pair.

    Side A is the chosen dialogue with probability 1/2 (one draw from ``rng``), so a model cannot
    learn the side; ``label`` is 0 when A is the chosen one, else 1. See :func:`_turns_to_row`
    for dialogues whose human turns differ.

    Raises:
        ValueError: either dialogue cannot be parsed (see :func:`parse_dialogue`).
    """
    return _turns_to_row(parse_dialogue(chosen), parse_dialogue(rejected), rng)


def _turns_to_row(chosen: Turns, rejected: Turns, rng: np.random.Generator) -> dict[str, object]:
    """Build the row from parsed dialogues.

    The two dialogues normally share every turn but the last reply. When their human turns
    differ (HH-RLHF has such pairs), the prompt is the chosen dialogue's human turns and each
    side keeps its own assistant turns; all three lists are padded with empty strings to the
    longer dialogue's turn count, so that they line up turn by turn. (A padded side's final
    reply is then empty for :func:`jaxpref.data.text.format_side`, so such rows are noisy.)
    """
    n_turns = max(len(chosen), len(rejected))
    prompt = _padded([human for human, _ in chosen], n_turns)
    chosen_replies = _padded([reply for _, reply in chosen], n_turns)
    rejected_replies = _padded([reply for _, reply in rejected], n_turns)
    a_is_chosen = bool(rng.random() < 0.5)
    if a_is_chosen:
        response_a, response_b = chosen_replies, rejected_replies
    else:
        response_a, response_b = rejected_replies, chosen_replies
    return {
        "prompt": prompt,
        "response_a": response_a,
        "response_b": response_b,
        "label": 0 if a_is_chosen else 1,
    }


def _padded(texts: list[str], n: int) -> list[str]:
    """``texts`` extended with empty strings to length ``n``."""
    return texts + [""] * (n - len(texts))


def read_chosen_rejected(
    path: str | os.PathLike, seed: int = 0, id_prefix: str = "hh"
) -> pd.DataFrame:
    """Read a preference file (see the module docstring for formats) into labelled arena rows.

    Args:
        path: the file. Parquet is detected by a ``.parquet`` suffix or its magic bytes; anything
            else is read as JSON lines, gzip-compressed when named ``.gz`` or starting with the
            gzip magic bytes: UTF-8, one JSON object a line, blank lines skipped.
        seed: seeds the A/B order (one draw per row, in file order), so the same file and seed
            give the same frame.
        id_prefix: row ids are ``f"{id_prefix}-{line}"`` (the Parquet row number for Parquet).

    Returns:
        The columns and dtypes of ``read_arena_csv(..., labelled=True)``: ``id`` (str),
        ``prompt``, ``response_a``, ``response_b`` (lists of str), ``label`` (int64, 0 or 1) and
        ``line`` (int64, the 1-based line, or row for Parquet), in file order with a fresh
        ``RangeIndex``; ``subset`` and ``margin`` (float64) before ``line`` when the records
        have them (`rows_of_records`).

    Raises:
        DataError: naming the file, line (or row) and field, for a file that is missing, not
            gzip though named ``.gz``, not Parquet though named ``.parquet``, not UTF-8 or
            empty; a line that is not a JSON object; a missing field; a field of the wrong type
            (``chosen`` and ``rejected`` must both be strings or both lists of messages, and a
            ``prompt`` the same); a message that is not an object with a ``role`` among
            ``ROLES`` and string ``content``; an empty conversation, one not starting with a
            user message or without an assistant message; a dialogue that cannot be parsed.
            Parquet without pyarrow installed is a DataError naming ``PARQUET_INSTALL``.
    """
    path_str = os.fspath(path)
    with open_input(path_str, _EXPECTED, "rb") as handle:
        records, unit = read_records(path_str, handle)
        frame = rows_of_records(records, unit, np.random.default_rng(seed), id_prefix)
    if not len(frame):
        raise DataError(path_str, "file is empty, expected records with chosen and rejected")
    return frame


class Record(NamedTuple):
    """One preference record (its fields, by name) and where it is: its file, its 1-based
    line or row in that file (for messages), and its number in the whole source (for ids)."""

    path: str
    row: int
    number: int
    fields: dict


def rows_of_records(
    records: Iterable[Record], unit: str, rng: np.random.Generator, id_prefix: str
) -> pd.DataFrame:
    """Labelled arena rows (as :func:`read_chosen_rejected` returns them; ``line`` is each
    record's ``number``) of preference records, in order; empty when there are none.

    ``unit`` names what a record's ``row`` counts ("line" or "row") in messages; ``rng`` draws
    each row's A/B order in turn. A ``subset`` field becomes the ``subset`` column and a
    ``margin`` field the float ``margin`` column (both before ``line``): every record must then
    have one, a string (a finite number).

    Raises:
        DataError: naming the record's file, row and field, for a record that is not a pair.
    """
    rows: list[dict[str, object]] = []
    numbers: list[int] = []
    subsets = CarriedField(SUBSET, unit)
    margins = CarriedField(MARGIN, unit, finite_number)
    for record in records:
        try:
            chosen, rejected = _record_turns(record.fields)
        except FieldError as err:
            where = {"line": record.row, "column": err.field, "unit": unit}
            raise DataError(record.path, str(err), **where) from None
        rows.append(_turns_to_row(chosen, rejected, rng))
        numbers.append(record.number)
        subsets.add(record)
        margins.add(record)
    return pd.DataFrame(
        {
            "id": [f"{id_prefix}-{number}" for number in numbers],
            **{name: object_array([row[name] for row in rows]) for name in TEXT_COLUMNS},
            "label": np.asarray([row["label"] for row in rows], dtype=np.int64),
            **subsets.column(),
            **margins.column(),
            "line": np.asarray(numbers, dtype=np.int64),
        }
    )


def text_value(value: object) -> str:
    """`value`, a string; ValueError saying what it is otherwise."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {json_type(value)}")
    return value


def finite_number(value: object) -> float:
    """`value`, a finite JSON number, as a float; ValueError saying what it is otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {json_type(value)}")
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value}")
    return float(value)


class CarriedField:
    """An optional field of records kept as a column: in every record or in none.

    `add` each record in turn; `column()` is ``{name: values}``, or ``{}`` when no record had
    the field. A record without it (or null) while others have it, or with a value that
    `convert` (`text_value`, `finite_number`) refuses, is a DataError naming that record, its
    row and the field.
    """

    def __init__(self, name: str, unit: str, convert=text_value) -> None:
        self.name, self.unit, self.convert = name, unit, convert
        self.values: list = []
        self.missing: Record | None = None  # the first record without the field

    def add(self, record: Record) -> None:
        value = record.fields.get(self.name)
        if value is None:
            self.missing = self.missing or record
        else:
            try:
                self.values.append(self.convert(value))
            except ValueError as err:
                self.fail(record, str(err))
        if self.values and self.missing is not None:
            self.fail(self.missing, f"missing or null, but other records have a {self.name}")

    def fail(self, record: Record, detail: str) -> None:
        where = {"line": record.row, "column": self.name, "unit": self.unit}
        raise DataError(record.path, detail, **where)

    def column(self) -> dict[str, list]:
        return {self.name: self.values} if self.values else {}


def read_records(
    path: str, handle: io.BufferedReader, fields: Fields = PAIR_FIELDS
) -> tuple[Iterator[Record], str]:
    """(the records of a JSON-lines or Parquet file open in binary, each numbered by its line or
    row; "line" or "row", what those numbers count). A JSON record keeps every field; of a
    Parquet file the columns of `fields` are read (DataError naming a required one missing)."""
    head = handle.peek(4)[:4]
    if path.endswith(".parquet") or head == _PARQUET_MAGIC:
        numbered, unit = parquet_records(path, handle, fields), "row"
    elif path.endswith(".gz") or head.startswith(_GZIP_MAGIC):
        numbered, unit = _jsonl_records(path, gzip.GzipFile(fileobj=handle, mode="rb")), "line"
    else:
        numbered, unit = _jsonl_records(path, handle), "line"
    return (Record(path, number, number, record) for number, record in numbered), unit


def _jsonl_records(path: str, lines: IO[bytes]) -> Iterator[tuple[int, dict]]:
    """Decode each non-blank line into a JSON object; errors are DataErrors naming the line.

    Lines are split on ``\\n`` only (in binary), so other line-break characters inside JSON
    strings cannot shift the numbering.
    """
    number = 0
    try:
        for number, raw in enumerate(lines, start=1):
            if raw.strip():
                yield number, _decode_line(path, number, raw)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        where = {"line": number + 1} if number else {}
        raise DataError(path, f"not a valid gzip file ({err})", **where) from None
    except OSError as err:
        raise DataError(path, f"cannot read file ({err.strerror or err})") from None


def _decode_line(path: str, number: int, raw: bytes) -> dict:
    """Decode one JSON-lines line, which must hold a JSON object."""
    try:
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as err:
        raise DataError(path, f"not valid UTF-8 text ({err.reason})", line=number) from None
    try:
        record = decode_json(text)
    except ValueError as err:
        raise DataError(path, str(err), line=number) from None
    if not isinstance(record, dict):
        raise DataError(path, f"expected a JSON object, got {json_type(record)}", line=number)
    return record


def parquet_records(
    path: str, handle: IO[bytes], fields: Fields = PAIR_FIELDS
) -> Iterator[tuple[int, dict]]:
    """Yield (1-based row, record) of a Parquet file's columns of `fields` (by default prompt,
    chosen, rejected and subset).

    Raises:
        DataError: naming the file (and row, where known) for a file that is not readable
            Parquet, lacks a chosen or rejected column, or needs pyarrow, not installed.
    """

    def batches(pyarrow):
        import pyarrow.parquet as pq

        table = pq.ParquetFile(handle)
        columns = _columns(path, table.schema_arrow.names, fields)
        return table.iter_batches(batch_size=1024, columns=columns)

    return _table_records(path, "Parquet", batches)


def arrow_stream_records(
    path: str, handle: IO[bytes], fields: Fields = PAIR_FIELDS
) -> Iterator[tuple[int, dict]]:
    """Yield (1-based row, record) of the columns of `fields` of an Arrow IPC stream file (the
    ``data-*.arrow`` files of a ``datasets`` ``save_to_disk`` directory).

    Raises:
        DataError: as :func:`parquet_records` does, for a file that is no Arrow stream.
    """

    def batches(pyarrow):
        reader = pyarrow.ipc.open_stream(handle)
        columns = _columns(path, reader.schema.names, fields)
        for batch in reader:
            batch.validate(full=True)  # Arrow trusts IPC buffers: a corrupt one could crash
            yield batch.select(columns)

    return _table_records(path, "Arrow stream", batches)


def _table_records(path: str, kind: str, batches) -> Iterator[tuple[int, dict]]:
    """Yield (1-based row, record) of the record batches that ``batches(pyarrow)`` opens.

    An unreadable file (one Arrow or the OS refuses, with text that is not UTF-8, or a length
    beyond the memory there is) is a DataError naming ``kind`` and the row being read.
    """
    try:
        import pyarrow  # pyarrow.ipc comes with it
    except ImportError:
        raise DataError(path, f"reading {kind} files needs pyarrow: {PARQUET_INSTALL}") from None
    number = 0
    try:
        for batch in batches(pyarrow):
            for record in batch.to_pylist():
                number += 1
                yield number, record
    except (pyarrow.ArrowException, OSError, UnicodeDecodeError, MemoryError) as err:
        where = {"line": number + 1, "unit": "row"} if number else {}
        # Arrow's messages can span lines; a corrupt length asks for more memory than there is.
        reason = " ".join(str(err).split()) or f"{type(err).__name__}: a corrupt length?"
        raise DataError(path, f"not a readable {kind} file ({reason})", **where) from None


def _columns(path: str, names: list[str], fields: Fields) -> list[str]:
    """The columns of `fields` a table with columns ``names`` has; DataError if a required one
    is missing."""
    missing = [field for field in fields.required if field not in names]
    if missing:
        found = ", ".join(map(repr, names)) or "none"
        raise DataError(path, f"missing column (found: {found})", column=missing[0])
    return [name for name in (*fields.required, *fields.optional) if name in names]


def _record_turns(record: dict) -> tuple[Turns, Turns]:
    """The chosen and rejected conversations of one record, as (human, assistant) turns."""
    chosen, rejected = (text_field(record, field) for field in FIELDS)
    same_form(rejected, "rejected", chosen, "chosen")
    prompt = record.get(PROMPT)
    if prompt is not None:
        same_form(prompt, PROMPT, chosen, "chosen")
    if isinstance(chosen, str):
        return _string_turns(prompt, chosen, rejected)
    chosen_turns, rejected_turns = (completion_turns(prompt, record[f], f) for f in FIELDS)
    return chosen_turns, rejected_turns


def text_field(record: dict, field: str) -> str | list:
    """A record's `field`: a string or a list of messages; FieldError when it is missing or
    of another type."""
    if field not in record:
        found = ", ".join(map(repr, record)) or "none"
        raise FieldError(field, f"missing field (found: {found})")
    value = record[field]
    if not isinstance(value, (str, list)):
        raise FieldError(field, f"expected a string or a list of messages, got {json_type(value)}")
    return value


def same_form(value: object, field: str, other: object, other_field: str) -> None:
    """FieldError on `field` unless `value` is written as `other` is: both strings, or both
    lists of messages."""
    if not isinstance(value, (str, list)) or isinstance(value, str) != isinstance(other, str):
        raise FieldError(field, f"is {_form(value)} but {other_field!r} is {_form(other)}")


def completion_turns(prompt: str | list | None, completion: str | list, field: str) -> Turns:
    """The turns of one prompt (None: none) and one completion of `field`, as (human,
    assistant) turns whose last reply is the completion: strings are a prompt and its reply
    (or an HH-RLHF dialogue when their text holds both role markers), lists of messages one
    conversation. FieldError naming the field at fault."""
    if isinstance(completion, str):
        text = (prompt or "") + completion
        if set(_MARKER.findall(text)) == {HUMAN, ASSISTANT}:
            return _dialogue_turns(text, field)
        return [((prompt or "").strip(), completion.strip())]
    start = _messages(PROMPT, prompt) if prompt is not None else []
    return _conversation_turns(field, start + _messages(field, completion))


def _dialogue_turns(text: str, field: str) -> Turns:
    """`parse_dialogue` of a field's text; FieldError naming the field."""
    try:
        return parse_dialogue(text)
    except ValueError as err:
        raise FieldError(field, str(err)) from None


def _form(value: object) -> str:
    """How a field is written, for mismatch messages."""
    if isinstance(value, str):
        return "a string"
    return "a list of messages" if isinstance(value, list) else json_type(value)


def _string_turns(prompt: str | None, chosen: str, rejected: str) -> tuple[Turns, Turns]:
    """Turns of a standard (string) record: an HH-RLHF dialogue, or one prompt-completion turn."""
    texts = {"chosen": (prompt or "") + chosen, "rejected": (prompt or "") + rejected}
    if any(set(_MARKER.findall(text)) == {HUMAN, ASSISTANT} for text in texts.values()):
        chosen_turns, rejected_turns = (_dialogue_turns(texts[f], f) for f in FIELDS)
        return chosen_turns, rejected_turns
    if prompt is None:
        prompt, chosen, rejected = _split_shared_prefix(chosen, rejected)
    prompt = prompt.strip()
    return [(prompt, chosen.strip())], [(prompt, rejected.strip())]


def _split_shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen completion, rejected completion) of two whole texts.

    The prompt is their longest common prefix, cut back to the last whitespace when it ends
    inside a word ("The sky is bl" of "The sky is blue." and "The sky is black." gives
    "The sky is ").
    """
    n = len(os.path.commonprefix([chosen, rejected]))
    if not all(n == len(text) or text[n].isspace() for text in (chosen, rejected)):
        while n and not chosen[n - 1].isspace():
            n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def _messages(field: str, value: list) -> list[tuple[str, str]]:
    """(role, content) of each message in ``value``, which must be a non-empty list of them."""
    if not value:
        raise FieldError(field, "empty list of messages")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            kind = json_type(message)
            raise FieldError(field, f"message {i} is {kind}, expected an object with a role")
        for key in ("role", "content"):
            if key not in message:
                raise FieldError(field, f"message {i} has no {key!r}")
        role, content = message["role"], message["content"]
        if not isinstance(role, str) or role not in ROLES:
            shown = repr(role) if isinstance(role, str) else json_type(role)
            raise FieldError(field, f"message {i} has role {shown}, expected one of {ROLES}")
        if not isinstance(content, str):
            kind = json_type(content)
            raise FieldError(field, f"message {i} content is {kind}, expected a string")
        out.append((role, content))
    return out


def _conversation_turns(field: str, messages: list[tuple[str, str]]) -> Turns:
    """Turns of a conversation; leading system messages are joined to the first user turn."""
    roles = [role for role, _ in messages]
    n_system = next((i for i, role in enumerate(roles) if role != "system"), len(roles))
    if n_system == len(roles):
        raise FieldError(field, "conversation has only 'system' messages")
    if "system" in roles[n_system:]:
        raise FieldError(field, "a 'system' message after the first user or assistant message")
    if roles[n_system] != "user":
        raise FieldError(field, "conversation starts with an 'assistant' message, not 'user'")
    if "assistant" not in roles:
        raise FieldError(field, "conversation has no 'assistant' message")
    segments = [
        (ASSISTANT if role == "assistant" else HUMAN, text.strip()) for role, text in messages
    ]
    return _alternate(segments)
