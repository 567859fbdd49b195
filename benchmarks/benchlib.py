"""The benchmark harness: one child-process protocol, one result format, one table format.

A benchmark script parses its flags with `parser()` + `parse_args()` (every script takes
`--out FILE` and `--show FILE`), measures, and ends with `Report.finish(rows, details)`: the
rows as a markdown table on stdout and, with `--out`, one JSON document whose schema is the same
for every benchmark:

    {"benchmark": "padding", "command": "python benchmarks/padding.py --out ...",
     "git_commit": "...", "date": "...", "machine": {...}, "load_average": [[...], [...]],
     "wall_s": 28.1, "complete": true, "rows": [{"column": value, ...}, ...],
     "notes": ["..."], "details": {...what the benchmark measured, raw}}

Work that needs a process of its own (a Keras backend or XLA flags chosen before the first
import, a clean peak-memory figure, another interpreter) runs as a child through `Worker`:
`python benchmarks/benchlib.py MODULE FUNCTION JSON` calls `MODULE.FUNCTION(config)`, which
reports with `send(dict)` (a dict it returns is sent last) or answers commands with `serve`.
Messages are stdout lines `BENCH <json>`; other output is ignored, and stderr goes to a log whose
tail explains a failed child.

Nothing here imports Keras, JAX, TensorFlow or pandas at module level: the torch peer's
interpreter has no jaxpref, and gpu_check.py runs without TensorFlow.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
MESSAGE = "BENCH "
# The tiny DeBERTa-v3 of run.py, padding.py and wallclock.py (scripts/make_tiny_preset.py flags).
TINY_DEBERTA = {"vocab-size": 8000, "hidden-dim": 128, "num-layers": 2, "max-sequence-length": 1024}
# keras-hub's deberta_v3_small_en and deberta_v3_base_en, and a tiny one for quick runs.
ARCHS = {
    "small": dict(num_layers=6, num_heads=12, hidden_dim=768, intermediate_dim=3072),
    "base": dict(num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072),
    "tiny": dict(num_layers=2, num_heads=2, hidden_dim=64, intermediate_dim=128),
}
REAL_VOCAB = 128100
# Children on one JAX CPU device. glibc hands large freed buffers back to the system: an idle
# worker then holds its weights, not its last step's peak (the notebook's TensorFlow step at
# 1,024 tokens peaks at about 13 GB, and realsize.py's workers of a case stay alive together).
CPU_CHILD_ENV = {"JAX_PLATFORMS": "cpu", "MALLOC_MMAP_THRESHOLD_": "1048576"}
CPU_CHILD_ENV["MALLOC_TRIM_THRESHOLD_"] = "0"
# Peak dense bf16 FLOP/s per accelerator (vendor data sheets, without sparsity).
PEAK_BF16_FLOPS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
    "A10": 125e12, "T4": 65e12,
}  # fmt: skip


# -- the child-process protocol -----------------------------------------------------------------


def send(message: dict) -> None:
    """Report one message to the parent (from a child function)."""
    print(MESSAGE + json.dumps(message), flush=True)


def serve(ready: dict, commands: dict[str, Callable[[], dict | None]]) -> None:
    """Send `ready`, then run each command named on stdin until `quit` or end of input.

    Each answer holds the command's wall and process CPU seconds, merged with what it returns.
    Keeping workers alive lets the parent interleave them (A, B, A, B) under the same load.
    """
    send(ready)
    for line in sys.stdin:
        name = line.strip()
        if name == "quit":
            break
        if name not in commands:
            send({"error": f"unknown command {name!r}"})
            continue
        with Stopwatch() as clock:
            extra = commands[name]() or {}
        send({"wall_s": clock.wall, "cpu_s": clock.cpu, **extra})


def fail(message: str) -> None:
    """End a child with one error message (a configuration this machine cannot run)."""
    send({"error": message})
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def child_argv(module: str, function: str, config: dict, python: str = sys.executable) -> list:
    """The command line of a child running `module.function(config)` (a benchmarks/ module)."""
    return [python, str(BENCH_DIR / "benchlib.py"), module, function, json.dumps(config)]


def child_env(extra: dict | None = None) -> dict:
    """This environment with this checkout's jaxpref importable and TensorFlow's C++ logs quiet."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    quiet = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    return {**os.environ, **quiet, "PYTHONPATH": path, **(extra or {})}


def status_mb(field: str, pid: int | str = "self") -> float | None:
    """A /proc/PID/status memory field (VmRSS, VmHWM) in MiB; None once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    found = [int(line.split()[1]) / 1024 for line in lines if line.startswith(field + ":")]
    return found[0] if found else None


class Worker:
    """A child process: its messages, commands to it, and how it ended.

        worker = Worker(child_argv("realsize", "jaxpref_worker", config), work / "a.log")
        ready = worker.receive()         # its first message
        reply = worker.call("train")     # a child that serves commands
        ended = worker.close()           # exit status, wall seconds, peak RSS, error

    Any command line works (`scripts/infer.py` too: it sends no messages). With `max_rss_mb`
    a watchdog kills the child when its resident memory passes that, so a shared machine
    stays usable.
    """

    def __init__(self, argv: Sequence[str], log: Path, env: dict | None = None, max_rss_mb=None):
        self.log, self.ended = log, None
        self.started, self.killed_at = time.perf_counter(), None
        with open(log, "w") as err:
            self.proc = subprocess.Popen(
                list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                text=True, env=child_env(env), cwd=REPO,
            )  # fmt: skip
        self.reaped = threading.Event()
        if max_rss_mb:
            threading.Thread(target=self.watch, args=(max_rss_mb,), daemon=True).start()

    def watch(self, max_mb: float) -> None:
        while not self.reaped.is_set():
            rss = status_mb("VmRSS", self.proc.pid)
            if rss is None:
                return
            if rss > max_mb:
                self.killed_at = rss
                os.kill(self.proc.pid, signal.SIGKILL)
                return
            time.sleep(0.2)

    def messages(self) -> Iterator[dict]:
        """The child's messages until it closes its output."""
        for line in self.proc.stdout:
            if line.startswith(MESSAGE):
                yield json.loads(line[len(MESSAGE) :])

    def receive(self) -> dict:
        """The next message, or {'error': ...} with the log's tail when the child ended first."""
        message = next(self.messages(), None)
        return message if message is not None else {"error": self.close().get("error", "ended")}

    def call(self, command: str) -> dict:
        with contextlib.suppress(BrokenPipeError, ValueError):  # ended: receive() says why
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        return self.receive()

    def close(self) -> dict:
        """End the child (`quit`) and wait: exit status, wall s, peak RSS MB, error if it failed."""
        if self.ended is not None:
            return self.ended
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        self.proc.stdout.read()
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.reaped.set()
        self.proc.returncode = code = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - self.started
        self.ended = {"exit_status": code, "wall_s": wall, "maxrss_mb": usage.ru_maxrss / 1024}
        if self.killed_at is not None:
            self.ended["error"] = f"killed at {self.killed_at:,.0f} MB (over the memory limit)"
        elif code:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
            self.ended["error"] = f"exit status {code}: " + " | ".join(tail)
        return self.ended


def run_child(argv: Sequence[str], log: Path, **options) -> tuple[list[dict], dict]:
    """Run a child to its end: every message it sent, and `Worker.close()`'s summary."""
    worker = Worker(argv, log, **options)
    worker.proc.stdin.close()
    return list(worker.messages()), worker.close()


def child_main(argv: Sequence[str]) -> None:
    """The child's side: `benchlib.py MODULE FUNCTION JSON` calls MODULE.FUNCTION(config)."""
    module, function, config = argv
    result = getattr(importlib.import_module(module), function)(json.loads(config))
    if result is not None:
        send(result)


# -- the result format ---------------------------------------------------------------------------


def parser(doc: str, work_dir: bool = False) -> argparse.ArgumentParser:
    """A benchmark's argument parser (described by its docstring): --out, --show, --work-dir."""
    parsed = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parsed.add_argument("--out", type=Path, help="write the results here (JSON)")
    parsed.add_argument("--show", type=Path, help="print the table of a results file and exit")
    if work_dir:
        parsed.add_argument("--work-dir", type=Path, help="keep presets, data and logs here")
    return parsed


def parse_args(parsed: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The flags; with --show, print that results file and exit."""
    args = parsed.parse_args(argv)
    if args.show:
        print_report(json.loads(args.show.read_text()))
        raise SystemExit(0)
    return args


class Report:
    """One invocation of a benchmark: what ran, where, and what it measured (see the module)."""

    def __init__(self, benchmark: str, out: Path | None, argv: Sequence[str] | None = None):
        given = sys.argv[1:] if argv is None else list(argv)
        self.out, self.started = out, time.time()
        self.data = {
            "benchmark": benchmark,
            "command": shlex.join(["python", f"benchmarks/{benchmark}.py", *given]),
            "git_commit": git_commit(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(),
            "load_average": [os.getloadavg(), None],
        }

    def save(self, rows: list[dict], details: dict, notes=(), complete: bool = False) -> dict:
        """Write what is measured so far (after every case: a run cut short keeps it)."""
        self.data["load_average"][1] = os.getloadavg()
        self.data |= {"wall_s": round(time.time() - self.started, 1), "complete": complete}
        self.data |= {"rows": rows, "notes": list(notes), "details": details}
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(self.data, indent=2) + "\n")
        return self.data

    def finish(self, rows: list[dict], details: dict, notes=()) -> dict:
        """Save the complete results and print them."""
        print_report(self.save(rows, details, notes, complete=True))
        if self.out:
            print(f"wrote {self.out}")
        return self.data


def fmt(value) -> str:
    """A table cell: three significant digits (no fewer integer digits), '-' for none."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or value == 0 or not math.isfinite(value):
        return f"{value:,}"
    return f"{value:,.{max(0, 2 - math.floor(math.log10(abs(value))))}f}"


def markdown(rows: Sequence[dict]) -> str:
    """Rows as a markdown table; the columns are their keys in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def print_report(report: dict) -> None:
    """A results file as text: its table, its notes, then where and when it ran."""
    print(markdown(report["rows"]))
    for note in report["notes"]:
        print(f"- {note}")
    before, after = report["load_average"]
    load = f"load {before[0]:.1f} -> {after[0]:.1f}" if before and after else "load -"
    wall = f"{report['wall_s']:.0f} s" if report["wall_s"] else "time not recorded"
    state = "" if report["complete"] else ", cut short"
    command = report["command"] or "(command not recorded)"
    commit = report["git_commit"] or "unknown"
    commit = commit[:12] + ("+dirty" if commit.endswith("+dirty") else "")
    print(f"- {command} at {commit}: {wall}, {load}{state}")


def git_commit() -> str | None:
    """This checkout's commit, '+dirty' when files differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "-uno"], capture_output=True, cwd=REPO
        )
    except OSError:
        return None
    return (head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")) or None


def machine() -> dict:
    """CPU count and model, memory, and the versions that matter."""
    info = {"nproc": os.cpu_count(), "platform": platform.platform()}
    with contextlib.suppress(OSError):
        model = [x for x in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in x]
        info["cpu_model"] = model[0].split(":", 1)[1].strip() if model else ""
    info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    info["versions"] = {}
    for package in ("jax", "jaxlib", "keras", "keras-hub", "tensorflow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info["versions"][package] = metadata.version(package)
    return info


# -- helpers of several benchmarks ---------------------------------------------------------------


def progress(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def work_dir(path: Path | None, prefix: str, keep: bool = True) -> Iterator[Path]:
    """`path` (made if missing), else a fresh temporary folder, removed at the end unless `keep`."""
    work = (path or Path(tempfile.mkdtemp(prefix=prefix))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if path is None and not keep:
            shutil.rmtree(work, ignore_errors=True)


def tiny_preset(out: Path, sizes: dict = TINY_DEBERTA) -> str:
    """A random DeBERTa-v3 preset (scripts/make_tiny_preset.py, vocabulary from the sample)."""
    script = REPO / "scripts" / "make_tiny_preset.py"
    flags = [f"--{key}={value}" for key, value in sizes.items()]
    cmd = [sys.executable, str(script), "--out", str(out), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    if proc.returncode:
        sys.exit(f"error: could not build the tiny preset: {proc.stderr.strip()[-500:]}")
    return str(out)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


class Stopwatch:
    """Wall and process CPU seconds of a `with` block: `with Stopwatch() as clock: ...`."""

    def __enter__(self) -> Stopwatch:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def load_frame(rows: int | None = None):
    """The embedded 1,000-row arena sample (first `rows` rows), validated by jaxpref.data.arena."""
    from jaxpref.data import arena

    frame = arena.read_arena_csv(arena.DEFAULT_TRAIN_CSV, labelled=True)
    return frame if rows is None else frame.iloc[:rows].reset_index(drop=True)


def forward_flops(params: int, layers: int, hidden: int, length: int, span: int | None) -> float:
    """Forward FLOPs of one sequence of `length` tokens.

    2 * params * T for the dense layers, plus per layer 4 * T^2 * H for scores and weighted sum,
    plus 4 * T * span * H for DeBERTa's content-to-position and position-to-content scores.
    """
    attention = 4.0 * length * length * hidden + (4.0 * length * span * hidden if span else 0.0)
    return 2.0 * params * length + layers * attention


def model_flops(backbone, sequence_lengths: Sequence[int], train: bool = True) -> float:
    """Model FLOPs for sequences of these lengths, 3x forward when training (6 * N * T).

    N: the weights in per-token matmuls (no lookup tables, no unused pooler); the span is
    DeBERTa-v3's relative-position span (2 x bucket size; none for absolute positions).
    """
    config = backbone.get_config()
    skip = ("embedding", "pooled_dense")
    weights = [w for w in backbone.weights if not any(s in w.path for s in skip)]
    params = sum(int(np.prod(w.shape)) for w in weights)
    span = 2 * int(config["bucket_size"]) if config.get("bucket_size") else None
    layers, hidden = config["num_layers"], config["hidden_dim"]
    total = sum(forward_flops(params, layers, hidden, int(t), span) for t in sequence_lengths)
    return total * (3.0 if train else 1.0)


def peak_flops(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s for a device kind such as 'NVIDIA H100 80GB HBM3'."""
    found = [f for name, f in PEAK_BF16_FLOPS.items() if name.lower() in device_kind.lower()]
    return found[0] if found else None


# -- jaxpref's input recipe ----------------------------------------------------------------------


@dataclasses.dataclass
class ArenaInputs:
    """Texts through jaxpref's input recipe as the trainer runs it: tokenize -> side features ->
    bucket_lengths -> plan_batches -> make_dataset.

    The one place the benchmarks call `jaxpref.inputs` (padding analysis aside):

        inputs = ArenaInputs.tokenize(text.format_pairs(frame), preprocessor, keys)
        plan = inputs.plan(8, shuffle=True)
        dataset = inputs.dataset([plan], frame["label"].to_numpy())
    """

    texts: dict
    packer: object  # inputs.packers.PairPacker
    tokens: object  # inputs.token_store.TokenizedPairs
    keys: tuple
    buckets: tuple
    extra: np.ndarray | None = None

    @classmethod
    def tokenize(cls, texts, preprocessor, keys, cache=None, around=None) -> ArenaInputs:
        """Tokenized `texts` (with an on-disk `cache` folder); `around`: a context manager
        entered around the tokenizing alone, to time it."""
        from jaxpref.inputs import batching, featurize, packers

        packer = packers.PairPacker(preprocessor, tuple(keys))
        with around or contextlib.nullcontext():
            tokens = featurize.tokenize(texts, packer, cache, False)
        buckets = batching.bucket_lengths(packer.sequence_length)
        return cls(texts, packer, tokens, tuple(keys), buckets)

    @property
    def rows(self):
        """The tokens and side features as `inputs.featurize.FeaturizedRows`."""
        from jaxpref.inputs.featurize import FeaturizedRows

        return FeaturizedRows(self.packer, self.tokens, self.extra)

    def add_side_features(self) -> None:
        from jaxpref.inputs import featurize

        self.extra = featurize.side_features(self.texts, self.tokens)

    def plan(self, batch_size: int, shuffle=False, swap=False, buckets=None, lengths=None) -> list:
        """Batches of rows (of `lengths`, default each row's longer side) by padded length."""
        from jaxpref.inputs import batching

        lengths = self.tokens.row_lengths() if lengths is None else lengths
        buckets = self.buckets if buckets is None else buckets
        return batching.plan_batches(lengths, batch_size, buckets, shuffle, swap=swap)

    def dataset(self, plans: Sequence[list], labels=None):
        from jaxpref.inputs import feeding

        return feeding.make_dataset(self.rows, plans, labels)

    def features(self, batch) -> dict:
        """The model inputs of one batch, both sides in order."""
        sides = np.array([[0, 1]] * len(batch.rows))
        return self.packer.batch_inputs(self.tokens, batch.rows, sides, batch.length)

    def padding_efficiency(self, plan) -> float:
        from jaxpref.inputs import batching

        return batching.padding_efficiency(self.tokens.lengths, plan)

    def take(self, rows) -> ArenaInputs:
        return dataclasses.replace(self, tokens=self.tokens.take(rows), extra=None)


if __name__ == "__main__":
    child_main(sys.argv[1:])
