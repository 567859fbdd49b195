"""The PyTorch peer of realsize.py: Hugging Face's DeBERTa-v2/v3 on the jaxpref worker's batches.

`DebertaV2ForSequenceClassification` with the deberta-v3 architecture given (random weights,
float32, full fine-tuning, Adam), trained on the same (2B, T) token batches as jaxpref's step
(each side one sequence; labels random). A child of realsize.py in another interpreter (one with
numpy, torch and transformers; no jaxpref, no Keras), answering `train` and `infer`.
"""

from __future__ import annotations

import os
import time

import numpy as np
from benchlib import serve


def build(config: dict):
    """deberta-v3-small/base's Hugging Face configuration with the sizes given."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    torch.manual_seed(0)
    hf_config = DebertaV2Config(
        vocab_size=config["vocabulary_size"],
        hidden_size=config["hidden_dim"],
        num_hidden_layers=config["num_layers"],
        num_attention_heads=config["num_heads"],
        intermediate_size=config["intermediate_dim"],
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=config.get("bucket_size", 256),
        max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"],
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        position_biased_input=False,
        type_vocab_size=0,
        num_labels=3,
    )
    return DebertaV2ForSequenceClassification(hf_config)


def torch_worker(config: dict) -> None:
    """Warm up on the batches of `config['batches']` (an .npz), then serve train and infer."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    data = np.load(config["batches"])
    batches = [
        (torch.from_numpy(data[f"ids{i}"]).long(), torch.from_numpy(data[f"mask{i}"]).long())
        for i in range(len(data.files) // 2)
    ]
    model = build(config)
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
    if config["infer"]:
        infer()
    ready = {
        "warmup_s": time.perf_counter() - start,
        "params": sum(p.numel() for p in model.parameters()),
        "versions": {"torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    serve(ready, {"train": train, "infer": infer})
