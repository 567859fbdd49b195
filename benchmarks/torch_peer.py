"""The PyTorch peer of `realsize.py`: Hugging Face's DeBERTa-v2/v3 on the jaxpref worker's batches.

    /tmp/torchenv/bin/python benchmarks/torch_peer.py --batches B.npz --num-layers 6

`DebertaV2ForSequenceClassification` with the deberta-v3 architecture given (random weights,
float32, full fine-tuning, Adam), trained on the same (2B, T) token batches as jaxpref's step
(each side one sequence; labels random). Answers `train` and `infer` over the `workerproto`
protocol. Needs only numpy, torch and transformers (no jaxpref, no Keras).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from workerproto import serve


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", required=True, help=".npz from stepworker.py --batches-out")
    parser.add_argument("--num-layers", type=int, default=6)
    parser.add_argument("--hidden-dim", type=int, default=768)
    parser.add_argument("--num-heads", type=int, default=12)
    parser.add_argument("--intermediate-dim", type=int, default=3072)
    parser.add_argument("--vocabulary-size", type=int, default=128100)
    parser.add_argument("--bucket-size", type=int, default=256)
    parser.add_argument("--infer", action="store_true", help="warm up inference too")
    return parser.parse_args(argv)


def build(args):
    """deberta-v3-small/base's Hugging Face configuration with the sizes given."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    torch.manual_seed(0)
    config = DebertaV2Config(
        vocab_size=args.vocabulary_size,
        hidden_size=args.hidden_dim,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        intermediate_size=args.intermediate_dim,
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=args.bucket_size,
        max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"],
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        position_biased_input=False,
        type_vocab_size=0,
        num_labels=3,
    )
    return DebertaV2ForSequenceClassification(config)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    data = np.load(args.batches)
    batches = [
        (torch.from_numpy(data[f"ids{i}"]).long(), torch.from_numpy(data[f"mask{i}"]).long())
        for i in range(len(data.files) // 2)
    ]
    model = build(args)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    labels = [torch.randint(0, 3, (len(ids),)) for ids, _ in batches]

    def train() -> None:
        model.train()
        for (ids, mask), y in zip(batches, labels, strict=True):
            optimizer.zero_grad()
            model(input_ids=ids, attention_mask=mask, labels=y).loss.backward()
            optimizer.step()

    def infer() -> None:
        model.eval()
        with torch.no_grad():
            for ids, mask in batches:
                model(input_ids=ids, attention_mask=mask)

    start = time.perf_counter()
    train()
    if args.infer:
        infer()
    ready = {
        "warmup_s": time.perf_counter() - start,
        "params": sum(p.numel() for p in model.parameters()),
        "versions": {"torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    serve(ready, {"train": train, "infer": infer})


if __name__ == "__main__":
    sys.exit(main())
