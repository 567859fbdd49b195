"""The benchmark harness (benchmarks/benchlib.py) and the helpers of the benchmark scripts.

In-process and fast: the child protocol with one small Python child, the result format, the
table, every committed results file (its rows rebuilt from its details by today's code), and
jaxpref's input recipe on a few rows of the tiny preset.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import attention  # noqa: E402
import benchlib  # noqa: E402
import fullsize  # noqa: E402
import gpu_check  # noqa: E402
import padding  # noqa: E402
import profile_step  # noqa: E402
import realsize  # noqa: E402
import run  # noqa: E402
import wallclock  # noqa: E402

RESULTS = sorted((BENCHMARKS / "results").glob("*.json"))
SERVING_CHILD = """
import sys
sys.path.insert(0, "benchmarks")
import benchlib
count = {"n": 0}
def train():
    count["n"] += 1
    return {"step": count["n"]}
benchlib.send({"note": "before ready"})
benchlib.serve({"ready": True}, {"train": train})
"""


def child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_worker_round_trip(tmp_path):
    """Messages in order, commands answered with their timing, unknown ones refused, clean exit."""
    worker = benchlib.Worker(child(SERVING_CHILD), tmp_path / "child.log")
    assert worker.receive() == {"note": "before ready"}
    assert worker.receive() == {"ready": True}
    first, second = worker.call("train"), worker.call("train")
    assert (first["step"], second["step"]) == (1, 2)
    assert first["wall_s"] >= 0 and first["cpu_s"] >= 0
    assert worker.call("eval") == {"error": "unknown command 'eval'"}
    ended = worker.close()
    assert ended["exit_status"] == 0 and "error" not in ended and ended["maxrss_mb"] > 1


def test_run_child_reports_a_failure_with_the_logs_tail(tmp_path):
    code = "import sys; print('BENCH {\"stage\": 1}'); print('noise'); sys.exit('bad input row 7')"
    messages, ended = benchlib.run_child(child(code), tmp_path / "child.log")
    assert messages == [{"stage": 1}]
    assert ended["exit_status"] == 1
    assert ended["error"] == "exit status 1: bad input row 7"


def test_worker_says_why_a_child_ended_before_answering(tmp_path):
    worker = benchlib.Worker(child("import sys; sys.exit('no devices')"), tmp_path / "child.log")
    assert worker.receive() == {"error": "exit status 1: no devices"}
    assert worker.call("train") == {"error": "exit status 1: no devices"}


def test_memory_watchdog_kills_a_child_over_the_limit(tmp_path):
    code = "import time; x = bytearray(400 * 2**20); time.sleep(60)"
    start = time.perf_counter()
    _, ended = benchlib.run_child(child(code), tmp_path / "child.log", max_rss_mb=100)
    assert time.perf_counter() - start < 30
    assert ended["exit_status"] == -9 and ended["error"].startswith("killed at ")


def test_child_main_calls_the_function_and_sends_what_it_returns(capsys):
    """`benchlib.py MODULE FUNCTION JSON` runs MODULE.FUNCTION(config): here json.loads."""
    benchlib.child_main(["json", "loads", json.dumps('{"pairs": 3}')])
    assert capsys.readouterr().out == 'BENCH {"pairs": 3}\n'


@pytest.mark.parametrize(
    ("value", "cell"),
    [(None, "-"), ("n/a", "n/a"), (1024, "1,024"), (4.5412, "4.54"), (0.7561, "0.756"),
     (3456.2, "3,456"), (0.0633, "0.0633"), (12.48, "12.5"), (0.0, "0.0"), (True, "True")],
)  # fmt: skip
def test_cells_keep_three_significant_digits(value, cell):
    assert benchlib.fmt(value) == cell


def test_markdown_columns_are_the_keys_in_first_seen_order():
    rows = [{"case": "a", "pairs/s": 4.54}, {"case": "b", "error": "exit status 1"}]
    assert benchlib.markdown(rows).splitlines() == [
        "| case | pairs/s | error |",
        "|---|---|---|",
        "| a | 4.54 | - |",
        "| b | - | exit status 1 |",
    ]


def test_report_writes_the_schema_and_show_prints_it(tmp_path, capsys):
    out = tmp_path / "deep" / "padding.json"
    report = benchlib.Report("padding", out, ["--batch-sizes", "8", "--out", str(out)])
    report.save([{"batch": 8}], {"partial": True}, ["cut"])
    assert json.loads(out.read_text())["complete"] is False
    report.finish([{"batch": 8, "pad eff": 0.7561}], {"rows": [1]}, ["a note"])
    data = json.loads(out.read_text())
    assert list(data) == [
        "benchmark", "command", "git_commit", "date", "machine", "load_average", "wall_s",
        "complete", "rows", "notes", "details",
    ]  # fmt: skip
    assert data["command"] == f"python benchmarks/padding.py --batch-sizes 8 --out {out}"
    assert data["complete"] and data["rows"] == [{"batch": 8, "pad eff": 0.7561}]
    assert len(data["git_commit"]) >= 40 and data["machine"]["nproc"] >= 1
    printed = capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        benchlib.parse_args(benchlib.parser("a benchmark"), ["--show", str(out)])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == printed.removesuffix(f"wrote {out}\n")
    assert "| 8 | 0.756 |" in printed and "- a note" in printed


REBUILD = {
    "run": lambda d: run.summary(d["cases"])[0],
    "realsize": lambda d: realsize.summary(d)[0],
    "fullsize": lambda d: fullsize.table_rows(d["results"]),
    "gpu_check": lambda d: [gpu_check.table_row(r) for r in d["results"]],
    "padding": lambda d: [padding.table_row(r) for r in d["rows"]],
    "profile_step": lambda d: profile_step.table_rows(d["runs"]),
    "attention": lambda d: attention.table_rows(
        d["cases"], [k for k in d["cases"][0] if k not in ("batch", "length")]
    ),
    "wallclock": wallclock.table_rows,
}


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_results_files_share_the_schema_and_their_rows_follow_from_the_details(path, capsys):
    data = json.loads(path.read_text())
    assert {"benchmark", "command", "git_commit", "machine", "rows", "details"} <= set(data)
    assert data["rows"] == REBUILD[data["benchmark"]](data["details"])
    benchlib.print_report(data)
    assert capsys.readouterr().out.count("\n") >= len(data["rows"]) + 3


@pytest.mark.parametrize(("length", "measured"), [(512, 0.797), (1024, 0.756)])
def test_synthetic_lengths_reproduce_jaxprefs_padding(length, measured):
    """Bucketed batches of 8 synthetic pairs pad about as much as jaxpref's plan of the sample."""
    sides = gpu_check.synthetic_lengths(length, 1000)
    assert sides.min() >= 2 and sides.max() <= length
    buckets = gpu_check.LENGTHS["buckets"][str(length)]
    layout = gpu_check.plan(sides, 8, buckets)
    assert all(size >= sides[rows].max() for rows, size in layout)
    assert len({int(r) for rows, _ in layout for r in rows}) == 1000
    real = sum(int(sides[rows].sum()) for rows, _ in layout)
    computed = sum(2 * 8 * size for _, size in layout)
    assert abs(real / computed - measured) < 0.02


def test_arena_inputs_run_jaxprefs_recipe(tiny_preset):
    """The benchmarks' one door to jaxpref.inputs: tokens, plans, batches, padding layouts."""
    from jaxpref.data import text
    from jaxpref.models import backbones

    frame = benchlib.load_frame(40)
    preprocessor = backbones.load_preprocessor(str(tiny_preset), 128)
    clock = benchlib.Stopwatch()
    inputs = benchlib.ArenaInputs.tokenize(
        text.format_pairs(frame), preprocessor, ("token_ids", "padding_mask"), around=clock
    )
    assert inputs.buckets == (64, 128) and clock.wall > 0
    assert inputs.tokens.lengths.shape == (40, 2) and inputs.tokens.lengths.max() <= 128
    plan = inputs.plan(8, shuffle=True, swap=True)
    assert sorted(np.concatenate([b.rows for b in plan])) == list(range(40))
    inputs.add_side_features()
    x, y, weights = next(iter(inputs.dataset([plan], frame["label"].to_numpy())))
    assert x["token_ids"].shape == (8, 2, plan[0].length) and x["side_features"].shape[:2] == (8, 2)
    features = inputs.features(plan[0])
    assert features["padding_mask"].sum() == inputs.tokens.lengths[plan[0].rows].sum()
    layouts = padding.padding_analysis(inputs, 8, 128)
    assert layouts["pair_buckets"]["efficiency"] == pytest.approx(inputs.padding_efficiency(plan))
    assert layouts["pair_buckets"]["efficiency"] <= layouts["pair_bound"] <= 1
    assert inputs.take(np.arange(5)).tokens.lengths.shape == (5, 2)


def test_op_classes_of_xla_and_tensorflow_names():
    names = {
        "ynn_fusion.229": "matmul",
        "_MklBatchMatMulV2": "matmul",
        "gather.12": "gather/scatter",
        "UnsortedSegmentSum": "gather/scatter",
        "rng-bit-generator.3": "rng (dropout)",
        "StatelessRandomUniformV2": "rng (dropout)",
        "transpose.4": "copy/transpose",
        "multiply_add_fusion.83": "elementwise fusion",
        "AssignAddVariableOp": "variable updates",
        "while.343": "other",
    }
    assert {name: profile_step.op_class(name) for name in names} == names
    assert profile_step.SKIP.search("Process") and not profile_step.SKIP.search("fusion.1")


def test_read_log_stage_durations(tmp_path):
    started = time.mktime(time.strptime("2026-11-30 06:37:30", "%Y-%m-%d %H:%M:%S"))
    log = tmp_path / "train.log"
    log.write_text(
        "06:37:40 devices: 1 x cpu\n"
        "06:38:30 epoch 1/2 step 5/9: loss 1.1, lr 1e-4, 2.5 pairs/s, 1800 tokens/s, ETA 1m\n"
        "06:38:47 epoch 1: loss=1.2 val_log_loss=1.19 (36 s, 8 XLA compilations)\n"
        "06:39:05 epoch 2/2 step 9/9: loss 1.0, lr 1e-4, 4.0 pairs/s, 3000 tokens/s, ETA 0s\n"
        "06:39:09 epoch 2: loss=1.1 val_log_loss=1.16 (20 s, 1 XLA compilations)\n"
        "06:39:27 best val_log_loss 1.1594 at epoch 2 (class prior 1.0961)\n"
    )
    stages = wallclock.read_log(log, started)
    assert stages["startup_s"] == 10
    assert stages["setup_s"] == 67 - 36  # first log line to the first epoch's start
    assert [e["compiles"] for e in stages["epochs"]] == [8, 1]
    assert [e["last_progress_pairs_per_s"] for e in stages["epochs"]] == [2.5, 4.0]
    assert stages["last_epoch_to_summary_s"] == 18
    assert np.isclose(stages["summary_at"] - started, 117)
