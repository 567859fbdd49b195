"""Full-size data benchmark: wall time and peak memory of each data stage at the real sizes.

The competition has 57,477 training rows and about 25,000 test rows; this measures every stage
between the CSV and the model on synthetic files of that size (`synthetic_arena.py`): read and
validate, split, text formatting, tokenizing at 1,024 tokens with a tiny preset's tokenizer (cold
and warm token cache), batch planning, side features and one epoch of batch assembly, at 5k, 20k
and 57k rows; then `scripts/infer.py` with a tiny model trained for one epoch on 32 short rows.

Each stage group runs in a fresh process. A stage's peak is the process's VmHWM after resetting
it (/proc/self/clear_refs) just before the stage; `stage MB` is that peak less the resident
memory before the stage. Inference is measured as a whole process (ru_maxrss). A watchdog kills
any process whose resident memory passes --max-rss-gb, so the shared machine stays usable.

    python benchmarks/fullsize.py --out benchmarks/results/fullsize.json   # 10-20 min, 2 cores
    python benchmarks/fullsize.py --groups --infer-rows 25000              # ~20 min more
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))  # this checkout's jaxpref, also when another one is installed

from benchlib import RESULT_PREFIX, emit, write_report  # noqa: E402
from run import git_commit, machine, markdown, progress  # noqa: E402
from synthetic_arena import make_files  # noqa: E402

from jaxpref.data import splitting  # noqa: E402

SEQUENCE_LENGTH = 1024
TINY = {"vocab-size": 8000, "hidden-dim": 16, "num-layers": 1, "max-sequence-length": 1024}
GROUP_STAGES = {
    "read": ("read",), "split": ("split",), "format": ("format",),
    "tokenize-cold": ("tokenize-cold",),
    "tokens": ("tokenize-warm", "plan", "side-features", "feed"),
}  # fmt: skip
"""Each group of stages runs in one process; a group's stages need what the one before wrote."""
GROUPS = tuple(GROUP_STAGES)
TRAIN_ROWS = 32
MB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 57477])
    parser.add_argument("--test-rows", type=int, default=25000, help="rows of the test file")
    parser.add_argument(
        "--infer-rows", type=int, nargs="*", default=[1000, 5000],
        help="first N test rows to run scripts/infer.py on (none: skip inference)",
    )  # fmt: skip
    parser.add_argument("--groups", nargs="*", choices=GROUPS, default=list(GROUPS))
    parser.add_argument("--batch-size", type=int, default=8, help="global batch for plan/feed")
    parser.add_argument("--max-rss-gb", type=float, default=8.0, help="kill a stage above this")
    parser.add_argument("--work-dir", type=Path, help="keep the files here (default: temporary)")
    parser.add_argument("--out", type=Path, help="JSON results file")
    parser.add_argument("--show", type=Path, help="print the tables of a results file and exit")
    parser.add_argument("--child", choices=GROUPS, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# -- measuring process -------------------------------------------------------------------------


def status_mb(field: str, pid: int | str = "self") -> float | None:
    """A /proc/PID/status memory field (VmRSS, VmHWM) in MiB; None once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


@contextlib.contextmanager
def measured(stage: str, rows: int) -> Iterator[dict]:
    """Time a stage and take its peak RSS into the dict it yields (for the caller to emit)."""
    result = {"stage": stage, "rows": rows}
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = status_mb("VmRSS")
    start = time.perf_counter()
    yield result
    wall = time.perf_counter() - start
    peak = status_mb("VmHWM")
    result.update(wall_s=wall, rss_before_mb=before, peak_mb=peak, stage_mb=peak - before)


def arrays_mb(obj: object) -> float:
    """Memory of the numpy arrays among an object's attributes."""
    return sum(getattr(v, "nbytes", 0) for v in vars(obj).values()) / MB


def load(path: Path):
    with open(path, "rb") as handle:
        return pickle.load(handle)


def save(obj: object, path: Path) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)


def child_frame_stages(group: str, rows: int, work: Path) -> None:
    """read (CSV -> frame), split, format (frame -> texts); inputs from the previous stage."""
    from jaxpref.data import arena, text

    if group == "read":
        with measured("read", rows) as result:
            frame = arena.read_arena_csv(work / f"train-{rows}.csv", labelled=True)
        emit(result)
        save(frame, work / f"frame-{rows}.pkl")
    elif group == "split":
        frame = load(work / f"frame-{rows}.pkl")
        with measured("split", rows) as result:
            splitting.split_train_valid(frame, 0.1, seed=0)
        emit(result)
    else:
        frame = load(work / f"frame-{rows}.pkl")
        with measured("format", rows) as result:
            texts = text.format_pairs(frame)
        emit(result | {"max_chars": {key: max(map(len, v)) for key, v in texts.items()}})
        save((texts, frame["label"].to_numpy()), work / f"texts-{rows}.pkl")


def child_token_stages(group: str, rows: int, work: Path, batch: int) -> None:
    """tokenize with a cold cache; or with a warm one, then plan, side features and feed."""
    from jaxpref.inputs import pipeline
    from jaxpref.models import backbones

    preset = str(work / "preset")
    keys = tuple(backbones.load_backbone(preset, load_weights=False).input.keys())
    encoder = pipeline.PairEncoder(backbones.load_preprocessor(preset, SEQUENCE_LENGTH), keys)
    texts, labels = load(work / f"texts-{rows}.pkl")
    cache = work / f"cache-{rows}"
    if group == "tokenize-cold":
        shutil.rmtree(cache, ignore_errors=True)
    stage = "tokenize-cold" if group == "tokenize-cold" else "tokenize-warm"
    with measured(stage, rows) as result:
        tokens = pipeline.tokenize(texts, encoder, cache, progress=False)
    result["tokens_mb"] = arrays_mb(tokens)
    result["cache_mb"] = sum(f.stat().st_size for f in cache.iterdir()) / MB
    emit(result | {"mean_tokens_per_side": float(tokens.lengths.mean())})
    if group == "tokenize-cold":
        return
    buckets = pipeline.bucket_lengths(SEQUENCE_LENGTH)
    with measured("plan", rows) as result:
        plan = pipeline.plan_batches(tokens.row_lengths(), batch, buckets, True, swap=True)
    emit(result)
    with measured("side-features", rows) as result:
        extra = pipeline.side_features(texts, tokens)
    emit(result)
    with measured("feed", rows) as result:
        for _ in pipeline.make_dataset(tokens, [plan], keys, labels, extra=extra):
            pass
    emit(result | {"batches": len(plan)})


def child(args: argparse.Namespace) -> None:
    work = args.work_dir
    if args.child in ("read", "split", "format"):
        child_frame_stages(args.child, args.rows, work)
    else:
        child_token_stages(args.child, args.rows, work, args.batch_size)


# -- orchestrator ------------------------------------------------------------------------------


def child_env(work: Path) -> dict:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ, "PYTHONPATH": path, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "2", "JAXPREF_CACHE": str(work / "infer-cache"),
    }  # fmt: skip


def run_watched(cmd: Sequence[str], log: Path, env: dict, max_mb: float) -> dict:
    """Run a process; wall time, ru_maxrss and its result lines, or an error with the log's tail.

    Polls its resident memory and kills it above `max_mb`.
    """
    out = log.with_suffix(".out")
    start = time.perf_counter()
    with open(out, "w") as stdout, open(log, "w") as stderr:
        proc = subprocess.Popen(list(cmd), stdout=stdout, stderr=stderr, env=env, cwd=REPO)
    killed, highest, load = None, 0.0, os.getloadavg()[0]
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        highest = max(highest, status_mb("VmRSS", proc.pid) or 0.0)
        if highest > max_mb and killed is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed = highest
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    result = {"wall_s": wall, "maxrss_mb": usage.ru_maxrss / 1024, "load_1min_at_start": load}
    lines = out.read_text().splitlines()
    result["stages"] = [
        json.loads(x[len(RESULT_PREFIX) :]) for x in lines if x.startswith(RESULT_PREFIX)
    ]
    if killed is not None:
        result["error"] = f"killed at {killed:,.0f} MB (over --max-rss-gb)"
    elif proc.returncode:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        result["error"] = f"exit status {proc.returncode}: {tail}"
    return result


def data_stages(args: argparse.Namespace, work: Path, env: dict) -> list[dict]:
    """Every stage group at every size, each in its own process."""
    results = []
    for rows in args.sizes:
        for group in args.groups:
            progress(f"{group} at {rows:,} rows ...")
            cmd = [sys.executable, __file__, "--child", group, "--rows", str(rows)]
            cmd += ["--work-dir", str(work), "--batch-size", str(args.batch_size)]
            proc = run_watched(cmd, work / f"{group}-{rows}.log", env, args.max_rss_gb * 1024)
            if "error" in proc:
                progress(f"  {proc['error']}")
            results.extend(proc.pop("stages"))
            results.append({"group": group, "rows": rows, **proc})
    return results


def build_preset(work: Path, env: dict) -> str:
    """The tiny DeBERTa-v3 preset (SentencePiece vocabulary trained on the embedded rows)."""
    flags = [f"--{k}={v}" for k, v in TINY.items()]
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "make_tiny_preset.py"),
        "--out",
        str(work / "preset"),
    ]
    subprocess.run([*cmd, *flags], check=True, capture_output=True, env=env)
    return str(work / "preset")


def write_short_rows(source: Path, out: Path, count: int) -> Path:
    """The `count` rows of `source` with the least text (training them compiles few shapes)."""
    csv.field_size_limit(2**31 - 1)
    with open(source, encoding="utf-8", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    rows.sort(key=lambda row: sum(map(len, row)))
    with open(out, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([header, *rows[:count]])
    return out


def inference(args: argparse.Namespace, work: Path, env: dict) -> tuple[dict, list[dict]]:
    """Train a tiny run for one epoch on a few short rows, then time infer.py per test size."""
    progress(f"training a tiny run on {TRAIN_ROWS} short rows ...")
    short = write_short_rows(work / f"train-{min(args.sizes)}.csv", work / "short.csv", TRAIN_ROWS)
    cmd = [sys.executable, str(REPO / "scripts" / "train_jax.py"), "--preset", str(work / "preset")]
    cmd += ["--run-dir", str(work / "run"), "--train-csv", str(short), "--epochs", "1"]
    cmd += ["--batch-size", "8", "--sequence-length", str(SEQUENCE_LENGTH), "--devices", "cpu"]
    cmd += ["--num-devices", "1", "--valid-fraction", "0.25", "--no-tensorboard"]
    train = run_watched(cmd, work / "train.log", env, args.max_rss_gb * 1024)
    results = []
    for rows in args.infer_rows:
        progress(f"infer.py on {rows:,} test rows ...")
        cmd = [sys.executable, str(REPO / "scripts" / "infer.py"), "--run-dir", str(work / "run")]
        cmd += ["--test-csv", str(work / f"test-{rows}.csv"), "--output", str(work / "sub.csv")]
        cmd += ["--devices", "cpu", "--num-devices", "1", "--batch-size", "16"]
        cache_env = {**env, "JAXPREF_CACHE": str(work / f"infer-cache-{rows}")}
        proc = run_watched(cmd, work / f"infer-{rows}.log", cache_env, args.max_rss_gb * 1024)
        proc.pop("stages")
        results.append({"stage": "infer", "rows": rows, **proc})
    return train, results


def cell(results: list[dict], stage: str, rows: int) -> str:
    """'wall s / peak MB (+stage MB)' of one stage and size; the error of its group if it failed."""
    found = [r for r in results if r.get("stage") == stage and r["rows"] == rows]
    if found:
        r = found[0]
        extra = f" (+{r['stage_mb']:,.0f})" if "stage_mb" in r else ""
        return f"{r['wall_s']:,.1f} s / {r.get('peak_mb', r.get('maxrss_mb')):,.0f} MB{extra}"
    group = next((g for g, stages in GROUP_STAGES.items() if stage in stages), None)
    failed = [r for r in results if r.get("group") == group and r["rows"] == rows]
    return failed[0].get("error", "-").split(" (")[0][:40] if failed else "-"


def growth(results: list[dict], stage: str, small: int, large: int) -> str:
    """Ratios large/small of wall time and of stage memory (or process peak for inference)."""
    pick = {r["rows"]: r for r in results if r.get("stage") == stage}
    if small not in pick or large not in pick:
        return "-"
    a, b = pick[small], pick[large]
    key = "stage_mb" if "stage_mb" in a else "maxrss_mb"
    mem = f"{b[key] / a[key]:.1f}x" if a[key] > 1 else "-"
    return f"{b['wall_s'] / a['wall_s']:.1f}x / {mem}"


def tables(results: list[dict]) -> str:
    """Markdown tables of the data stages by size and of inference by test rows."""
    sizes = sorted({r["rows"] for r in results if "group" in r})
    text = ""
    if sizes:
        small, large = sizes[0], sizes[-1]
        header = ["stage", *(f"{n:,} rows" for n in sizes), f"{large:,} / {small:,}: wall / MB"]
        groups = {r["group"] for r in results if "group" in r}
        rows = [
            [s, *(cell(results, s, n) for n in sizes), growth(results, s, small, large)]
            for g in GROUP_STAGES
            if g in groups
            for s in GROUP_STAGES[g]
        ]
        text = markdown(rows, header) + "\n\n"
    infer_rows = sorted(r["rows"] for r in results if r.get("stage") == "infer")
    if infer_rows:
        lo, hi = infer_rows[0], infer_rows[-1]
        header = ["stage", *(f"{n:,} rows" for n in infer_rows), f"{hi:,} / {lo:,}: wall / MB"]
        line = ["infer.py", *(cell(results, "infer", n) for n in infer_rows)]
        text += markdown([[*line, growth(results, "infer", lo, hi)]], header) + "\n\n"
    return text + "cells: wall / peak RSS (+ MB above the RSS before the stage)"


@contextlib.contextmanager
def work_dir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="fullsize-") as tmp:
        yield Path(tmp)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def measure(args: argparse.Namespace) -> dict:
    started, report = time.perf_counter(), {"uptime_before": uptime()}
    with work_dir(args.work_dir) as work:
        progress("writing synthetic files ...")
        make_files(work, args.sizes, sorted({*args.infer_rows, args.test_rows}))
        env = child_env(work)
        build_preset(work, env)
        results = data_stages(args, work, env)
        if args.infer_rows:
            report["train_setup"], infer = inference(args, work, env)
            results += infer
    report |= {"uptime_after": uptime(), "seconds": time.perf_counter() - started}
    return report | {"results": results}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.show:
        report = json.loads(args.show.read_text())
        print(tables(report["results"]))
        print(f"load: {report['uptime_before']} -> {report['uptime_after']}")
        return 0
    report = {"argv": sys.argv, "commit": git_commit(), "machine": machine()}
    report["date"] = datetime.datetime.now().isoformat(timespec="seconds")
    report |= measure(args)
    print(tables(report["results"]))
    print(f"{report['seconds']:.0f} s; load: {report['uptime_before']} -> {report['uptime_after']}")
    if args.out:
        write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
