"""Where one train step's time goes: deberta_v3_small on CPU, JAX against TensorFlow, by op class.

    python benchmarks/profile_step.py --out benchmarks/results/profile.json   # ~6 min on 2 CPUs

Each backend runs in its own process: the notebook's Keras model (`paths.build_model`:
the backbone on side A and on side B, mean pooling, a dense head; full fine-tuning, Adam,
float32) on one pair of fixed-length sides, two warm-up steps, then one step under the backend's
profiler (`jax.profiler.trace`, `tf.profiler.experimental`). The XSpace it writes is read with
TensorFlow's xplane protobuf; the duration of every op event on the executor threads is summed
per op class (matmul, gather/scatter, elementwise fusion, softmax/reductions, RNG, copies...);
enclosing events (TensorFlow's "Process", "ParallelFor") are left out so nothing counts twice.
JAX is profiled with keras-hub's attention and with jaxpref's efficient one.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import re
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    ARCHS,
    REAL_VOCAB,
    Report,
    child_argv,
    parse_args,
    parser,
    progress,
    run_child,
    work_dir,
)

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


def profile_one(config: dict) -> dict:
    """One warm-up step, one timed step, one profiled step of the notebook's model (a child:
    KERAS_BACKEND is `backend`)."""
    import keras
    import keras_hub
    import numpy as np
    from paths import build_model

    backend, attention, arch, length = (
        config[k] for k in ("backend", "attention", "arch", "length")
    )

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


RUNS = (("jax", "keras_hub"), ("jax", "efficient"), ("tensorflow", "keras_hub"))


def table_rows(results: list[dict]) -> list[dict]:
    """Milliseconds per op class (summed over threads) and the step's wall time, per run."""
    ok = [r for r in results if "error" not in r]
    runs = {f"{r['backend']} / {r['attention']}": r for r in ok}
    classes = [label for label, _ in OP_CLASSES] + ["other"]
    rows = [
        {"op class": c} | {k: f"{r['classes_ms'].get(c, 0.0):,.0f}" for k, r in runs.items()}
        for c in classes
    ]
    rows.append(
        {"op class": "all ops (thread-ms)"}
        | {k: f"{r['op_ms_total']:,.0f}" for k, r in runs.items()}
    )
    step = {k: f"{r['step_s']:.2f} ({r['step_cpu_s']:.2f})" for k, r in runs.items()}
    return [*rows, {"op class": "step wall s (CPU s)"} | step]


def main(argv: list[str] | None = None) -> int:
    parsed = parser(__doc__)
    parsed.add_argument("--arch", default="small", choices=list(ARCHS))
    parsed.add_argument("--length", type=int, default=1024)
    args = parse_args(parsed, argv)
    report, results = Report("profile_step", args.out, argv), []
    with work_dir(None, "jaxpref-profile-") as work:
        for backend, attention in RUNS:
            progress(f"{backend}, {attention} ...")
            config = {"backend": backend, "attention": attention, "arch": args.arch}
            argv = child_argv("profile_step", "profile_one", config | {"length": args.length})
            env = {"KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
            messages, ended = run_child(argv, work / f"{backend}-{attention}.log", env=env)
            failed = {"backend": backend, "attention": attention, "error": ended.get("error")}
            results.append(messages[-1] if messages else failed)
    details = {"arch": args.arch, "length": args.length, "runs": results}
    report.finish(table_rows(results), details)
    print(f"- logs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
