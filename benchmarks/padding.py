"""Padding efficiency and compiled shapes of batch layouts on the 1,000 arena rows (no timing).

Tokenizes the embedded sample once per sequence length with the tiny DeBERTa-v3 preset that
run.py trains (the same tokens), then compares batch layouts (`padding_analysis`) for several
batch sizes. Efficiency = real / computed tokens; (n) = distinct shapes the train step compiles.

    python benchmarks/padding.py --out benchmarks/results/padding.json    # about 1 minute
"""

from __future__ import annotations

import sys

import numpy as np
from benchlib import ArenaInputs, Report, load_frame, parse_args, parser, tiny_preset, work_dir

from jaxpref.data import text
from jaxpref.models import backbones


def split_sides_plan(lengths: np.ndarray, batch_size: int, buckets, seed: int = 0) -> list:
    """(rows, short length, long length) batches of a layout jaxpref does not use.

    Each pair's shorter side would go into one (B, Ls) backbone call and its longer side into
    a (B, Ll) call, Ls and Ll each the bucket of their batch maximum; rows are grouped by
    (long bucket, short bucket). Every (Ls, Ll) combination is a shape to compile.
    """
    bks = np.asarray(buckets)
    short = np.searchsorted(bks, lengths.min(axis=1))
    long = np.searchsorted(bks, lengths.max(axis=1))
    tie = np.random.default_rng(seed).random(len(lengths))
    order = np.lexsort((tie, short, long))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [(c, int(bks[short[c].max()]), int(bks[long[c].max()])) for c in chunks]


def padding_analysis(inputs: ArenaInputs, batch_size: int, sequence_length: int) -> dict:
    """Padding efficiency and compiled shapes of other batch layouts on the same tokens.

    pair_bound: both sides of a row share one padded length (the longer side's), so even
    exact per-row padding cannot beat it. pair_*: jaxpref's layout (one (2B, T) call).
    split_sides_*: a pair's shorter and longer sides in two calls (`split_sides_plan`).
    unpaired_sides_*: the 2N sides bucketed independently, ignoring which pair they belong to:
    a bound no pairwise loss can use directly.
    """
    fine = (*range(32, sequence_length, 32), sequence_length)
    lengths = inputs.tokens.lengths
    sides = lengths.reshape(-1)

    def pairs(bks) -> dict:
        plan = inputs.plan(batch_size, shuffle=True, buckets=bks)
        return {
            "efficiency": inputs.padding_efficiency(plan),
            "shapes": len({b.length for b in plan}),
        }

    def split(bks) -> dict:
        plan = split_sides_plan(lengths, batch_size, bks)
        computed = sum(batch_size * (ls + ll) for _, ls, ll in plan)
        return {"efficiency": float(lengths.sum() / computed), "shapes": len({s[1:] for s in plan})}

    def unpaired(bks) -> dict:
        plan = inputs.plan(2 * batch_size, shuffle=True, buckets=bks, lengths=sides)
        real = sum(int(sides[b.rows[b.weights > 0]].sum()) for b in plan)
        computed = sum(len(b.rows) * b.length for b in plan)
        return {"efficiency": real / computed, "shapes": len({b.length for b in plan})}

    return {
        "pair_bound": float(lengths.sum() / (2 * inputs.tokens.row_lengths().sum())),
        "pair_buckets": pairs(inputs.buckets),
        "pair_buckets_every_32": pairs(fine),
        "split_sides_buckets": split(inputs.buckets),
        "split_sides_buckets_every_32": split(fine),
        "unpaired_sides_buckets": unpaired(inputs.buckets),
        "unpaired_sides_buckets_every_32": unpaired(fine),
    }


def analyse(preset: str, sequence_lengths: list[int], batch_sizes: list[int]) -> list[dict]:
    keys = tuple(backbones.load_backbone(preset, load_weights=False).input.keys())
    texts = text.format_pairs(load_frame())
    rows = []
    for length in sequence_lengths:
        inputs = ArenaInputs.tokenize(texts, backbones.load_preprocessor(preset, length), keys)
        for batch in batch_sizes:
            layouts = padding_analysis(inputs, batch, length)
            rows.append({"sequence_length": length, "batch_size": batch, **layouts})
    return rows


def table_row(row: dict) -> dict:
    layouts = {k: v for k, v in row.items() if isinstance(v, dict)}
    out = {"tokens": row["sequence_length"], "batch": row["batch_size"]}
    out["pair bound"] = f"{row['pair_bound']:.3f}"
    return out | {k: f"{v['efficiency']:.3f} ({v['shapes']})" for k, v in layouts.items()}


def main(argv: list[str] | None = None) -> int:
    parsed = parser(__doc__)
    parsed.add_argument("--sequence-lengths", type=int, nargs="+", default=[512, 1024])
    parsed.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16, 32])
    parsed.add_argument("--preset", help="tokenizer preset (default: build the tiny one)")
    opts = parse_args(parsed, argv)
    report = Report("padding", opts.out, argv)
    with work_dir(None, "jaxpref-padding-", keep=False) as work:
        preset = opts.preset or tiny_preset(work / "tiny_deberta")
        rows = analyse(preset, opts.sequence_lengths, opts.batch_sizes)
    report.finish([table_row(r) for r in rows], {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
