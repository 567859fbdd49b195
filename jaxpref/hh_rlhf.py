"""Read chosen/rejected preference pairs (Anthropic HH-RLHF, TRL) as extra arena training rows.

The files hold one JSON object a line, ``{"chosen": "...", "rejected": "..."}``, each value a
whole dialogue written as ``\\n\\nHuman: ...\\n\\nAssistant: ...``; they may be gzip-compressed.
Each pair becomes one row shaped like :func:`jaxpref.data.read_arena_csv`'s labelled output: the
human turns are the prompt, the two dialogues' assistant turns are the two responses in a random
order, and the label says which side was chosen (0 = A, 1 = B; never a tie). The frame can thus
be concatenated to arena training rows.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Iterator

import numpy as np
import pandas as pd

from jaxpref.data import TEXT_COLUMNS, DataError

__all__ = ["parse_dialogue", "pair_to_row", "read_chosen_rejected"]

HUMAN = "Human"
ASSISTANT = "Assistant"
FIELDS = ("chosen", "rejected")

# A role marker starts the text or follows a blank line ("\n\nHuman:"); "Human:" inside a turn
# (which real HH-RLHF replies contain) is text, not a new turn.
_MARKER = re.compile(r"(?:\A|\n\n)(Human|Assistant):")
_GZIP_MAGIC = b"\x1f\x8b"

Turns = list[tuple[str, str]]


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

    merged: list[tuple[str, list[str]]] = []  # (role, bodies) with same-role runs merged
    for role, body in zip(pieces[first::2], pieces[first + 1 :: 2], strict=True):
        if merged and merged[-1][0] == role:
            merged[-1][1].append(body.strip())
        else:
            merged.append((role, [body.strip()]))
    if len(merged) < 2:
        raise ValueError(f"no Assistant turn in {_excerpt(text)}")

    texts = ["\n\n".join(bodies) for _, bodies in merged]
    if len(texts) % 2:
        texts.append("")  # a trailing Human turn without a reply
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
    reply is then empty for :func:`jaxpref.text.format_side`, so such rows are noisy.)
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
    """Read a chosen/rejected JSON-lines file (plain or gzip) into labelled arena-style rows.

    Args:
        path: the file; gzip is detected by a ``.gz`` suffix or the gzip magic bytes. UTF-8, one
            JSON object a line with string fields ``chosen`` and ``rejected`` (other fields are
            ignored); blank lines are skipped.
        seed: seeds the A/B order (one draw per row, in file order), so the same file and seed
            give the same frame.
        id_prefix: row ids are ``f"{id_prefix}-{line}"``.

    Returns:
        The columns and dtypes of ``read_arena_csv(..., labelled=True)``: ``id`` (str),
        ``prompt``, ``response_a``, ``response_b`` (lists of str), ``label`` (int64, 0 or 1) and
        ``line`` (int64, the 1-based line number), in file order with a fresh ``RangeIndex``.

    Raises:
        DataError: naming the file, line and field, for a file that is missing, not gzip though
            named ``.gz``, not UTF-8 or empty; a line that is not a JSON object; a missing or
            non-string ``chosen``/``rejected``; a dialogue that cannot be parsed.
    """
    path_str = os.fspath(path)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    lines: list[int] = []
    for number, raw in _numbered_lines(path_str):
        if not raw.strip():
            continue
        record = _decode_record(path_str, number, raw)
        dialogues = []
        for field in FIELDS:
            try:
                dialogues.append(parse_dialogue(record[field]))
            except ValueError as err:
                raise DataError(path_str, str(err), line=number, column=field) from None
        rows.append(_turns_to_row(*dialogues, rng))
        lines.append(number)
    if not rows:
        raise DataError(path_str, "file is empty, expected JSON lines with chosen and rejected")
    return pd.DataFrame(
        {
            "id": [f"{id_prefix}-{number}" for number in lines],
            **{name: _object_array([row[name] for row in rows]) for name in TEXT_COLUMNS},
            "label": np.asarray([row["label"] for row in rows], dtype=np.int64),
            "line": np.asarray(lines, dtype=np.int64),
        }
    )


def _numbered_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, raw bytes) of a plain or gzip file; errors become DataError.

    Lines are split on ``\\n`` only (in binary), so other line-break characters inside JSON
    strings cannot shift the numbering.
    """
    number = 0
    try:
        with open(path, "rb") as raw:
            compressed = path.endswith(".gz") or raw.read(2) == _GZIP_MAGIC
        opener = gzip.open if compressed else open
        with opener(path, "rb") as handle:
            for number, data in enumerate(handle, start=1):
                yield number, data
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory, expected a JSON-lines file") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        where = {"line": number + 1} if number else {}
        raise DataError(path, f"not a valid gzip file ({err})", **where) from None
    except OSError as err:
        raise DataError(path, f"cannot read file ({err.strerror or err})") from None


def _decode_record(path: str, number: int, raw: bytes) -> dict[str, str]:
    """Decode one line into a dict holding string ``chosen`` and ``rejected`` values."""
    try:
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as err:
        raise DataError(path, f"not valid UTF-8 text ({err.reason})", line=number) from None
    try:
        record = json.loads(text, strict=False)  # allow raw tabs etc. inside strings
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON ({err})", line=number) from None
    except RecursionError:
        raise DataError(path, "not valid JSON (nested too deeply)", line=number) from None
    if not isinstance(record, dict):
        raise DataError(path, f"expected a JSON object, got {_json_kind(record)}", line=number)
    for field in FIELDS:
        if field not in record:
            raise DataError(path, "missing field", line=number, column=field)
        if not isinstance(record[field], str):
            kind = _json_kind(record[field])
            raise DataError(path, f"expected a string, got {kind}", line=number, column=field)
    return record


def _json_kind(value: object) -> str:
    """Name a decoded JSON value's type as JSON does (for error messages)."""
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return kinds.get(type(value), "a number")


def _object_array(values: list[list[str]]) -> np.ndarray:
    """Pack lists into a 1-D object array so that pandas keeps each list as one cell."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
