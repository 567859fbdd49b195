"""What the user waits for: one `scripts/train_jax.py` run timed from start to exit.

    python benchmarks/wallclock.py --out benchmarks/results/wallclock.json   # ~5 min on 2 CPUs

Trains the tiny DeBERTa-v3 preset of `run.py` at 1,024 tokens on the first 300 arena rows
(270 train / 30 validation) for 2 epochs in a subprocess, then reads the run's train.log
timestamps and summary.json: start-up before the first log line, set-up (tokenizing, building,
compiling for training), each whole epoch (validation and checkpoint saves included) with its XLA
compilations, the train-step rate of its last progress line, the time from the last epoch to the
summary (best weights restored, validation predicted, calibrated, files written) and from the
summary to the process's exit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from realsize import worker_env
from run import REPO, build_tiny_preset, markdown, progress, work_dir

EPOCH = re.compile(r"^(\d\d:\d\d:\d\d) epoch (\d+): .*\((\d+) s, (\d+) XLA compilations\)")
STEP = re.compile(r"^(\d\d:\d\d:\d\d) epoch (\d+)/\d+ step .* ([\d.]+) pairs/s, (\d+) tokens/s")
SUMMARY = re.compile(r"^(\d\d:\d\d:\d\d) best val_log_loss")
STAMP = re.compile(r"^(\d\d:\d\d:\d\d) ")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--sequence-length", type=int, default=1024)
    parser.add_argument("--attention", default="keras_hub", help="train_jax.py --attention")
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--out", type=Path, help="JSON results file")
    return parser.parse_args(argv)


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
    """train_jax.py in a subprocess (this worktree's jaxpref, one CPU device), start to exit."""
    argv = [sys.executable, str(REPO / "scripts" / "train_jax.py"), "--preset", preset]
    argv += ["--train-csv", str(csv), "--run-dir", str(run_dir), "--devices", "cpu"]
    argv += ["--num-devices", "1", "--sequence-length", str(args.sequence_length)]
    argv += ["--epochs", str(args.epochs), "--attention", args.attention, "--log-every", "5"]
    started = time.time()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=worker_env())
    ended = time.time()
    if proc.returncode:
        sys.exit(f"error: train_jax.py failed: {proc.stderr.strip()[-500:]}")
    stages = read_log(run_dir / "train.log", started)
    summary = json.loads((run_dir / "summary.json").read_text())
    return stages | {
        "wall_s": ended - started,
        "summary_to_exit_s": ended - stages.pop("summary_at"),
        "summary": summary,
        "argv": argv[1:],
    }


def table(result: dict) -> str:
    rows = [
        ["start-up (imports, until the first log line)", f"{result['startup_s']:.0f}"],
        ["set-up (data, tokenizing, model, compile for training)", f"{result['setup_s']:.0f}"],
    ]
    for epoch in result["epochs"]:
        rate = epoch["last_progress_pairs_per_s"]
        rows.append(
            [
                f"epoch {epoch['epoch']} (validation and checkpoints included): "
                f"{epoch['compiles']} XLA compilations, last progress line {rate} pairs/s",
                str(epoch["logged_s"]),
            ]
        )
    rows.append(["last epoch -> summary", f"{result['last_epoch_to_summary_s']:.0f}"])
    rows.append(["summary -> process exit", f"{result['summary_to_exit_s']:.0f}"])
    rows.append(["whole run, start to exit", f"{result['wall_s']:.0f}"])
    return markdown(rows, ["stage", "seconds"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = work_dir(args.work_dir, "jaxpref-wallclock-")
    progress("building the tiny preset ...")
    preset = build_tiny_preset(work)
    csv = train_csv(args.rows, work)
    progress("training ...")
    load_before = os.getloadavg()
    result = run_training(args, preset, csv, work / "run")
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    print(table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
