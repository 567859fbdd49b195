"""One measuring worker of `realsize.py`: jaxpref's path, the notebook's path or a matmul peak.

    python benchmarks/stepworker.py jaxpref --preset DIR --sequence-length 1024 --batch-size 4
    python benchmarks/stepworker.py notebook --preset DIR --sequence-length 1024 --batch-size 2
    python benchmarks/stepworker.py matmul

Each sets itself up and warms up (every shape compiled, the epoch-start variant included), then
answers `train` (one epoch of its timed batches through `model.fit`, as the trainer runs) and
`infer` (`predict_on_batch` over the same batches) over the `workerproto` line protocol. The
jaxpref worker trains on batches sampled at evenly spaced quantiles of its length-sorted
1,000-row epoch plan and writes them to `--batches-out` (an .npz the torch peer reads), so every
path of a case computes the same shapes; the notebook's batches all have its one fixed shape.
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
    parser.add_argument("kind", choices=("jaxpref", "notebook", "matmul"))
    parser.add_argument("--preset", help="preset directory")
    parser.add_argument("--sequence-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="timed batches per epoch")
    parser.add_argument("--lora-rank", type=int, default=8, help="jaxpref; 0: full fine-tuning")
    parser.add_argument("--attention", default="efficient", help="jaxpref: keras_hub|efficient")
    parser.add_argument(
        "--plan-batch-size", type=int, default=8, help="jaxpref: the full epoch to project onto"
    )
    parser.add_argument("--batches-out", help="jaxpref: .npz of the timed batches")
    parser.add_argument("--infer", action="store_true", help="warm up inference too")
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


def quantile_plan(plan, count: int) -> list:
    """`count` batches at the quantiles (i + 0.5) / count of the plan sorted by padded length."""
    ordered = sorted(plan, key=lambda b: b.length)
    picks = ((np.arange(count) + 0.5) / count * len(ordered)).astype(int)
    return [ordered[i] for i in picks]


def epoch_cost(tokens, plan) -> dict:
    """Pairs, real and computed (padded) tokens of one epoch of `plan` (two sides per pair)."""
    rows = np.concatenate([b.rows for b in plan])
    return {
        "pairs": len(rows),
        "real_tokens": int(tokens.lengths[rows].sum()),
        "computed_tokens": sum(2 * len(b.rows) * b.length for b in plan),
        "lengths": [b.length for b in plan],
    }


def jaxpref_worker(args) -> None:
    """jaxpref's trainer path on `args.steps` batches sampled from its epoch plan."""
    from benchlib import load_frame, model_flops
    from jaxpref_path import build, fit, setup_devices, warmup_plan

    from jaxpref import monitoring
    from jaxpref.data import text
    from jaxpref.inputs import pipeline
    from jaxpref.models import backbones

    args.devices, args.num_devices = "cpu", 1
    devices, precision = setup_devices(args)
    frame = load_frame()
    preprocessor = backbones.load_preprocessor(args.preset, args.sequence_length)
    backbone, model = build(args, precision)
    keys = model.backbone_input_keys
    encoder = pipeline.PairEncoder(preprocessor, keys)
    tokens = pipeline.tokenize(text.format_pairs(frame), encoder, None, False)
    buckets = pipeline.bucket_lengths(args.sequence_length)
    plan = pipeline.plan_batches(tokens.row_lengths(), args.batch_size, buckets, True)
    sample = quantile_plan(plan, args.steps)
    full = pipeline.plan_batches(tokens.row_lengths(), args.plan_batch_size, buckets, True)
    labels = frame["label"].to_numpy()
    if args.batches_out:
        save_batches(args.batches_out, tokens, sample, keys)
    compiles = monitoring.compile_counter()
    start = time.perf_counter()
    fit(model, tokens, labels, [warmup_plan(sample)], keys, 1)
    fit(model, tokens, labels, [sample[:1]], keys, 1)
    predict = infer_fn(model, tokens, sample, keys)
    if args.infer:
        predict()
    cost = epoch_cost(tokens, sample)
    sides = [length for length in cost["lengths"] for _ in range(2 * args.batch_size)]
    ready = {
        "warmup_s": time.perf_counter() - start,
        "warmup_compiles": compiles(),
        "epoch": cost,
        "full_epoch": epoch_cost(tokens, full) | {"lengths": None},
        "train_flops": model_flops(backbone, sides),
        "infer_flops": model_flops(backbone, sides, train=False),
        "params": model.count_params(),
        "trainable_params": sum(int(np.prod(w.shape)) for w in model.trainable_weights),
        "devices": f"{len(devices)} x {devices[0].device_kind}",
    }
    rng = np.random.default_rng(args.seed)

    def train() -> dict:
        plan = [sample[i] for i in [0, *(1 + rng.permutation(len(sample) - 1))]]
        fit(model, tokens, labels, [plan], keys, 1)
        return {"compiles": compiles()}

    def infer() -> dict:
        predict()
        return {"compiles": compiles()}

    serve(ready, {"train": train, "infer": infer})


def save_batches(path: str, tokens, plan, keys) -> None:
    """Token ids and padding masks (2B, T) of every batch, for the torch peer."""
    from jaxpref.inputs import pipeline

    arrays = {}
    for i, batch in enumerate(plan):
        chosen = (batch.rows[:, None], np.array([[0, 1]] * len(batch.rows)))
        x = pipeline.batch_features(tokens, chosen, batch.length, keys, pipeline.PAIR)
        arrays[f"ids{i}"] = x["token_ids"].reshape(-1, batch.length)
        arrays[f"mask{i}"] = x["padding_mask"].reshape(-1, batch.length)
    np.savez(path, **arrays)


def infer_fn(model, tokens, plan, keys):
    """A function running `predict_on_batch` over every batch of `plan` (inputs prepared)."""
    from jaxpref.inputs import pipeline

    inputs = []
    for batch in plan:
        chosen = (batch.rows[:, None], np.array([[0, 1]] * len(batch.rows)))
        inputs.append(pipeline.batch_features(tokens, chosen, batch.length, keys, pipeline.PAIR))

    def run() -> None:
        for x in inputs:
            model.predict_on_batch(x)

    return run


def notebook_worker(args) -> None:
    """The Kaggle notebook's path (TensorFlow backend): fixed padding, full fine-tuning."""
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras
    import keras_hub
    import tensorflow as tf
    from benchlib import load_frame, model_flops
    from notebook_path import build_dataset, build_model, real_tokens, responses

    from jaxpref.models import backbones

    keras.utils.set_random_seed(args.seed)
    strategy = tf.distribute.MirroredStrategy()
    frame = load_frame()
    texts = responses(frame)
    labels = keras.utils.to_categorical(frame["label"].to_numpy(), num_classes=3)
    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
        args.preset, sequence_length=args.sequence_length
    )
    with strategy.scope():
        backbone = backbones.load_backbone(args.preset)
        model = build_model(backbone)
    n = args.steps * args.batch_size
    lengths = real_tokens(texts[:n], preprocessor)
    train_ds = build_dataset(texts[:n], labels[:n], preprocessor, args.batch_size, True, args.seed)
    infer_ds = build_dataset(texts[:n], None, preprocessor, args.batch_size, False, args.seed)
    start = time.perf_counter()
    model.fit(train_ds, epochs=1, verbose=0)
    if args.infer:
        model.predict(infer_ds, verbose=0)
    sides = [args.sequence_length] * 2 * n
    ready = {
        "warmup_s": time.perf_counter() - start,
        "epoch": {
            "pairs": n,
            "real_tokens": int(lengths.sum()),
            "computed_tokens": len(sides) * args.sequence_length,
        },
        "train_flops": model_flops(backbone, sides),
        "infer_flops": model_flops(backbone, sides, train=False),
        "params": model.count_params(),
        "trainable_params": model.count_params(),
    }

    def train() -> None:
        model.fit(train_ds, epochs=1, verbose=0)

    def infer() -> None:
        model.predict(infer_ds, verbose=0)

    serve(ready, {"train": train, "infer": infer})


def matmul_peak(size: int = 2048, repeats: int = 8) -> dict:
    """Best float32 GFLOP/s of a square jnp matmul and of a NumPy one on this CPU.

    Also per second of process CPU time (all threads): the figure other load does not lower.
    """
    import jax
    import jax.numpy as jnp

    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    ja = jnp.asarray(a)
    dot = jax.jit(jnp.dot)
    dot(ja, ja).block_until_ready()
    flops = 2.0 * size**3 / 1e9
    best = {"gflops_jax": 0.0, "gflops_numpy": 0.0, "gflops_per_cpu_s_jax": 0.0}
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        dot(ja, ja).block_until_ready()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        best["gflops_jax"] = max(best["gflops_jax"], flops / wall)
        best["gflops_per_cpu_s_jax"] = max(best["gflops_per_cpu_s_jax"], flops / max(cpu, 1e-9))
        wall = time.perf_counter()
        a @ a
        best["gflops_numpy"] = max(best["gflops_numpy"], flops / (time.perf_counter() - wall))
    return {"size": size, **best}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.kind == "matmul":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        serve(matmul_peak(), {})
    elif args.kind == "jaxpref":
        jaxpref_worker(args)
    else:
        notebook_worker(args)


if __name__ == "__main__":
    sys.exit(main())
