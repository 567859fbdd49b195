"""What the user waits for: one `scripts/train_jax.py` run timed from start to exit.

    python benchmarks/wallclock.py --out benchmarks/results/wallclock.json   # ~5 min on 2 CPUs

Trains the tiny DeBERTa-v3 preset of `run.py` (benchlib.TINY_DEBERTA) at 1,024 tokens on the first
300 arena rows (270 train / 30 validation) for 2 epochs in a subprocess, then reads the run's
train.log timestamps and summary.json: start-up before the first log line, set-up (tokenizing,
building, compiling for training), each whole epoch (validation and checkpoint saves included) with
its XLA compilations, the train-step rate of its last progress line, the time from the last epoch to
the summary (best weights restored, validation predicted, calibrated, files written) and from the
summary to the process's exit.
"""

from __future__ import annotations

import datetime
import json
import re
import sys
import time
from pathlib import Path

from benchlib import (
    CPU_CHILD_ENV,
    REPO,
    Report,
    parse_args,
    parser,
    progress,
    run_child,
    tiny_preset,
    work_dir,
)

EPOCH = re.compile(r"^(\d\d:\d\d:\d\d) epoch (\d+): .*\((\d+) s, (\d+) XLA compilations\)")
STEP = re.compile(r"^(\d\d:\d\d:\d\d) epoch (\d+)/\d+ step .* ([\d.]+) pairs/s, (\d+) tokens/s")
SUMMARY = re.compile(r"^(\d\d:\d\d:\d\d) best val_log_loss")
STAMP = re.compile(r"^(\d\d:\d\d:\d\d) ")


def clock(stamp: str, day: datetime.date) -> float:
    """Seconds since the epoch of an HH:MM:SS log stamp on `day` (runs here span minutes)."""
    moment = datetime.datetime.combine(day, datetime.time.fromisoformat(stamp))
    return moment.timestamp()


def read_log(log: Path, started: float) -> dict:
    """Stage durations in seconds from the timestamps of a train.log."""
    day = datetime.date.fromtimestamp(started)
    lines = log.read_text().splitlines()
    first = clock(STAMP.match(lines[0]).group(1), day)
    epochs, steps, summary = [], {}, None
    for line in lines:
        if match := EPOCH.match(line):
            at, number, seconds, compiles = match.groups()
            ended = clock(at, day)
            epochs.append(
                {"epoch": int(number), "logged_s": int(seconds), "compiles": int(compiles)}
                | {"ended_at": ended}
            )
        elif match := STEP.match(line):
            steps[int(match.group(2))] = float(match.group(3))
        elif match := SUMMARY.match(line):
            summary = clock(match.group(1), day)
    for epoch in epochs:
        epoch["last_progress_pairs_per_s"] = steps.get(epoch["epoch"])
    first_epoch_start = epochs[0]["ended_at"] - epochs[0]["logged_s"]
    return {
        "startup_s": first - started,
        "setup_s": first_epoch_start - first,
        "epochs": epochs,
        "last_epoch_to_summary_s": summary - epochs[-1]["ended_at"] if summary else None,
        "summary_at": summary,
    }


def train_csv(rows: int, work: Path) -> Path:
    """The first `rows` rows of the embedded arena sample as a CSV."""
    import pandas as pd

    from jaxpref.data import arena

    out = work / f"arena-{rows}.csv"
    pd.read_csv(arena.DEFAULT_TRAIN_CSV, nrows=rows).to_csv(out, index=False)
    return out


def run_training(args, preset: str, csv: Path, run_dir: Path) -> dict:
    """train_jax.py in a subprocess (this checkout's jaxpref, one CPU device), start to exit."""
    argv = [sys.executable, str(REPO / "scripts" / "train_jax.py"), "--preset", preset]
    argv += ["--train-csv", str(csv), "--run-dir", str(run_dir), "--devices", "cpu"]
    argv += ["--num-devices", "1", "--sequence-length", str(args.sequence_length)]
    argv += ["--epochs", str(args.epochs), "--attention", args.attention, "--log-every", "5"]
    started = time.time()
    _, ended = run_child(argv, run_dir.parent / "train_jax.log", env=CPU_CHILD_ENV)
    stopped = time.time()
    if "error" in ended:
        sys.exit(f"error: train_jax.py failed: {ended['error']}")
    stages = read_log(run_dir / "train.log", started)
    summary = json.loads((run_dir / "summary.json").read_text())
    return stages | {
        "wall_s": stopped - started,
        "summary_to_exit_s": stopped - stages.pop("summary_at"),
        "summary": summary,
        "argv": argv[1:],
    }


def table_rows(result: dict) -> list[dict]:
    rows = [
        ("start-up (imports, until the first log line)", result["startup_s"]),
        ("set-up (data, tokenizing, model, compile for training)", result["setup_s"]),
    ]
    for epoch in result["epochs"]:
        rate = epoch["last_progress_pairs_per_s"]
        stage = f"epoch {epoch['epoch']} (validation and checkpoints included): "
        stage += f"{epoch['compiles']} XLA compilations, last progress line {rate} pairs/s"
        rows.append((stage, epoch["logged_s"]))
    rows.append(("last epoch -> summary", result["last_epoch_to_summary_s"]))
    rows.append(("summary -> process exit", result["summary_to_exit_s"]))
    rows.append(("whole run, start to exit", result["wall_s"]))
    return [{"stage": stage, "seconds": None if s is None else round(s)} for stage, s in rows]


def main(argv: list[str] | None = None) -> int:
    parsed = parser(__doc__, work_dir=True)
    parsed.add_argument("--rows", type=int, default=300)
    parsed.add_argument("--epochs", type=int, default=2)
    parsed.add_argument("--sequence-length", type=int, default=1024)
    parsed.add_argument("--attention", default="keras_hub", help="train_jax.py --attention")
    args = parse_args(parsed, argv)
    report = Report("wallclock", args.out, argv)
    with work_dir(args.work_dir, "jaxpref-wallclock-") as work:
        progress("building the tiny preset ...")
        preset = tiny_preset(work / "tiny_deberta")
        csv = train_csv(args.rows, work)
        progress("training ...")
        result = run_training(args, preset, csv, work / "run")
    report.finish(table_rows(result), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
