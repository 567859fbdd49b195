"""GPU check: deberta_v3_small/base throughput, memory and MFU on one accelerator, no downloads.

Needs only jax (its CUDA build), keras, keras-hub and numpy: no TensorFlow, no tokenizer, no
hub. Random-weight DeBERTa-v3 backbones of the real architectures (LoRA rank 8, bf16 on an
accelerator, float32 on CPU) in jaxpref's siamese layout (both sides of a pair in one (2B, T)
backbone call, masked mean pooling, a dense head over [a, b, a - b, a * b]), fed synthetic token
batches whose side lengths follow the arena sample's histogram (`arena_lengths.json`). For each
architecture and length, in its own process (a clean peak-memory figure): jaxpref's efficient
attention with bucketed padding (jaxpref's buckets), the same with every batch padded to the
length, and keras-hub's attention with fixed padding. Prints a table and writes JSON.

    python benchmarks/gpu_check.py --out gpu_check.json              # ~6-8 min on one H100/H200
    python benchmarks/gpu_check.py --quick --out /tmp/gpu_check.json  # tiny model, CPU, ~2 min
    python benchmarks/gpu_check.py --histogram DIR > benchmarks/arena_lengths.json  # TF needed
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from benchlib import (  # noqa: E402
    ARCHS,
    BENCH_DIR,
    REAL_VOCAB,
    Report,
    child_argv,
    median,
    model_flops,
    parse_args,
    parser,
    peak_flops,
    progress,
    run_child,
    send,
    work_dir,
)
from keras import ops  # noqa: E402

LENGTHS = json.loads((BENCH_DIR / "arena_lengths.json").read_text())
MODES = (("efficient", "bucketed"), ("efficient", "fixed"), ("keras_hub", "fixed"))
BIN = 32


def synthetic_lengths(length: int, rows: int, seed: int = 0) -> np.ndarray:
    """(rows, 2) side lengths drawn from the sample's histogram, uniform inside each bin."""
    cells = np.array(LENGTHS[str(length)])
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(cells), rows, p=cells[:, 2] / cells[:, 2].sum())
    low = cells[pick, :2] * LENGTHS["bin"]
    return np.clip(low + rng.integers(0, LENGTHS["bin"], (rows, 2)), 2, length)


def plan(lengths: np.ndarray, batch: int, buckets: list[int]) -> list[tuple[np.ndarray, int]]:
    """(rows, padded length) batches: rows grouped by the bucket of their longer side."""
    bucket_of = np.searchsorted(buckets, lengths.max(axis=1))
    out = []
    for b, size in enumerate(buckets):
        rows = np.flatnonzero(bucket_of == b)
        for start in range(0, len(rows), batch):
            chunk = np.resize(rows[start : start + batch], batch)  # a short last batch repeats
            out.append((chunk, size))
    return out


def inputs(lengths: np.ndarray, size: int, vocab: int, rng) -> dict:
    """token_ids and padding_mask (B, 2, size) for rows of the given side lengths."""
    mask = (np.arange(size) < lengths[..., None]).astype("int32")
    ids = rng.integers(4, vocab, mask.shape).astype("int32") * mask
    return {"token_ids": ids, "padding_mask": mask}


def build_model(arch: str, attention: str, lora_rank: int, vocab: int, sample: dict):
    """jaxpref's siamese layout around a random DeBERTa-v3 backbone, compiled with Adam."""
    import keras_hub

    from jaxpref.models.deberta_attention import efficient_deberta

    backbone = keras_hub.models.DebertaV3Backbone(
        vocabulary_size=vocab, max_sequence_length=512, bucket_size=256, **ARCHS[arch]
    )
    if attention == "efficient":
        efficient_deberta(backbone)
    if lora_rank:
        backbone.enable_lora(lora_rank)
    model = PairClassifier(backbone)
    model(sample)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    return model, backbone


class PairClassifier(keras.Model):
    """(B, 2, T) pairs -> one (2B, T) backbone call -> masked means -> 3 logits."""

    def __init__(self, backbone, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.head = keras.layers.Dense(3, dtype="float32")

    def call(self, x):
        length = ops.shape(x["token_ids"])[-1]
        flat = {k: ops.reshape(x[k], (-1, length)) for k in ("token_ids", "padding_mask")}
        hidden = ops.cast(self.backbone(flat), "float32")
        weights = ops.cast(flat["padding_mask"], "float32")[..., None]
        pooled = ops.sum(hidden * weights, axis=1) / ops.maximum(ops.sum(weights, 1), 1.0)
        pooled = ops.reshape(pooled, (-1, 2, pooled.shape[-1]))
        a, b = pooled[:, 0], pooled[:, 1]
        return self.head(ops.concatenate([a, b, a - b, a * b], axis=-1))


def memory_peak() -> int | None:
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def run_epoch(fn, batches) -> float:
    start = time.perf_counter()
    for x, y in batches:
        fn(x, y)
    return time.perf_counter() - start


def measure_mode(arch: str, length: int, attention: str, padding: str, args: dict) -> dict:
    """Warm-up (one step per shape), then a timed train epoch and a timed inference pass."""
    import jax

    vocab = 1000 if arch == "tiny" else REAL_VOCAB
    sides = synthetic_lengths(length, args["rows"])
    buckets = LENGTHS["buckets"][str(length)] if padding == "bucketed" else [length]
    rng = np.random.default_rng(1)
    labels = np.eye(3, dtype="float32")[rng.integers(0, 3, args["batch_size"])]
    layout = plan(sides, args["batch_size"], buckets)
    batches = [(inputs(sides[rows], size, vocab, rng), labels) for rows, size in layout]
    model, backbone = build_model(arch, attention, args["lora_rank"], vocab, batches[0][0])
    shapes = {x["token_ids"].shape[-1]: (x, y) for x, y in batches}

    def train(x, y) -> None:
        model.train_on_batch(x, y)

    def infer(x, y) -> None:
        jax.block_until_ready(model.predict_on_batch(x))

    warm = run_epoch(train, [batches[0], *shapes.values()])
    warm += run_epoch(infer, list(shapes.values()))
    train_s = [run_epoch(train, batches) for _ in range(args["epochs"])]
    infer_s = run_epoch(infer, batches)
    side_lengths = [
        x["token_ids"].shape[-1] for x, _ in batches for _ in range(2 * args["batch_size"])
    ]
    pairs = len(batches) * args["batch_size"]
    real = int(sum(int(x["padding_mask"].sum()) for x, _ in batches))
    flops = model_flops(backbone, side_lengths)
    epoch_s = median(train_s)
    device = jax.local_devices()[0]
    peak = peak_flops(device.device_kind) if device.platform == "gpu" else None
    memory = memory_peak()
    return {
        "arch": arch,
        "length": length,
        "attention": attention,
        "padding": padding,
        "device_kind": device.device_kind,
        "shapes": len(shapes),
        "warmup_s": warm,
        "pairs_per_epoch": pairs,
        "train_epoch_s": train_s,
        "train_pairs_per_s": pairs / epoch_s,
        "real_tokens_per_s": real / epoch_s,
        "computed_tokens_per_s": sum(side_lengths) / epoch_s,
        "padding_efficiency": real / sum(side_lengths),
        "infer_pairs_per_s": pairs / infer_s,
        "model_tflops_per_s": flops / epoch_s / 1e12,
        "mfu": flops / epoch_s / peak if peak else None,
        "peak_memory_gib": memory / 2**30 if memory is not None else None,
    }


def measure_modes(config: dict) -> None:
    """Every mode of one architecture and length (a child: a clean peak-memory figure)."""
    import jax

    if jax.local_devices()[0].platform != "cpu":
        keras.config.set_dtype_policy("mixed_bfloat16")
    arch, length = config["arch"], config["length"]
    deadline = time.time() + config["budget_s"]
    for attention, padding in MODES:
        if time.time() > deadline:
            result = {"skipped": "past --budget-s"}
        else:
            try:
                result = measure_mode(arch, length, attention, padding, config)
            except Exception as err:  # an out-of-memory shape must not end the whole check
                result = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        send({"arch": arch, "length": length, "attention": attention, "padding": padding} | result)


def run_cases(args, work) -> list[dict]:
    """One process per (architecture, length), each within what is left of the budget."""
    results = []
    deadline = time.time() + args.budget_s
    for arch in args.archs:
        for length in args.lengths:
            left = deadline - time.time()
            if left <= 0:
                results.append({"arch": arch, "length": length, "skipped": "past --budget-s"})
                continue
            progress(f"{arch} at {length} tokens ...")
            config = {"arch": arch, "length": length, "budget_s": left, "rows": args.rows}
            config |= {"batch_size": args.batch_size, "epochs": args.epochs}
            config |= {"lora_rank": args.lora_rank}
            argv = child_argv("gpu_check", "measure_modes", config)
            messages, ended = run_child(argv, work / f"{arch}-{length}.log")
            results += messages
            if "error" in ended:
                results.append({"arch": arch, "length": length, "error": ended["error"]})
    return results


def table_row(r: dict) -> dict:
    row = {"model": r["arch"], "tokens": r["length"]}
    row |= {"attention": r.get("attention"), "padding": r.get("padding")}
    if "train_pairs_per_s" not in r:
        return row | {"error": r.get("error") or r.get("skipped")}
    mfu = r["mfu"] if r["mfu"] is not None else "unknown peak"
    return row | {
        "shapes": r["shapes"],
        "train pairs/s": r["train_pairs_per_s"],
        "real tok/s": r["real_tokens_per_s"],
        "computed tok/s": r["computed_tokens_per_s"],
        "pad eff": r["padding_efficiency"],
        "infer pairs/s": r["infer_pairs_per_s"],
        "TFLOP/s": r["model_tflops_per_s"],
        "MFU": mfu,
        "peak GiB": r["peak_memory_gib"],
    }


def length_histogram(preset: str) -> dict:
    """The arena sample's token-length histogram that `synthetic_lengths` draws from.

    For 512 and 1,024 tokens: jaxpref's pair encoding (prompt as context, both sides truncated
    to the sequence length) of the 1,000 rows with the tokenizer of `preset`, as sparse
    [side A bin, side B bin, pairs] counts of BIN-token bins. Needs TensorFlow (the tokenizer).
    """
    from benchlib import ArenaInputs, load_frame

    from jaxpref.data import text
    from jaxpref.models import backbones

    texts = text.format_pairs(load_frame())
    out = {"source": LENGTHS["source"], "bin": BIN, "buckets": {}}
    for length in (512, 1024):
        preprocessor = backbones.load_preprocessor(preset, length)
        inputs = ArenaInputs.tokenize(texts, preprocessor, ("token_ids", "padding_mask"))
        counts = Counter((int(a) // BIN, int(b) // BIN) for a, b in inputs.tokens.lengths)
        out["buckets"][str(length)] = list(inputs.buckets)
        out[str(length)] = [[a, b, n] for (a, b), n in sorted(counts.items())]
    return out


def main(argv: list[str] | None = None) -> int:
    parsed = parser(__doc__, work_dir=True)
    parsed.add_argument("--quick", action="store_true", help="tiny model, 64 rows, CPU is fine")
    parsed.add_argument("--archs", nargs="+", default=["small", "base"], choices=list(ARCHS))
    parsed.add_argument("--lengths", nargs="+", type=int, default=[512, 1024], choices=(512, 1024))
    parsed.add_argument("--rows", type=int, default=512, help="pairs per timed epoch")
    parsed.add_argument("--batch-size", type=int, default=8, help="pairs per step (jaxpref's)")
    parsed.add_argument("--lora-rank", type=int, default=8)
    parsed.add_argument("--epochs", type=int, default=2, help="timed train epochs")
    parsed.add_argument("--budget-s", type=float, default=450, help="skip what starts later")
    parsed.add_argument("--histogram", metavar="PRESET", help="print arena_lengths.json and exit")
    args = parse_args(parsed, argv)
    if args.histogram:
        print(json.dumps(length_histogram(args.histogram), separators=(",", ":")))
        return 0
    if args.quick:
        args.archs, args.rows, args.epochs = ["tiny"], min(args.rows, 64), 1
    report = Report("gpu_check", args.out, argv)
    with work_dir(args.work_dir, "jaxpref-gpu-check-") as work:
        results = run_cases(args, work)
    kinds = {r["device_kind"] for r in results if "device_kind" in r}
    notes = []
    if kinds and not any(peak_flops(k) for k in kinds):
        notes.append(f"MFU: no bf16 peak known for {', '.join(kinds)} (benchlib.PEAK_BF16_FLOPS)")
    report.finish([table_row(r) for r in results], {"results": results}, notes)
    print(f"- logs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
