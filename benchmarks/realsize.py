"""Real-size CPU benchmark: deberta_v3_small/base, jaxpref's path against the notebook's.

Random-weight DeBERTa-v3 presets of the real architectures (the real 128,100-row embedding;
token ids from a SentencePiece vocabulary trained on the arena sample) are built offline. For
each case the measuring workers (`stepworker.py`: jaxpref's path, the notebook's, jaxpref with
keras-hub's attention or with full fine-tuning; `torch_peer.py` when torch and transformers
import) stay alive and take turns (A, B, A, B) so all share the machine's load. A matmul
benchmark in the same run gives this CPU's own float32 peak. Prints tables, writes JSON.

    python benchmarks/realsize.py --out benchmarks/results/realsize.json   # ~35 min on 2 CPUs
    python benchmarks/realsize.py --quick --out /tmp/realsize-quick.json    # ~3 min
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchlib import median
from run import fmt, git_commit, machine, markdown, progress, work_dir, write
from workerproto import DONE, READY

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
VOCAB_PIECES = 8000
ARCHS = {
    # keras-hub's deberta_v3_small_en / deberta_v3_base_en.
    "small": dict(num_layers=6, num_heads=12, hidden_dim=768, intermediate_dim=3072),
    "base": dict(num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072),
    "tiny": dict(num_layers=2, num_heads=2, hidden_dim=64, intermediate_dim=128),
}
REAL_VOCAB = 128100


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


INFER_WORKERS = ("jaxpref", "notebook", "torch")


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny architecture, every path")
    parser.add_argument("--out", type=Path, help="JSON results file")
    parser.add_argument("--work-dir", type=Path, help="presets, batches and worker logs")
    parser.add_argument("--cases", nargs="+", help="only these cases (by name)")
    parser.add_argument("--torch-python", default="/tmp/torchenv/bin/python")
    parser.add_argument("--budget-min", type=float, default=25.0, help="start no case after this")
    parser.add_argument("--show", type=Path, help="print the tables of a results file and exit")
    return parser.parse_args(argv)


def build_preset(arch: str, work: Path) -> Path:
    """A random-weight DeBERTa-v3 preset of `arch` (in a subprocess: it picks the backend)."""
    out = work / f"deberta-{arch}"
    if (out / "config.json").exists():
        return out
    vocab = 1000 if arch == "tiny" else REAL_VOCAB
    code = (
        "import keras, keras_hub, sys\n"
        "from jaxpref.data import arena\n"
        "from jaxpref.models.tiny_preset import arena_texts, save_preset, train_sentencepiece\n"
        f"proto = train_sentencepiece(arena_texts(arena.DEFAULT_TRAIN_CSV), {VOCAB_PIECES})\n"
        "tok = keras_hub.models.DebertaV3Tokenizer(proto=proto)\n"
        "keras.utils.set_random_seed(0)\n"
        f"bb = keras_hub.models.DebertaV3Backbone(vocabulary_size=max({vocab}, "
        f"tok.vocabulary_size()), max_sequence_length=512, bucket_size=256, **{ARCHS[arch]!r})\n"
        "pre = keras_hub.models.DebertaV3TextClassifierPreprocessor(tok, sequence_length=512)\n"
        "save_preset(sys.argv[1], bb, tok, pre)\n"
    )
    env = worker_env() | {"KERAS_BACKEND": "jax"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env
    )
    if proc.returncode:
        sys.exit(f"error: could not build the {arch} preset: {proc.stderr.strip()[-500:]}")
    return out


def worker_env() -> dict:
    """Workers import this worktree's jaxpref and run on one JAX CPU device.

    A fixed mmap threshold makes glibc hand large freed buffers back to the system: an idle
    worker then holds its weights, not its last step's peak (the notebook's TensorFlow step
    at 1,024 tokens peaks at about 13 GB, and the workers of a case stay alive together).
    """
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    malloc = {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "0"}
    quiet = {"TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    return {**os.environ, **malloc, **quiet, "PYTHONPATH": path}


class Worker:
    """A live measuring process speaking the `workerproto` protocol."""

    def __init__(self, name: str, argv: list[str], log: Path):
        self.name, self.log = name, log
        pipe = subprocess.PIPE
        with open(log, "w") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=pipe,
                stdout=pipe,
                stderr=err,
                text=True,
                env=worker_env(),
                cwd=BENCH_DIR,
            )
        self.ready = self.expect(READY)
        self.rounds: dict[str, list[dict]] = {"train": [], "infer": []}

    def expect(self, prefix: str) -> dict:
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return json.loads(line[len(prefix) :])
        tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
        return {"error": f"{self.name} exited {self.proc.wait()}: " + " | ".join(tail)}

    @property
    def ok(self) -> bool:
        done = [r for rounds in self.rounds.values() for r in rounds]
        return "error" not in self.ready and all("error" not in r for r in done)

    def run(self, command: str) -> None:
        if not self.ok:
            return
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:  # the worker died (out of memory, say): expect() says why
            pass
        self.rounds[command].append(self.expect(DONE))

    def close(self) -> dict:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            self.proc.wait()
        return {"ready": self.ready, **self.rounds}


def worker_argv(name: str, case: Case, preset: Path, batches: Path, torch_python: str) -> list:
    """The command line of worker `name` in `case`."""
    if name == "torch":
        arch = ARCHS[case.arch]
        sizes = [f"--{k.replace('_', '-')}={v}" for k, v in arch.items()]
        vocab = REAL_VOCAB if case.arch != "tiny" else VOCAB_PIECES
        argv = [torch_python, "torch_peer.py", "--batches", str(batches), *sizes]
        return [*argv, f"--vocabulary-size={vocab}", *(["--infer"] if case.infer else [])]
    infer = case.infer and name in INFER_WORKERS
    kind = "notebook" if name == "notebook" else "jaxpref"
    argv = [sys.executable, "stepworker.py", kind, "--preset", str(preset)]
    argv += ["--sequence-length", str(case.length), "--steps", str(case.steps)]
    argv += ["--batch-size", str(case.notebook_batch if kind == "notebook" else case.batch)]
    if infer:
        argv.append("--infer")
    if name == "jaxpref":
        argv += ["--batches-out", str(batches)]
    if name == "jaxpref-keras_hub":
        argv += ["--attention", "keras_hub"]
    if name == "jaxpref-full-ft":
        argv += ["--lora-rank", "0"]
    return argv


def torch_available(python: str) -> bool:
    probe = [python, "-c", "import torch, transformers"]
    try:
        return subprocess.run(probe, capture_output=True).returncode == 0
    except OSError:
        return False


def measure_case(case: Case, opts, preset: Path, work: Path) -> dict:
    """Start the case's workers one at a time, then alternate their rounds."""
    batches = work / f"{case.name}-batches.npz"
    workers = []
    for name in case.workers:
        if name == "torch" and not torch_available(opts.torch_python):
            progress(f"{case.name}: torch/transformers not importable, peer skipped")
            continue
        progress(f"{case.name}: starting {name} ...")
        argv = worker_argv(name, case, preset, batches, opts.torch_python)
        workers.append(Worker(name, argv, work / f"{case.name}-{name}.log"))
        if not workers[-1].ok:
            progress(f"{case.name}: {workers[-1].ready['error']}")
    commands = ["train"] * case.rounds + (["infer"] if case.infer else [])
    for i, command in enumerate(commands):
        for worker in workers:
            if command == "infer" and worker.name not in INFER_WORKERS:
                continue
            progress(f"{case.name}: {command} round {i + 1}, {worker.name}")
            worker.run(command)
    load = os.getloadavg()
    return {"case": dataclasses.asdict(case), "load_after": load} | {
        w.name: w.close() for w in workers
    }


def summarize(name: str, result: dict, case: dict, peak: float) -> dict | None:
    """Rates of one worker; the torch peer takes its work figures from the jaxpref worker."""
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

    return {
        "jaxpref_over_notebook_pairs_per_s": ratio("jaxpref", "notebook", "pairs_per_s"),
        "jaxpref_over_notebook_per_cpu_s": ratio("jaxpref", "notebook", "pairs_per_cpu_s"),
        "jaxpref_projected_epoch_over_notebook": (
            figures["jaxpref"]["projected_epoch_pairs_per_s"] / figures["notebook"]["pairs_per_s"]
            if figures.get("jaxpref") and figures.get("notebook")
            else None
        ),
        "efficient_over_keras_hub_step": ratio("jaxpref", "jaxpref-keras_hub", "train_s", True),
        "efficient_over_keras_hub_cpu": ratio("jaxpref", "jaxpref-keras_hub", "train_cpu_s", True),
        "full_ft_over_torch_step": ratio("jaxpref-full-ft", "torch", "train_s", True),
        "full_ft_over_torch_cpu": ratio("jaxpref-full-ft", "torch", "train_cpu_s", True),
    }


def analyse(case: dict, peak: float) -> dict:
    names = [k for k in case if k not in ("case", "load_after", "figures", "ratios")]
    figures = {name: summarize(name, case[name], case, peak) for name in names}
    return {"figures": figures, "ratios": ratios(figures)}


HEADER = [
    "case",
    "path",
    "batch x steps",
    "train s/epoch (CPU s)",
    "train pairs/s",
    "projected epoch pairs/s",
    "real tok/s",
    "computed tok/s",
    "train GFLOP/pair",
    "GFLOP/s",
    "GFLOP per CPU-s",
    "of matmul peak per CPU-s",
    "infer pairs/s",
]


def rows(case: dict) -> list[list[str]]:
    out = []
    c = case["case"]
    for name, f in case["figures"].items():
        if f is None:
            error = case[name]["ready"].get("error", "no timed round")
            out.append([c["name"], name, "error: " + error[:80], *["-"] * (len(HEADER) - 3)])
            continue
        batch = c["notebook_batch"] if name == "notebook" else c["batch"]
        out.append(
            [
                c["name"],
                name,
                f"{batch} x {c['steps']} x {len(case[name]['train'])} rounds",
                f"{fmt(f['train_s'])} ({fmt(f['train_cpu_s'])})",
                fmt(f["pairs_per_s"], 3),
                fmt(f.get("projected_epoch_pairs_per_s"), 3),
                fmt(f["real_tokens_per_s"], 0),
                fmt(f["computed_tokens_per_s"], 0),
                fmt(f["gflop_per_pair"], 0),
                fmt(f["gflops_per_s"], 1),
                fmt(f.get("gflops_per_cpu_s"), 1),
                fmt(f["of_peak"], 2),
                fmt(f.get("infer_pairs_per_s"), 3),
            ]
        )
    return out


def ratio_rows(cases: list[dict]) -> str:
    keys = list(cases[0]["ratios"]) if cases else []
    body = [[c["case"]["name"], *[fmt(c["ratios"][k], 2) for k in keys]] for c in cases]
    return markdown(body, ["case", *keys])


def print_report(report: dict) -> None:
    """The tables of a report, figures recomputed from its raw timings (as this code counts)."""
    peak = matmul_peak(report["matmul"])
    for case in report["cases"]:
        case |= analyse(case, peak)
    print(f"matmul peak (float32, GFLOP/s): {json.dumps(report['matmul'])}")
    print(markdown([r for c in report["cases"] for r in rows(c)], HEADER))
    print()
    print(ratio_rows(report["cases"]))
    print(f"- uptime before: {report['uptime_before']}")
    print(f"- uptime after: {report.get('uptime_after', 'run cut short')}")
    print(f"- wall time {report.get('wall_s', '-')} s")


def matmul_peak(measurements: list[dict]) -> float:
    """The best jnp matmul FLOP/s per CPU-second measured in the run (0 when none)."""
    return max(m.get("gflops_per_cpu_s_jax", 0.0) for m in measurements) * 1e9


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def matmul(work: Path) -> dict:
    worker = Worker("matmul", [sys.executable, "stepworker.py", "matmul"], work / "matmul.log")
    return worker.close()["ready"]


def run_suite(opts, command: str) -> dict:
    """Matmul peak, every selected case (partial results written after each), matmul again."""
    work = work_dir(opts.work_dir, "jaxpref-realsize-")
    started = time.time()
    report = {"command": command, "git_commit": git_commit(), "machine": machine()}
    report |= {"uptime_before": uptime(), "work_dir": str(work)}
    progress("matmul peak ...")
    report["matmul"] = [matmul(work)]
    peak = matmul_peak(report["matmul"])
    report["cases"] = []
    for case in [c for c in cases(opts.quick) if not opts.cases or c.name in opts.cases]:
        if time.time() - started > opts.budget_min * 60:
            progress(f"{case.name}: skipped, past --budget-min")
            continue
        progress(f"{case.name}: building the {case.arch} preset ...")
        result = measure_case(case, opts, build_preset(case.arch, work), work)
        report["cases"].append(result | analyse(result, peak))
        write(report | {"complete": False}, opts.out)
    report["matmul"].append(matmul(work))
    return report | {"uptime_after": uptime(), "wall_s": round(time.time() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.show:
        print_report(json.loads(opts.show.read_text()))
        return 0
    given = sys.argv[1:] if argv is None else argv
    report = run_suite(opts, " ".join(["python benchmarks/realsize.py", *given]))
    write(report | {"complete": True}, opts.out)
    print_report(report)
    print(f"- logs in {report['work_dir']}" + (f"; wrote {opts.out}" if opts.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
