"""Fast checks of the benchmark helpers that need no model: synthetic lengths, plans, parsers."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_check  # noqa: E402
import profile_step  # noqa: E402
import wallclock  # noqa: E402


@pytest.mark.parametrize(("length", "measured"), [(512, 0.797), (1024, 0.756)])
def test_synthetic_lengths_reproduce_jaxprefs_padding(length, measured):
    """Bucketed batches of 8 synthetic pairs pad about as much as jaxpref's plan of the sample."""
    sides = gpu_check.synthetic_lengths(length, 1000)
    assert sides.min() >= 2 and sides.max() <= length
    buckets = gpu_check.LENGTHS["buckets"][str(length)]
    layout = gpu_check.plan(sides, 8, buckets)
    assert all(size >= sides[rows].max() for rows, size in layout)
    assert len({int(r) for rows, _ in layout for r in rows}) == 1000
    real = sum(int(sides[rows].sum()) for rows, _ in layout)
    computed = sum(2 * 8 * size for _, size in layout)
    assert abs(real / computed - measured) < 0.02


def test_op_classes_of_xla_and_tensorflow_names():
    names = {
        "ynn_fusion.229": "matmul",
        "_MklBatchMatMulV2": "matmul",
        "gather.12": "gather/scatter",
        "UnsortedSegmentSum": "gather/scatter",
        "rng-bit-generator.3": "rng (dropout)",
        "StatelessRandomUniformV2": "rng (dropout)",
        "transpose.4": "copy/transpose",
        "multiply_add_fusion.83": "elementwise fusion",
        "AssignAddVariableOp": "variable updates",
        "while.343": "other",
    }
    assert {name: profile_step.op_class(name) for name in names} == names
    assert profile_step.SKIP.search("Process") and not profile_step.SKIP.search("fusion.1")


def test_read_log_stage_durations(tmp_path):
    started = time.mktime(time.strptime("2026-11-30 06:37:30", "%Y-%m-%d %H:%M:%S"))
    log = tmp_path / "train.log"
    log.write_text(
        "06:37:40 devices: 1 x cpu\n"
        "06:38:30 epoch 1/2 step 5/9: loss 1.1, lr 1e-4, 2.5 pairs/s, 1800 tokens/s, ETA 1m\n"
        "06:38:47 epoch 1: loss=1.2 val_log_loss=1.19 (36 s, 8 XLA compilations)\n"
        "06:39:05 epoch 2/2 step 9/9: loss 1.0, lr 1e-4, 4.0 pairs/s, 3000 tokens/s, ETA 0s\n"
        "06:39:09 epoch 2: loss=1.1 val_log_loss=1.16 (20 s, 1 XLA compilations)\n"
        "06:39:27 best val_log_loss 1.1594 at epoch 2 (class prior 1.0961)\n"
    )
    stages = wallclock.read_log(log, started)
    assert stages["startup_s"] == 10
    assert stages["setup_s"] == 67 - 36  # first log line to the first epoch's start
    assert [e["compiles"] for e in stages["epochs"]] == [8, 1]
    assert [e["last_progress_pairs_per_s"] for e in stages["epochs"]] == [2.5, 4.0]
    assert stages["last_epoch_to_summary_s"] == 18
    assert np.isclose(stages["summary_at"] - started, 117)
