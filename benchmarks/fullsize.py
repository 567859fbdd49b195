"""Full-size data benchmark: wall time and peak memory of each data stage at the real sizes.

The competition has 57,477 training rows and about 25,000 test rows; this measures every stage
between the CSV and the model on synthetic files of that size (`synthetic_arena.py`): read and
validate, split, text formatting, tokenizing at 1,024 tokens with a tiny preset's tokenizer (cold
and warm token cache), batch planning, side features and one epoch of batch assembly, at 5k, 20k
and 57k rows; then `scripts/infer.py` with a tiny model trained for one epoch on 32 short rows.

Each stage group runs in a fresh process. A stage's peak is the process's VmHWM after resetting
it (/proc/self/clear_refs) just before the stage; `+MB` is that peak less the resident memory
before the stage. Inference is measured as a whole process (ru_maxrss). A watchdog kills any
process whose resident memory passes --max-rss-gb, so the shared machine stays usable.

    python benchmarks/fullsize.py --out benchmarks/results/fullsize.json   # 10-20 min, 2 cores
    python benchmarks/fullsize.py --groups --infer-rows 25000              # ~20 min more
"""

from __future__ import annotations

import csv
import os
import pickle
import shutil
import sys
import time
from pathlib import Path

from benchlib import (
    REPO,
    ArenaInputs,
    Report,
    child_argv,
    parse_args,
    parser,
    progress,
    run_child,
    send,
    status_mb,
    tiny_preset,
    work_dir,
)
from synthetic_arena import make_files

SEQUENCE_LENGTH = 1024
TINY = {"vocab-size": 8000, "hidden-dim": 16, "num-layers": 1, "max-sequence-length": 1024}
GROUP_STAGES = {
    "read": ("read",), "split": ("split",), "format": ("format",),
    "tokenize-cold": ("tokenize-cold",),
    "tokens": ("tokenize-warm", "plan", "side-features", "feed"),
}  # fmt: skip
"""Each group of stages runs in one process; a group's stages need what the one before wrote."""
TRAIN_ROWS = 32
MB = 2**20


class Measured:
    """Wall time and peak RSS of a `with` block (one stage), in `.result` afterwards."""

    def __init__(self, stage: str, rows: int):
        self.result = {"stage": stage, "rows": rows}

    def __enter__(self) -> dict:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        self.before, self.start = status_mb("VmRSS"), time.perf_counter()
        return self.result

    def __exit__(self, *exc) -> None:
        wall, peak = time.perf_counter() - self.start, status_mb("VmHWM")
        self.result.update(wall_s=wall, rss_before_mb=self.before, peak_mb=peak)
        self.result["stage_mb"] = peak - self.before


def load(path: Path):
    with open(path, "rb") as handle:
        return pickle.load(handle)


def save(obj: object, path: Path) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)


def frame_stages(group: str, rows: int, work: Path) -> None:
    """read (CSV -> frame), split, format (frame -> texts); inputs from the previous stage."""
    from jaxpref.data import arena, splitting, text

    if group == "read":
        with Measured("read", rows) as result:
            frame = arena.read_arena_csv(work / f"train-{rows}.csv", labelled=True)
        send(result)
        save(frame, work / f"frame-{rows}.pkl")
    elif group == "split":
        frame = load(work / f"frame-{rows}.pkl")
        with Measured("split", rows) as result:
            splitting.split_train_valid(frame, 0.1, seed=0)
        send(result)
    else:
        frame = load(work / f"frame-{rows}.pkl")
        with Measured("format", rows) as result:
            texts = text.format_pairs(frame)
        send(result | {"max_chars": {key: max(map(len, v)) for key, v in texts.items()}})
        save((texts, frame["label"].to_numpy()), work / f"texts-{rows}.pkl")


def token_stages(group: str, rows: int, work: Path, batch: int) -> None:
    """tokenize with a cold cache; or with a warm one, then plan, side features and feed."""
    from jaxpref.models import backbones

    preset = str(work / "preset")
    keys = tuple(backbones.load_backbone(preset, load_weights=False).input.keys())
    preprocessor = backbones.load_preprocessor(preset, SEQUENCE_LENGTH)
    texts, labels = load(work / f"texts-{rows}.pkl")
    cache = work / f"cache-{rows}"
    if group == "tokenize-cold":
        shutil.rmtree(cache, ignore_errors=True)
    stage = Measured("tokenize-cold" if group == "tokenize-cold" else "tokenize-warm", rows)
    inputs = ArenaInputs.tokenize(texts, preprocessor, keys, cache, around=stage)
    tokens_mb = sum(getattr(v, "nbytes", 0) for v in vars(inputs.tokens).values()) / MB
    cache_mb = sum(f.stat().st_size for f in cache.iterdir()) / MB
    mean = float(inputs.tokens.lengths.mean())
    send(
        stage.result | {"tokens_mb": tokens_mb, "cache_mb": cache_mb, "mean_tokens_per_side": mean}
    )
    if group == "tokenize-cold":
        return
    with Measured("plan", rows) as result:
        plan = inputs.plan(batch, shuffle=True, swap=True)
    send(result)
    with Measured("side-features", rows) as result:
        inputs.add_side_features()
    send(result)
    with Measured("feed", rows) as result:
        for _ in inputs.dataset([plan], labels):
            pass
    send(result | {"batches": len(plan)})


def stage_group(config: dict) -> None:
    """One group of stages at one size (a child: a fresh process per group)."""
    group, rows, work = config["group"], config["rows"], Path(config["work"])
    if group in ("read", "split", "format"):
        frame_stages(group, rows, work)
    else:
        token_stages(group, rows, work, config["batch_size"])


# -- the parent ---------------------------------------------------------------------------------


def data_stages(args, work: Path, env: dict) -> list[dict]:
    """Every stage group at every size, each in its own process."""
    results = []
    for rows in args.sizes:
        for group in args.groups:
            progress(f"{group} at {rows:,} rows ...")
            config = {
                "group": group,
                "rows": rows,
                "work": str(work),
                "batch_size": args.batch_size,
            }
            load_average = os.getloadavg()[0]
            stages, ended = run_child(
                child_argv("fullsize", "stage_group", config),
                work / f"{group}-{rows}.log", env=env, max_rss_mb=args.max_rss_gb * 1024,
            )  # fmt: skip
            if "error" in ended:
                progress(f"  {ended['error']}")
            results += [*stages, {"group": group, "rows": rows, "load_1min_at_start": load_average}]
            results[-1] |= ended
    return results


def write_short_rows(source: Path, out: Path, count: int) -> Path:
    """The `count` rows of `source` with the least text (training them compiles few shapes)."""
    csv.field_size_limit(2**31 - 1)
    with open(source, encoding="utf-8", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    rows.sort(key=lambda row: sum(map(len, row)))
    with open(out, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([header, *rows[:count]])
    return out


def inference(args, work: Path, env: dict) -> tuple[dict, list[dict]]:
    """Train a tiny run for one epoch on a few short rows, then time infer.py per test size."""
    progress(f"training a tiny run on {TRAIN_ROWS} short rows ...")
    short = write_short_rows(work / f"train-{min(args.sizes)}.csv", work / "short.csv", TRAIN_ROWS)
    cmd = [sys.executable, str(REPO / "scripts" / "train_jax.py"), "--preset", str(work / "preset")]
    cmd += ["--run-dir", str(work / "run"), "--train-csv", str(short), "--epochs", "1"]
    cmd += ["--batch-size", "8", "--sequence-length", str(SEQUENCE_LENGTH), "--devices", "cpu"]
    cmd += ["--num-devices", "1", "--valid-fraction", "0.25", "--no-tensorboard"]
    limit = {"max_rss_mb": args.max_rss_gb * 1024}
    _, train = run_child(cmd, work / "train.log", env=env, **limit)
    results = []
    for rows in args.infer_rows:
        progress(f"infer.py on {rows:,} test rows ...")
        cmd = [sys.executable, str(REPO / "scripts" / "infer.py"), "--run-dir", str(work / "run")]
        cmd += ["--test-csv", str(work / f"test-{rows}.csv"), "--output", str(work / "sub.csv")]
        cmd += ["--devices", "cpu", "--num-devices", "1", "--batch-size", "16"]
        cache = {"JAXPREF_CACHE": str(work / f"infer-cache-{rows}")}
        load_average = os.getloadavg()[0]
        _, ended = run_child(cmd, work / f"infer-{rows}.log", env=env | cache, **limit)
        results.append({"stage": "infer", "rows": rows, "load_1min_at_start": load_average} | ended)
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


def growth(results: list[dict], stage: str) -> str:
    """Ratios largest/smallest size of wall time and of stage memory (process peak for infer)."""
    pick = {r["rows"]: r for r in results if r.get("stage") == stage}
    if len(pick) < 2:
        return "-"
    a, b = pick[min(pick)], pick[max(pick)]
    key = "stage_mb" if "stage_mb" in a else "maxrss_mb"
    mem = f"{b[key] / a[key]:.1f}x" if a[key] > 1 else "-"
    return f"{min(pick):,} -> {max(pick):,}: {b['wall_s'] / a['wall_s']:.1f}x / {mem}"


def table_rows(results: list[dict]) -> list[dict]:
    """A row per stage (infer.py last): 'wall / peak RSS (+MB above the RSS before)' per size."""
    sizes = sorted({r["rows"] for r in results if "group" in r or r.get("stage") == "infer"})
    groups = {r["group"] for r in results if "group" in r}
    stages = [s for g in GROUP_STAGES if g in groups for s in GROUP_STAGES[g]]
    stages += ["infer"] if any(r.get("stage") == "infer" for r in results) else []
    return [
        {"stage": "infer.py" if s == "infer" else s}
        | {f"{n:,} rows": cell(results, s, n) for n in sizes}
        | {"growth: wall / MB": growth(results, s)}
        for s in stages
    ]


def main(argv: list[str] | None = None) -> int:
    parsed = parser(__doc__, work_dir=True)
    parsed.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 57477])
    parsed.add_argument("--test-rows", type=int, default=25000, help="rows of the test file")
    parsed.add_argument(
        "--infer-rows", type=int, nargs="*", default=[1000, 5000],
        help="first N test rows to run scripts/infer.py on (none: skip inference)",
    )  # fmt: skip
    parsed.add_argument("--groups", nargs="*", choices=GROUP_STAGES, default=list(GROUP_STAGES))
    parsed.add_argument("--batch-size", type=int, default=8, help="global batch for plan/feed")
    parsed.add_argument("--max-rss-gb", type=float, default=8.0, help="kill a stage above this")
    args = parse_args(parsed, argv)
    report, details = Report("fullsize", args.out, argv), {}
    with work_dir(args.work_dir, "fullsize-", keep=False) as work:
        progress("writing synthetic files ...")
        make_files(work, args.sizes, sorted({*args.infer_rows, args.test_rows}))
        env = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
        env["JAXPREF_CACHE"] = str(work / "infer-cache")
        tiny_preset(work / "preset", TINY)
        results = data_stages(args, work, env)
        if args.infer_rows:
            details["train_setup"], infer = inference(args, work, env)
            results += infer
    report.finish(table_rows(results), details | {"results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
