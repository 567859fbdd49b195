"""Helpers shared by the benchmark processes: arguments, data, epoch timing, FLOPs, results.

Nothing here imports Keras, JAX, TensorFlow or pandas at module level: each measuring process
picks its Keras backend first and imports those afterwards, and `gpu_check.py` runs where only
jax, keras, keras-hub and numpy are installed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

RESULT_PREFIX = "BENCH_RESULT "
NOTEBOOK_LEARNING_RATE = 5e-6

# Peak dense bf16 FLOP/s per accelerator (vendor data sheets, without sparsity).
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "T4": 65e12,
}


def path_arguments(description: str) -> argparse.ArgumentParser:
    """Flags shared by `jaxpref_path.py` and `notebook_path.py` (one configuration each)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", required=True, help="preset name, directory or alias")
    parser.add_argument("--sequence-length", type=int, required=True)
    parser.add_argument("--rows", type=int, default=1000, help="first N rows train each epoch")
    parser.add_argument("--batch-size", type=int, required=True, help="global batch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up")
    parser.add_argument("--infer-repeats", type=int, default=2, help="0 skips inference")
    parser.add_argument("--seed", type=int, default=42)
    return parser


def load_frame(rows: int | None = None) -> pd.DataFrame:
    """The embedded 1,000-row arena sample (first `rows` rows), validated by jaxpref.data.arena."""
    from jaxpref.data import arena

    frame = arena.read_arena_csv(arena.DEFAULT_TRAIN_CSV, labelled=True)
    return frame if rows is None else frame.iloc[:rows].reset_index(drop=True)


def epoch_timer(times: list[float], cpu_times: list[float] | None = None):
    """A Keras callback appending each epoch's wall time (and process CPU time) in seconds."""
    import keras

    start: dict[str, float] = {}

    def begin(epoch, logs=None) -> None:
        start["t"], start["cpu"] = time.perf_counter(), time.process_time()

    def end(epoch, logs=None) -> None:
        times.append(time.perf_counter() - start["t"])
        if cpu_times is not None:
            cpu_times.append(time.process_time() - start["cpu"])

    return keras.callbacks.LambdaCallback(on_epoch_begin=begin, on_epoch_end=end)


def timed(fn, repeats: int) -> tuple[list[float], object]:
    """Wall times of `repeats` calls of `fn()` and the last result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return times, out


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def non_embedding_params(backbone) -> int:
    """Parameters that take part in per-token matmuls (no lookup tables, no unused pooler)."""
    skip = ("embedding", "pooled_dense")
    kept = [w for w in backbone.weights if not any(s in w.path for s in skip)]
    return sum(int(np.prod(w.shape)) for w in kept)


def attention_span(backbone) -> int | None:
    """DeBERTa-v3's relative-position span (2 x bucket size); None for absolute positions."""
    bucket = backbone.get_config().get("bucket_size")
    return 2 * int(bucket) if bucket else None


def forward_flops(
    params: int, num_layers: int, hidden: int, length: int, span: int | None
) -> float:
    """Forward FLOPs of one sequence of `length` tokens.

    2 * params * T for the dense layers, plus per layer 4 * T^2 * H for scores and weighted sum,
    plus 4 * T * span * H for DeBERTa's content-to-position and position-to-content scores.
    """
    attention = 4.0 * length * length * hidden
    if span:
        attention += 4.0 * length * span * hidden
    return 2.0 * params * length + num_layers * attention


def model_flops(backbone, sequence_lengths: Sequence[int], train: bool = True) -> float:
    """Model FLOPs for sequences of the given lengths: 3x forward when training (6 * N * T)."""
    config = backbone.get_config()
    params = non_embedding_params(backbone)
    span = attention_span(backbone)
    total = sum(
        forward_flops(params, config["num_layers"], config["hidden_dim"], int(t), span)
        for t in sequence_lengths
    )
    return total * (3.0 if train else 1.0)


def peak_flops(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s for a device kind such as 'NVIDIA H100 80GB HBM3'."""
    for name, flops in PEAK_BF16_FLOPS.items():
        if name.lower() in device_kind.lower():
            return flops
    return None


def emit(result: dict) -> None:
    """Print the one result line the orchestrator parses."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def parse_result(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return None


def fail(message: str) -> None:
    """One `error:` line and exit status 2, for a configuration this machine cannot run."""
    emit({"error": message})
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def rates(pairs: int, real_tokens: int, computed_tokens: int, seconds: float) -> dict:
    """pairs/s, real tokens/s and computed (padded) tokens/s of one timed unit of work."""
    return {
        "pairs_per_s": pairs / seconds,
        "real_tokens_per_s": real_tokens / seconds,
        "computed_tokens_per_s": computed_tokens / seconds,
    }


def write_report(path, report: dict) -> None:
    """The benchmark's JSON result at `path` (its folder made), and a line saying so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
