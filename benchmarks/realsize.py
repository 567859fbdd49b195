"""Real-size CPU benchmark: deberta_v3_small/base, jaxpref's path against the notebook's.

Random-weight DeBERTa-v3 presets of the real architectures (the real 128,100-row embedding;
token ids from a SentencePiece vocabulary trained on the arena sample) are built offline. Every
path of a case is a live worker (`jaxpref_worker`: jaxpref, also with keras-hub's attention or
full fine-tuning; `notebook_worker`; torch_peer.py when torch and transformers import) that
warms up, then the workers take turns (A, B, A, B), one epoch each, so all share the machine's
load. A matmul in the same run gives this CPU's own float32 peak.

    python benchmarks/realsize.py --out benchmarks/results/realsize.json   # ~35 min on 2 CPUs
    python benchmarks/realsize.py --quick --out /tmp/realsize-quick.json    # ~3 min
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
from benchlib import (
    ARCHS,
    CPU_CHILD_ENV,
    REAL_VOCAB,
    ArenaInputs,
    Report,
    Worker,
    child_argv,
    fmt,
    median,
    model_flops,
    parse_args,
    parser,
    progress,
    run_child,
    serve,
    work_dir,
)

VOCAB_PIECES = 8000
INFER_WORKERS = ("jaxpref", "notebook", "torch")


@dataclasses.dataclass(frozen=True)
class Case:
    """One architecture at one length; `workers` names what is measured, interleaved."""

    name: str
    arch: str
    length: int
    workers: tuple[str, ...]
    rounds: int = 2
    steps: int = 2
    batch: int = 4
    infer: bool = True  # for the paths in INFER_WORKERS
    notebook_batch: int = 2  # the notebook's; 1 where its step would not fit in memory


def cases(quick: bool) -> list[Case]:
    """The suite, sized for about 35 minutes on 2 shared CPU cores (one batch per epoch)."""
    if quick:
        every = ("jaxpref", "notebook", "jaxpref-keras_hub", "jaxpref-full-ft", "torch")
        return [Case("tiny-256", "tiny", 256, every, rounds=2, steps=2, batch=4)]
    small_1024 = ("jaxpref", "notebook", "jaxpref-keras_hub")
    small_512 = ("jaxpref", "notebook", "jaxpref-full-ft", "torch")
    return [
        Case("small-1024", "small", 1024, small_1024, rounds=2, steps=1, batch=2, notebook_batch=1),
        Case("base-1024", "base", 1024, ("jaxpref",), rounds=2, steps=1, batch=2, infer=False),
        Case("small-512", "small", 512, small_512, rounds=2, steps=1, batch=2),
    ]


# -- the children -------------------------------------------------------------------------------


def build_preset(config: dict) -> dict:
    """A random-weight DeBERTa-v3 preset of an architecture (KERAS_BACKEND=jax)."""
    import keras
    import keras_hub

    from jaxpref.data import arena
    from jaxpref.models.tiny_preset import arena_texts, save_preset, train_sentencepiece

    proto = train_sentencepiece(arena_texts(arena.DEFAULT_TRAIN_CSV), VOCAB_PIECES)
    tokenizer = keras_hub.models.DebertaV3Tokenizer(proto=proto)
    keras.utils.set_random_seed(0)
    vocab = max(config["vocab"], tokenizer.vocabulary_size())
    backbone = keras_hub.models.DebertaV3Backbone(
        vocabulary_size=vocab, max_sequence_length=512, bucket_size=256, **ARCHS[config["arch"]]
    )
    pre = keras_hub.models.DebertaV3TextClassifierPreprocessor(tokenizer, sequence_length=512)
    save_preset(config["out"], backbone, tokenizer, pre)
    return {"preset": config["out"]}


def quantile_plan(plan, count: int) -> list:
    """`count` batches at the quantiles (i + 0.5) / count of the plan sorted by padded length."""
    ordered = sorted(plan, key=lambda b: b.length)
    picks = ((np.arange(count) + 0.5) / count * len(ordered)).astype(int)
    return [ordered[i] for i in picks]


def epoch_cost(inputs: ArenaInputs, plan) -> dict:
    """Pairs, real and computed (padded) tokens of one epoch of `plan` (two sides per pair)."""
    rows = np.concatenate([b.rows for b in plan])
    return {
        "pairs": len(rows),
        "real_tokens": int(inputs.tokens.lengths[rows].sum()),
        "computed_tokens": sum(2 * len(b.rows) * b.length for b in plan),
        "lengths": [b.length for b in plan],
    }


def jaxpref_worker(config: dict) -> None:
    """jaxpref's trainer path on `steps` batches at evenly spaced quantiles of its length-sorted
    1,000-row epoch plan; writes them to `batches_out` (an .npz the torch peer trains on)."""
    import paths

    from jaxpref import monitoring
    from jaxpref.data import text

    args = SimpleNamespace(**config)
    path = paths.jaxpref_model(
        args.preset, args.sequence_length, args.batch_size, args.lora_rank, args.attention
    )
    model, backbone, devices, labels = path.model, path.backbone, path.devices, path.labels
    texts, keys = text.format_pairs(path.frame), model.backbone_input_keys
    inputs = ArenaInputs.tokenize(texts, path.preprocessor, keys)
    sample = quantile_plan(inputs.plan(args.batch_size, shuffle=True), args.steps)
    full = inputs.plan(args.plan_batch_size, shuffle=True)
    features = [inputs.features(batch) for batch in sample]
    if args.batches_out:  # token ids and padding masks (2B, T) of every batch
        arrays = {}
        for i, x in enumerate(features):
            arrays[f"ids{i}"] = x["token_ids"].reshape(-1, x["token_ids"].shape[-1])
            arrays[f"mask{i}"] = x["padding_mask"].reshape(-1, x["padding_mask"].shape[-1])
        np.savez(args.batches_out, **arrays)
    compiles = monitoring.compile_counter()
    start = time.perf_counter()
    paths.fit(model, inputs, labels, [paths.warmup_plan(sample)])
    paths.fit(model, inputs, labels, [sample[:1]])

    def infer() -> dict:
        for x in features:
            model.predict_on_batch(x)
        return {"compiles": compiles()}

    if args.infer:
        infer()
    cost = epoch_cost(inputs, sample)
    sides = [length for length in cost["lengths"] for _ in range(2 * args.batch_size)]
    ready = {
        "warmup_s": time.perf_counter() - start,
        "warmup_compiles": compiles(),
        "epoch": cost,
        "full_epoch": epoch_cost(inputs, full) | {"lengths": None},
        "train_flops": model_flops(backbone, sides),
        "infer_flops": model_flops(backbone, sides, train=False),
        "params": model.count_params(),
        "trainable_params": sum(int(np.prod(w.shape)) for w in model.trainable_weights),
        "devices": f"{len(devices)} x {devices[0].device_kind}",
    }
    rng = np.random.default_rng(args.seed)

    def train() -> dict:
        plan = [sample[i] for i in [0, *(1 + rng.permutation(len(sample) - 1))]]
        paths.fit(model, inputs, labels, [plan])
        return {"compiles": compiles()}

    serve(ready, {"train": train, "infer": infer})


def notebook_worker(config: dict) -> None:
    """The Kaggle notebook's path (KERAS_BACKEND=tensorflow) on its first rows, fixed padding."""
    import paths

    args = SimpleNamespace(**config)
    path = paths.notebook_model(args.preset, args.sequence_length, args.seed)
    texts, labels, preprocessor = path.texts, path.labels, path.preprocessor
    backbone, model = path.backbone, path.model
    n, batch, seed = args.steps * args.batch_size, args.batch_size, args.seed
    lengths = paths.real_tokens(texts[:n], preprocessor)
    train_ds = paths.build_dataset(texts[:n], labels[:n], preprocessor, batch, True, seed)
    infer_ds = paths.build_dataset(texts[:n], None, preprocessor, batch, False, seed)
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


def matmul_peak(config: dict) -> dict:
    """Best float32 GFLOP/s of a square jnp matmul and of a NumPy one on this CPU.

    Also per second of process CPU time (all threads): the figure other load does not lower.
    """
    import jax
    import jax.numpy as jnp

    size = config.get("size", 2048)
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    ja = jnp.asarray(a)
    dot = jax.jit(jnp.dot)
    dot(ja, ja).block_until_ready()
    flops = 2.0 * size**3 / 1e9
    best = {"gflops_jax": 0.0, "gflops_numpy": 0.0, "gflops_per_cpu_s_jax": 0.0}
    for _ in range(config.get("repeats", 8)):
        wall, cpu = time.perf_counter(), time.process_time()
        dot(ja, ja).block_until_ready()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        best["gflops_jax"] = max(best["gflops_jax"], flops / wall)
        best["gflops_per_cpu_s_jax"] = max(best["gflops_per_cpu_s_jax"], flops / max(cpu, 1e-9))
        wall = time.perf_counter()
        a @ a
        best["gflops_numpy"] = max(best["gflops_numpy"], flops / (time.perf_counter() - wall))
    return {"size": size, **best}


# -- the parent ---------------------------------------------------------------------------------


def worker_argv(name: str, case: Case, preset, batches, torch_python: str) -> list:
    """The command line of worker `name` in `case`."""
    infer = case.infer and name in INFER_WORKERS
    if name == "torch":
        vocab = REAL_VOCAB if case.arch != "tiny" else VOCAB_PIECES
        config = ARCHS[case.arch] | {"batches": str(batches), "vocabulary_size": vocab}
        return child_argv("torch_peer", "torch_worker", config | {"infer": infer}, torch_python)
    config = {"preset": str(preset), "sequence_length": case.length, "steps": case.steps}
    config |= {"infer": infer, "seed": 42}
    if name == "notebook":
        return child_argv(
            "realsize", "notebook_worker", config | {"batch_size": case.notebook_batch}
        )
    config |= {"batch_size": case.batch, "plan_batch_size": 8}
    config |= {"batches_out": str(batches) if name == "jaxpref" else None}
    config |= {"attention": "keras_hub" if name == "jaxpref-keras_hub" else "efficient"}
    config |= {"lora_rank": 0 if name == "jaxpref-full-ft" else 8}
    return child_argv("realsize", "jaxpref_worker", config)


def torch_available(python: str) -> bool:
    probe = [python, "-c", "import torch, transformers"]
    try:
        return subprocess.run(probe, capture_output=True).returncode == 0
    except OSError:
        return False


def measure_case(case: Case, opts, preset, work) -> dict:
    """Start the case's workers one at a time, then alternate their rounds."""
    batches = work / f"{case.name}-batches.npz"
    workers: dict[str, tuple[Worker, dict]] = {}
    for name in case.workers:
        if name == "torch" and not torch_available(opts.torch_python):
            progress(f"{case.name}: torch/transformers not importable, peer skipped")
            continue
        progress(f"{case.name}: starting {name} ...")
        backend = {"KERAS_BACKEND": "tensorflow" if name == "notebook" else "jax"}
        argv = worker_argv(name, case, preset, batches, opts.torch_python)
        worker = Worker(argv, work / f"{case.name}-{name}.log", env=CPU_CHILD_ENV | backend)
        workers[name] = worker, {"ready": worker.receive(), "train": [], "infer": []}
        if "error" in workers[name][1]["ready"]:
            progress(f"{case.name}: {workers[name][1]['ready']['error']}")
    commands = ["train"] * case.rounds + (["infer"] if case.infer else [])
    for i, command in enumerate(commands):
        for name, (worker, record) in workers.items():
            done = [record["ready"], *record["train"], *record["infer"]]
            failed = any("error" in r for r in done)
            if failed or (command == "infer" and name not in INFER_WORKERS):
                continue
            progress(f"{case.name}: {command} round {i + 1}, {name}")
            record[command].append(worker.call(command))
    load = os.getloadavg()
    for worker, _ in workers.values():
        worker.close()
    return {"case": dataclasses.asdict(case), "load_after": load} | {
        name: record for name, (_, record) in workers.items()
    }


def summarize(name: str, case: dict, peak: float) -> dict | None:
    """Rates of one worker; the torch peer takes its work figures from the jaxpref worker."""
    result = case[name]
    source = case["jaxpref"]["ready"] if name == "torch" else result["ready"]
    train = [r for r in result.get("train", []) if "error" not in r]
    if "error" in source or not train or "epoch" not in source:
        return None
    epoch, wall = source["epoch"], median([r["wall_s"] for r in train])
    cpu = median([r["cpu_s"] for r in train])
    out = {
        "train_s": wall,
        "train_cpu_s": cpu,
        "pairs_per_s": epoch["pairs"] / wall,
        "pairs_per_cpu_s": epoch["pairs"] / cpu,
        "real_tokens_per_s": epoch["real_tokens"] / wall,
        "computed_tokens_per_s": epoch["computed_tokens"] / wall,
        "gflops_per_s": source["train_flops"] / wall / 1e9,
        "gflops_per_cpu_s": source["train_flops"] / cpu / 1e9,
        "gflop_per_pair": source["train_flops"] / epoch["pairs"] / 1e9,
        "compiles_timed": sum(r.get("compiles", 0) for r in train),
    }
    # Per CPU-second on both sides: other load on the machine lowers neither figure.
    out["of_peak"] = out["gflops_per_cpu_s"] * 1e9 / peak if peak else None
    full = source.get("full_epoch")
    if full and name != "torch":
        per_pair = full["computed_tokens"] / full["pairs"]
        out["projected_epoch_pairs_per_s"] = out["computed_tokens_per_s"] / per_pair
    infer = [r["wall_s"] for r in result.get("infer", []) if "error" not in r]
    if infer:
        out["infer_pairs_per_s"] = epoch["pairs"] / median(infer)
        out["infer_gflops_per_s"] = source["infer_flops"] / median(infer) / 1e9
    return out


def ratios(figures: dict) -> dict:
    """The issue's comparisons inside one case (None where a side is missing)."""

    def ratio(a: str, b: str, key: str, inverse: bool = False) -> float | None:
        if figures.get(a) is None or figures.get(b) is None:
            return None
        x, y = figures[a][key], figures[b][key]
        return y / x if inverse else x / y

    ours, nb = figures.get("jaxpref"), figures.get("notebook")
    return {
        "jaxpref_over_notebook_pairs_per_s": ratio("jaxpref", "notebook", "pairs_per_s"),
        "jaxpref_over_notebook_per_cpu_s": ratio("jaxpref", "notebook", "pairs_per_cpu_s"),
        "jaxpref_projected_epoch_over_notebook": (
            ours["projected_epoch_pairs_per_s"] / nb["pairs_per_s"] if ours and nb else None
        ),
        "efficient_over_keras_hub_step": ratio("jaxpref", "jaxpref-keras_hub", "train_s", True),
        "efficient_over_keras_hub_cpu": ratio("jaxpref", "jaxpref-keras_hub", "train_cpu_s", True),
        "full_ft_over_torch_step": ratio("jaxpref-full-ft", "torch", "train_s", True),
        "full_ft_over_torch_cpu": ratio("jaxpref-full-ft", "torch", "train_cpu_s", True),
    }


def worker_row(case: dict, name: str) -> dict:
    c, f = case["case"], case["figures"][name]
    row = {"case": c["name"], "path": name}
    if f is None:
        return row | {"error": case[name]["ready"].get("error", "no timed round")[:80]}
    batch = c["notebook_batch"] if name == "notebook" else c["batch"]
    return row | {
        "batch x steps": f"{batch} x {c['steps']} x {len(case[name]['train'])} rounds",
        "train s/epoch (CPU s)": f"{f['train_s']:.1f} ({f['train_cpu_s']:.1f})",
        "train pairs/s": f["pairs_per_s"],
        "projected epoch pairs/s": f.get("projected_epoch_pairs_per_s"),
        "real tok/s": f["real_tokens_per_s"],
        "computed tok/s": f["computed_tokens_per_s"],
        "train GFLOP/pair": f["gflop_per_pair"],
        "GFLOP/s": f["gflops_per_s"],
        "GFLOP per CPU-s": f.get("gflops_per_cpu_s"),
        "of matmul peak per CPU-s": f["of_peak"],
        "infer pairs/s": f.get("infer_pairs_per_s"),
    }


def summary(details: dict) -> tuple[list[dict], dict, list[str]]:
    """Rows and notes; each case's figures against the best matmul peak measured in the run."""
    peak = max(m.get("gflops_per_cpu_s_jax", 0.0) for m in details["matmul"]) * 1e9
    notes = [
        "jnp.dot peak (float32, 2048 x 2048), GFLOP/s (per CPU-second): "
        + ", ".join(
            f"{fmt(m['gflops_jax'])} ({fmt(m.get('gflops_per_cpu_s_jax'))})"
            for m in details["matmul"]
        )
    ]
    for case in details["cases"]:
        names = [k for k in case if k not in ("case", "load_after", "figures", "ratios")]
        case["figures"] = {name: summarize(name, case, peak) for name in names}
        case["ratios"] = ratios(case["figures"])
        kept = [f"{k} {v:.2f}" for k, v in case["ratios"].items() if v is not None]
        if kept:
            notes.append(f"ratios, {case['case']['name']}: {', '.join(kept)}")
    rows = [worker_row(c, name) for c in details["cases"] for name in c["figures"]]
    return rows, details, notes


def matmul(work) -> list[dict]:
    """The matmul peak, measured in a child of its own."""
    log = work / "matmul.log"
    return run_child(child_argv("realsize", "matmul_peak", {}), log, env=CPU_CHILD_ENV)[0]


def arch_preset(arch: str, work):
    """The random-weight preset of `arch`, built in a child (once per work folder)."""
    out = work / f"deberta-{arch}"
    if not (out / "config.json").exists():
        config = {"arch": arch, "vocab": 1000 if arch == "tiny" else REAL_VOCAB, "out": str(out)}
        argv = child_argv("realsize", "build_preset", config)
        _, ended = run_child(
            argv, work / "preset.log", env=CPU_CHILD_ENV | {"KERAS_BACKEND": "jax"}
        )
        if "error" in ended:
            sys.exit(f"error: could not build the {arch} preset: {ended['error']}")
    return out


def main(argv: list[str] | None = None) -> int:
    parsed = parser(__doc__, work_dir=True)
    parsed.add_argument("--quick", action="store_true", help="tiny architecture, every path")
    parsed.add_argument("--cases", nargs="+", help="only these cases (by name)")
    parsed.add_argument("--torch-python", default="/tmp/torchenv/bin/python")
    parsed.add_argument("--budget-min", type=float, default=25.0, help="start no case after this")
    opts = parse_args(parsed, argv)
    report, started = Report("realsize", opts.out, argv), time.time()
    with work_dir(opts.work_dir, "jaxpref-realsize-") as work:
        progress("matmul peak ...")
        details = {"work_dir": str(work), "matmul": matmul(work), "cases": []}
        for case in [c for c in cases(opts.quick) if not opts.cases or c.name in opts.cases]:
            if time.time() - started > opts.budget_min * 60:
                progress(f"{case.name}: skipped, past --budget-min")
                continue
            progress(f"{case.name}: building the {case.arch} preset ...")
            details["cases"].append(measure_case(case, opts, arch_preset(case.arch, work), work))
            report.save(*summary(details))
        details["matmul"] += matmul(work)
        report.finish(*summary(details))
        print(f"- logs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
