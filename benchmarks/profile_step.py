"""Where one train step's time goes: deberta_v3_small on CPU, JAX against TensorFlow, by op class.

    python benchmarks/profile_step.py --out benchmarks/results/profile.json   # ~6 min on 2 CPUs

Each backend runs in its own process: the notebook's Keras model (`notebook_path.build_model`:
the backbone on side A and on side B, mean pooling, a dense head; full fine-tuning, Adam,
float32) on one pair of fixed-length sides, two warm-up steps, then one step under the backend's
profiler (`jax.profiler.trace`, `tf.profiler.experimental`). The XSpace it writes is read with
TensorFlow's xplane protobuf; the duration of every op event on the executor threads is summed
per op class (matmul, gather/scatter, elementwise fusion, softmax/reductions, RNG, copies...);
enclosing events (TensorFlow's "Process", "ParallelFor") are left out so nothing counts twice.
JAX is profiled with keras-hub's attention and with jaxpref's efficient one.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# (class, pattern on the op name or TensorFlow op type), first match wins.
OP_CLASSES = (
    ("matmul", r"dot|matmul|einsum|conv|gemm|ynn_fusion|onednn|custom-call|xnn"),
    ("gather/scatter", r"gather|scatter|segment|dynamic-slice|dynamic-update|take"),
    ("variable updates", r"assign|variable"),
    ("rng (dropout)", r"rng|random|threefry|philox"),
    ("softmax/reduce", r"softmax|reduce|sum|max|mean|argmax"),
    ("copy/transpose", r"copy|transpose|concat|slice|pad|reshape|broadcast|tile"),
    ("elementwise fusion", r"fusion|add|mul|sub|div|exp|log|sqrt|rsqrt|tanh|erf|gelu|select|where"),
)
SKIP = re.compile(
    r"^\$|^process$|^parallelfor$|threadpool::await|pjit|pjrt|execute|python|session|iterator|thunk",
    re.IGNORECASE,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="small", help="realsize.ARCHS key")
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--out", type=Path, help="JSON results file")
    parser.add_argument("--one", nargs=2, metavar=("BACKEND", "ATTENTION"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def op_class(name: str) -> str:
    lowered = name.lower()
    for label, pattern in OP_CLASSES:
        if re.search(pattern, lowered):
            return label
    return "other"


def read_xspace(logdir: str) -> dict[str, float]:
    """Milliseconds per op name over every executor-thread event of the profile in `logdir`.

    TensorFlow names its kernel events "scope/name:OpType"; the op type is kept. XLA:CPU names
    its thunks after the HLO instruction ("fusion.12", "dot.3").
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals: dict[str, float] = collections.Counter()
    for path in glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True):
        space = xplane_pb2.XSpace()
        space.ParseFromString(Path(path).read_bytes())
        for plane in space.planes:
            for line in plane.lines:
                if line.name == "python" or "Steps" in line.name:
                    continue
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    name = name.rsplit(":", 1)[-1] if ":" in name else name
                    if not SKIP.search(name):
                        totals[name] += event.duration_ps / 1e9
    return dict(totals)


def by_class(totals: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = collections.Counter()
    for name, ms in totals.items():
        out[op_class(name)] += ms
    return dict(out)


def profile_one(backend: str, attention: str, arch: str, length: int) -> dict:
    """One warm-up step, one timed step, one profiled step of the notebook's model."""
    import keras
    import keras_hub
    import numpy as np
    from notebook_path import build_model
    from realsize import ARCHS, REAL_VOCAB

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.DebertaV3Backbone(
        vocabulary_size=REAL_VOCAB, max_sequence_length=512, bucket_size=256, **ARCHS[arch]
    )
    if attention == "efficient":
        from jaxpref.models.deberta_attention import efficient_deberta

        efficient_deberta(backbone)
    model = build_model(backbone)
    ids = np.random.default_rng(0).integers(4, 8000, (1, 2, length)).astype("int32")
    x, y = {"token_ids": ids, "padding_mask": np.ones_like(ids)}, np.eye(3, dtype="float32")[:1]
    start = time.perf_counter()
    model.train_on_batch(x, y)
    warmup_s = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    model.train_on_batch(x, y)
    step_s, step_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    logdir = tempfile.mkdtemp(prefix=f"profile-{backend}-")
    with backend_profiler(backend, logdir):
        model.train_on_batch(x, y)
    totals = read_xspace(logdir)
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:20]
    return {
        "backend": backend,
        "attention": attention,
        "jit_compile": bool(model.jit_compile),
        "warmup_s": warmup_s,
        "step_s": step_s,
        "step_cpu_s": step_cpu_s,
        "op_ms_total": sum(totals.values()),
        "classes_ms": by_class(totals),
        "top_ops_ms": dict(top),
        "logdir": logdir,
    }


@contextlib.contextmanager
def backend_profiler(backend: str, logdir: str):
    """The backend's own profiler around the block, writing an XSpace under `logdir`."""
    if backend == "jax":
        import jax

        with jax.profiler.trace(logdir):
            yield
        return
    import tensorflow as tf

    tf.profiler.experimental.start(logdir)
    try:
        yield
    finally:
        tf.profiler.experimental.stop()


RESULT = "PROFILE "
RUNS = (("jax", "keras_hub"), ("jax", "efficient"), ("tensorflow", "keras_hub"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        result = profile_one(*args.one, args.arch, args.length)
        print(RESULT + json.dumps(result), flush=True)
        return 0
    results = []
    for backend, attention in RUNS:
        print(f"[{time.strftime('%H:%M:%S')}] {backend}, {attention} ...", file=sys.stderr)
        argv = [sys.executable, __file__, "--one", backend, attention, "--arch", args.arch]
        env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO)}
        env |= {"TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
        argv += ["--length", str(args.length)]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, env=env, cwd=BENCH_DIR)
        lines = [ln[len(RESULT) :] for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
        results.append(json.loads(lines[-1]) if lines else {"backend": backend, "error": "failed"})
    print(table(results))
    if args.out:
        report = {"argv": sys.argv, "arch": args.arch, "length": args.length, "runs": results}
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def table(results: list[dict]) -> str:
    """Milliseconds per op class (summed over threads) and the step's wall time, per run."""
    from run import markdown

    ok = [r for r in results if "error" not in r]
    classes = [label for label, _ in OP_CLASSES] + ["other"]
    header = ["op class", *[f"{r['backend']} / {r['attention']}" for r in ok]]
    rows = [[c, *[f"{r['classes_ms'].get(c, 0.0):,.0f}" for r in ok]] for c in classes]
    rows.append(["all ops (thread-ms)", *[f"{r['op_ms_total']:,.0f}" for r in ok]])
    rows.append(
        ["step wall s (CPU s)", *[f"{r['step_s']:.2f} ({r['step_cpu_s']:.2f})" for r in ok]]
    )
    return markdown(rows, header)


if __name__ == "__main__":
    sys.exit(main())
