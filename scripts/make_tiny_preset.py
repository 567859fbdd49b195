"""Build a tiny, randomly initialised keras-hub preset (DeBERTa-v3 or a decoder) for offline runs.

Example: python scripts/make_tiny_preset.py --out runs/tiny_deberta
         python scripts/make_tiny_preset.py --family qwen3 --out runs/tiny_qwen3
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from jaxpref.data import arena  # noqa: E402  # noqa: E402
from jaxpref.models.tiny_preset import (  # noqa: E402
    DECODER_TOKENIZERS,
    arena_texts,
    build_tiny_deberta_preset,
    build_tiny_decoder_preset,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="preset directory to write")
    parser.add_argument("--family", default="deberta", choices=["deberta", *DECODER_TOKENIZERS])
    parser.add_argument(
        "--csv", default=str(arena.DEFAULT_TRAIN_CSV), help="CSV for the vocabulary"
    )
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--max-sequence-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    texts = arena_texts(args.csv)
    sizes = dict(
        vocab_size=args.vocab_size,
        num_layers=args.num_layers,
        hidden_dim=args.hidden_dim,
        intermediate_dim=2 * args.hidden_dim,
        seed=args.seed,
    )
    if args.family == "deberta":
        path = build_tiny_deberta_preset(
            args.out, texts, max_sequence_length=args.max_sequence_length, **sizes
        )
    else:
        path = build_tiny_decoder_preset(
            args.out, args.family, texts, sequence_length=args.max_sequence_length, **sizes
        )
    print(path)


if __name__ == "__main__":
    main()
