"""Synthetic arena CSVs of any size, made from the embedded 1,000 real rows.

Each synthetic row takes a random real row, gives it a new id and shuffles the sentences of
every turn (the words of a one-sentence turn), so that no two rows share a text and the token
cache sees new data; one row in five takes side B from another real row (with a random label),
and one in twenty prepends another row's conversation (a longer multi-turn row). Cell lengths,
turn counts and the share of non-ASCII text stay close to the real data's.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from jaxpref.data.arena import DEFAULT_TRAIN_CSV, LABEL_COLUMNS, TEXT_COLUMNS

TRAIN_HEADER = ("id", "model_a", "model_b", *TEXT_COLUMNS, *LABEL_COLUMNS)
TEST_HEADER = ("id", *TEXT_COLUMNS)
MIX_SIDE_B = 0.2
PREPEND_CONVERSATION = 0.05
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def load_source(path: str | Path = DEFAULT_TRAIN_CSV) -> list[dict]:
    """The rows of a labelled arena CSV with each text cell decoded to its list of turns."""
    csv.field_size_limit(2**31 - 1)
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for name in TEXT_COLUMNS:
            turns = json.loads(row[name], strict=False)
            row[name] = [None if t is None else _LONE_SURROGATE.sub("\ufffd", t) for t in turns]
        row["label"] = [float(row[name]) for name in LABEL_COLUMNS].index(1.0)
    return rows


def perturb(turns: Sequence[str | None], rng: random.Random) -> list[str | None]:
    """The turns with their sentences (or, for one sentence, their words) shuffled."""
    out: list[str | None] = []
    for turn in turns:
        if turn is None:
            out.append(None)
            continue
        parts = _SENTENCE_END.split(turn)
        if len(parts) < 2:
            parts = turn.split(" ")
        rng.shuffle(parts)
        out.append(" ".join(parts))
    return out


def synthetic_rows(source: list[dict], n: int, seed: int, first_id: int) -> Iterator[dict]:
    """`n` new rows (CSV cells as strings), ids `first_id`, `first_id + 1`, ..."""
    rng = random.Random(seed)
    for i in range(n):
        base = rng.choice(source)
        turns = {name: perturb(base[name], rng) for name in TEXT_COLUMNS}
        label = base["label"]
        draw = rng.random()
        if draw < MIX_SIDE_B:
            turns["response_b"] = perturb(rng.choice(source)["response_b"], rng)
            label = rng.randrange(len(LABEL_COLUMNS))
        elif draw < MIX_SIDE_B + PREPEND_CONVERSATION:
            other = rng.choice(source)
            turns = {name: perturb(other[name], rng) + turns[name] for name in TEXT_COLUMNS}
        row = {"id": str(first_id + i), "model_a": base["model_a"], "model_b": base["model_b"]}
        row |= {name: json.dumps(turns[name], ensure_ascii=False) for name in TEXT_COLUMNS}
        row |= {name: str(int(k == label)) for k, name in enumerate(LABEL_COLUMNS)}
        yield row


def write_prefixes(rows: Iterator[dict], paths: dict[int, Path], header: Sequence[str]) -> None:
    """Write the first `size` rows to `paths[size]` for every size, reading `rows` once."""
    handles = {size: open(path, "w", encoding="utf-8", newline="") for size, path in paths.items()}
    try:
        writers = {size: csv.writer(handle) for size, handle in handles.items()}
        for writer in writers.values():
            writer.writerow(header)
        for i, row in enumerate(rows):
            cells = [row[name] for name in header]
            for size, writer in writers.items():
                if i < size:
                    writer.writerow(cells)
    finally:
        for handle in handles.values():
            handle.close()


def make_files(
    work: Path, train_sizes: Sequence[int], test_sizes: Sequence[int], seed: int = 0
) -> tuple[dict[int, Path], dict[int, Path]]:
    """Train files (labelled) and test files (competition test.csv columns) of every size.

    Smaller files are the first rows of the largest, so the sizes differ only in row count.
    """
    source = load_source()
    train = {size: work / f"train-{size}.csv" for size in sorted(train_sizes)}
    test = {size: work / f"test-{size}.csv" for size in sorted(test_sizes)}
    write_prefixes(synthetic_rows(source, max(train), seed, 10_000_000), train, TRAIN_HEADER)
    write_prefixes(synthetic_rows(source, max(test), seed + 1, 90_000_000), test, TEST_HEADER)
    return train, test
