"""Turn an arena row into two (context, response) text pairs, one per side.

Each side is read as the whole conversation that side's model took part in: every earlier turn
(user prompt, then that model's reply) followed by the final user prompt form the *context*,
and the model's final reply is the *response*. Single-turn rows give context = the prompt.
Token-level truncation (keep the end of the context, the start of the response) happens when
packing, where the tokenizer is; see `inputs.packers.truncate_pair`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

USER = "User: "
ASSISTANT = "Assistant: "
TURN_SEPARATOR = "\n\n"
SIDES = ("a", "b")
FEATURE_KEYS = ("context_a", "response_a", "context_b", "response_b")
CROSS_KEYS = ("conversation", "response_a", "response_b")


def _turn(text: str | None) -> str:
    return "" if text is None else text


def format_side(prompts: Sequence[str | None], responses: Sequence[str | None]) -> tuple[str, str]:
    """(context, response) for one side; turns are interleaved prompt/response, nulls are empty."""
    n = max(len(prompts), len(responses))
    prompts = [*prompts, *[None] * (n - len(prompts))]
    responses = [*responses, *[None] * (n - len(responses))]
    if n <= 1:
        return _turn(prompts[0] if prompts else None), _turn(responses[0] if responses else None)
    earlier = [
        f"{USER}{_turn(p)}\n{ASSISTANT}{_turn(r)}"
        for p, r in zip(prompts[:-1], responses[:-1], strict=True)
    ]
    context = TURN_SEPARATOR.join([*earlier, f"{USER}{_turn(prompts[-1])}"])
    return context, _turn(responses[-1])


def format_pairs(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Text features for every row: context/response for side A and side B (object arrays)."""
    columns: dict[str, list[str]] = {key: [] for key in FEATURE_KEYS}
    for prompt, response_a, response_b in zip(
        df["prompt"], df["response_a"], df["response_b"], strict=True
    ):
        for side, response in zip(SIDES, (response_a, response_b), strict=True):
            context, reply = format_side(prompt, response)
            columns[f"context_{side}"].append(context)
            columns[f"response_{side}"].append(reply)
    return {key: np.asarray(values, dtype=object) for key, values in columns.items()}


def join_turns(turns: Sequence[str | None], speaker: str) -> str:
    """One string of every turn; with several turns each is marked by its speaker."""
    if len(turns) <= 1:
        return _turn(turns[0] if turns else None)
    return TURN_SEPARATOR.join(f"{speaker}{_turn(t)}" for t in turns)


def format_cross(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Text parts for a cross-encoder, as the competition's winners fed them: every prompt
    turn, every turn of response A, every turn of response B (object arrays)."""
    columns = {
        "conversation": [join_turns(p, USER) for p in df["prompt"]],
        "response_a": [join_turns(r, ASSISTANT) for r in df["response_a"]],
        "response_b": [join_turns(r, ASSISTANT) for r in df["response_b"]],
    }
    return {key: np.asarray(values, dtype=object) for key, values in columns.items()}


_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s", re.MULTILINE)
_HEADER = re.compile(r"^\s*#{1,6}\s", re.MULTILINE)
SIDE_COUNTS = (
    "response_chars", "response_words", "response_lines", "code_blocks", "headers",
    "list_items", "bold_spans", "context_chars",
)  # fmt: skip


def _text_counts(response: str, context: str) -> list[int]:
    return [
        len(response),
        len(response.split()),
        response.count("\n") + 1 if response else 0,
        response.count("```") // 2,
        len(_HEADER.findall(response)),
        len(_LIST_ITEM.findall(response)),
        response.count("**") // 2,
        len(context),
    ]


def side_counts(pairs: dict[str, np.ndarray], side: str) -> np.ndarray:
    """(n, 8) log1p-scaled surface counts of one side (`SIDE_COUNTS`): cheap, telling features."""
    rows = [
        _text_counts(response, context)
        for response, context in zip(
            pairs[f"response_{side}"], pairs[f"context_{side}"], strict=True
        )
    ]
    return np.log1p(np.asarray(rows, dtype=np.float64).reshape(len(rows), -1))


def turn_counts(pairs: dict[str, np.ndarray], side: str) -> np.ndarray:
    """(n,) user turns in each row's conversation, read back from the context `format_side` built.

    A prompt that itself contains a blank line followed by "User: " would count as one turn more.
    """
    marker = TURN_SEPARATOR + USER
    return np.asarray([str(c).count(marker) + 1 for c in pairs[f"context_{side}"]], np.float64)
