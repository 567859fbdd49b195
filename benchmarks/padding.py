"""Padding efficiency and compiled shapes of batch layouts on the 1,000 arena rows (no timing).

Tokenizes the embedded sample once per sequence length with the suite's tiny DeBERTa-v3
preset (the same tokens `run.py` trains on), then compares the batch layouts of
`jaxpref_path.padding_analysis` for several batch sizes. Prints a table and writes JSON.

    python benchmarks/padding.py --out benchmarks/results/padding.json    # about 1 minute
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from jaxpref_path import padding_analysis
from run import build_tiny_preset, markdown

from jaxpref.data import text
from jaxpref.data.arena import DEFAULT_TRAIN_CSV, read_arena_csv
from jaxpref.inputs import pipeline
from jaxpref.models import backbones


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequence-lengths", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--preset", help="tokenizer preset (default: build the tiny one)")
    parser.add_argument("--out", type=Path, help="JSON results file")
    return parser.parse_args(argv)


def analyse(preset: str, sequence_lengths: list[int], batch_sizes: list[int]) -> list[dict]:
    backbone = backbones.load_backbone(preset, load_weights=False)
    keys = tuple(backbone.input.keys())
    texts = text.format_pairs(read_arena_csv(DEFAULT_TRAIN_CSV, labelled=True))
    rows = []
    for length in sequence_lengths:
        encoder = pipeline.PairEncoder(backbones.load_preprocessor(preset, length), keys)
        tokens = pipeline.tokenize(texts, encoder, None, progress=False)
        buckets = pipeline.bucket_lengths(length)
        for batch in batch_sizes:
            layouts = padding_analysis(tokens, batch, buckets, length)
            rows.append({"sequence_length": length, "batch_size": batch, **layouts})
    return rows


def table(rows: list[dict]) -> str:
    names = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    header = ["tokens", "batch", "pair bound", *names]
    lines = [
        [
            str(r["sequence_length"]),
            str(r["batch_size"]),
            f"{r['pair_bound']:.3f}",
            *(f"{r[n]['efficiency']:.3f} ({r[n]['shapes']})" for n in names),
        ]
        for r in rows
    ]
    return markdown(lines, header)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        preset = opts.preset or build_tiny_preset(Path(work))
        rows = analyse(preset, opts.sequence_lengths, opts.batch_sizes)
    print(table(rows))
    print("\nefficiency = real / computed tokens; (n) = distinct shapes the train step compiles")
    if opts.out:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=2) + "\n")
        print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
