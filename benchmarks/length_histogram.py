"""Print the arena sample's token-length histogram that `gpu_check.py` ships (arena_lengths.json).

    python benchmarks/length_histogram.py --preset DIR    # a DeBERTa-v3 preset (its tokenizer)

For 512 and 1,024 tokens: jaxpref's pair encoding (prompt as context, both sides truncated to
the sequence length) of the 1,000 rows, as sparse (side A bin, side B bin, pairs) counts of
BIN-token bins. Run once with the tokenizer the benchmarks use (saved, with a `source` line, as
`benchmarks/arena_lengths.json`); gpu_check.py then synthesizes batches with this length mix
without a tokenizer or TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

from collections import Counter  # noqa: E402

from benchlib import load_frame  # noqa: E402

from jaxpref.data import text  # noqa: E402  # noqa: E402
from jaxpref.inputs import pipeline
from jaxpref.models import backbones

BIN = 32


def histogram(preset: str, length: int) -> list[list[int]]:
    """Sorted [bin of side A, bin of side B, pairs] over the sample (bin = tokens // BIN)."""
    preprocessor = backbones.load_preprocessor(preset, length)
    encoder = pipeline.PairEncoder(preprocessor, ("token_ids", "padding_mask"))
    tokens = pipeline.tokenize(text.format_pairs(load_frame()), encoder, None, False)
    counts = Counter((int(a) // BIN, int(b) // BIN) for a, b in tokens.lengths)
    return [[a, b, n] for (a, b), n in sorted(counts.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True)
    args = parser.parse_args()
    lengths = (512, 1024)
    buckets = {str(n): list(pipeline.bucket_lengths(n)) for n in lengths}
    hist = {str(n): histogram(args.preset, n) for n in lengths}
    print(json.dumps({"bin": BIN, "buckets": buckets, **hist}))


if __name__ == "__main__":
    main()
