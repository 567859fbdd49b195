"""The command-line contract: documented flags, and one-line errors instead of tracebacks."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_script, script_environment

from jaxpref import cli
from jaxpref.config import ConfigError

TRAIN_FLAGS = [
    "--devices", "--num-devices", "--preset", "--train-file", "--valid-file", "--run-dir",
    "--epochs", "--batch-size", "--sequence-length", "--learning-rate", "--lora-rank",
    "--valid-fraction", "--seed",
]  # fmt: skip
INFER_FLAGS = [
    "--run-dir", "--test-file", "--output", "--batch-size", "--devices", "--quantize",
    "--model-parallel",
]  # fmt: skip


def help_entries(parser) -> dict[str, str]:
    """{flag: its help text} as --help prints them (entries only, not flags named in prose)."""
    entries, flag = {}, None
    for line in parser.format_help().splitlines():
        match = re.match(r"  (--[\w-]+)((?: [A-Z_\[\].]+)*)\s*(.*)$", line)
        if match:
            flag = match[1]
            entries[flag] = match[3]
        elif flag and line.startswith(" " * 20):
            entries[flag] += " " + line.strip()
        else:
            flag = None
    return entries


@pytest.mark.parametrize(
    ("parser", "flags"), [(cli.train_parser, TRAIN_FLAGS), (cli.infer_parser, INFER_FLAGS)]
)
def test_help_documents_every_contract_flag(parser, flags):
    entries = help_entries(parser())
    for flag in flags:
        assert len(entries.get(flag, "")) > 10, (flag, entries.get(flag))


def test_defaults_work_without_flags():
    cfg = cli.config_from_args(cli.train_parser().parse_args([]))
    assert cfg.model.preset == "deberta_v3_small_en" and cfg.data.sequence_length == 1024
    assert cfg.data.split_fraction() == 0.1 and cfg.model.lora_rank == 8
    assert cfg.data.train_file == "" and cfg.model.head == "symmetric" and cfg.run.calibrate
    infer = cli.infer_parser().parse_args(["--run-dir", "r"])
    assert infer.test_file.endswith("arena_test.csv") and infer.precision == "auto"
    assert infer.quantize is None and infer.model_parallel is None  # None: the run's own


@pytest.mark.parametrize(
    ("command", "earlier", "flag", "dest"),
    [("train", "--train-csv", "--train-file", "train_file"),
     ("infer", "--test-csv", "--test-file", "test_file"),
     ("evaluate", "--csv", "--file", "file")],
)  # fmt: skip
def test_earlier_flag_names_still_work_and_are_shown(command, earlier, flag, dest):
    parser = cli.command_parser(command)
    required = ["--run-dir", "r"] if command != "train" else []
    assert getattr(parser.parse_args([*required, earlier, "x.csv"]), dest) == "x.csv"
    assert f"{flag} {dest.upper()}, {earlier} {dest.upper()}" in parser.format_help()
    assert f"{earlier}: its earlier name" in " ".join(help_entries(parser)[flag].split())


def test_bad_csv_is_one_clear_line_and_exit_2(tmp_path):
    bad = tmp_path / "train.csv"
    bad.write_text(
        "id,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie\n"
        '1,"[""hi""]","[""a""]","[""b""]",1,0,0\n'
        '2,"[""hi""","[""a""]","[""b""]",0,1,0\n'
    )
    result = run_script(
        "train_jax.py", "--devices", "cpu", "--train-csv", str(bad), "--run-dir",
        str(tmp_path / "run"),
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"error: {bad}, line 3" in result.stderr and "'prompt'" in result.stderr


def test_uneven_batch_is_a_clear_error(tmp_path):
    result = run_script(
        "train_jax.py", "--devices", "cpu", "--num-devices", "4", "--batch-size", "6",
        "--run-dir", str(tmp_path / "run"),
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--batch-size 6 does not split evenly over 4 devices" in result.stderr


# Runs `jaxpref ARGS...` and prints which frameworks it loaded (stdout), exiting with its code.
FRAMEWORKS_LOADED = """
import sys
from jaxpref.cli import main
code = main(sys.argv[1:])
print(sorted(name for name in ("jax", "keras", "tensorflow") if name in sys.modules))
sys.exit(code)
"""
MISSING_RUN = "{tmp}/none/config.json is missing; is this the run directory of a finished training?"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["infer", "--run-dir", "{tmp}/none"], MISSING_RUN),
        (["export", "--run-dir", "{tmp}/none", "--out", "{tmp}/bundle"], MISSING_RUN),
        (["evaluate", "--run-dir", "{tmp}/none"], MISSING_RUN),
        (["infer", "--run-dir", "{fixture}", "--test-csv", "{tmp}/test.csv"],
         "{tmp}/test.csv: file not found"),
        (["train", "--run-dir", "{tmp}/file/run"], "cannot write the run directory {tmp}/file/run"),
        (["train", "--preset", "{tmp}/none"], "--preset {tmp}/none: no such directory"),
        (["train", "--resume", "--run-dir", "{tmp}/none"], "--resume needs --run-dir of an"),
        (["train", "--epochs", "0"], "--epochs 0: must be at least 1"),
        (["train", "--train-file", "{tmp}/none.jsonl"], "{tmp}/none.jsonl: file not found"),
        (["train", "--valid-file", "{tmp}"], "{tmp}: neither a datasets save_to_disk directory"),
        (["train", "--valid-file", "{tmp}/file", "--valid-fraction", "0.2"],
         "--valid-fraction 0.2: not with --valid-file {tmp}/file, whose rows are the validation"),
        (["evaluate", "--run-dir", "{fixture}", "--file", "{tmp}/none"],
         "{tmp}/none: file not found"),
    ],
)  # fmt: skip
def test_path_and_flag_errors_come_before_any_framework_loads(argv, message, tmp_path):
    """A wrong path or flag is one `error:` line in about a second: no JAX, Keras or
    TensorFlow is imported first (they take 7-14 s to load)."""
    (tmp_path / "file").write_text("not a directory")
    fixture = REPO / "tests" / "fixtures" / "format-v1" / "run"
    argv = [a.format(tmp=tmp_path, fixture=fixture) for a in argv]
    result = subprocess.run(
        [sys.executable, "-c", FRAMEWORKS_LOADED, *argv], capture_output=True, text=True,
        env=script_environment(), cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message.format(tmp=tmp_path) in result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_config_file_round_trips_a_runs_config_and_flags_override_it(tmp_path):
    from jaxpref.config import TrainConfig

    saved = TrainConfig().replace(
        run_dir="/runs/a", train_csv="/data/train.csv", lora_rank=4, learning_rate=1e-3,
        precision="float32", num_devices=2, head="concat", side_features=False,
    )  # fmt: skip
    saved.to_json(tmp_path / "config.json")
    args = cli.train_parser().parse_args(["--config", str(tmp_path / "config.json")])
    assert cli.config_from_args(args) == saved
    args = cli.train_parser().parse_args(
        ["--config", str(tmp_path / "config.json"), "--lora-rank", "2", "--no-calibrate"]
    )
    assert cli.config_from_args(args) == saved.replace(lora_rank=2, calibrate=False)
    flat = tmp_path / "flat.yaml"
    flat.write_text("lora_rank: 16\nmodel:\n  dropout: 0.3\n")
    args = cli.train_parser().parse_args(["--config", str(flat)])
    cfg = cli.config_from_args(args)
    assert (cfg.model.lora_rank, cfg.model.dropout, cfg.optim.epochs) == (16, 0.3, 2)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("lora_rnak: 4\n", "unknown setting(s) lora_rnak"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("epochs: [1\n", "not valid YAML"),
        ("epochs: 0\n", "--epochs 0: must be at least 1"),
    ],
)
def test_bad_config_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    args = cli.train_parser().parse_args(["--config", str(path)])
    with pytest.raises(ConfigError, match=re.escape(message)):
        cli.config_from_args(args)


def test_help_states_each_default_once():
    for parser in (cli.train_parser, cli.infer_parser, cli.evaluate_parser, cli.crossval_parser):
        text = " ".join(parser().format_help().split())
        for line in text.split(" --"):
            assert line.count("(default:") <= 1, line
    train = " ".join(cli.train_parser().format_help().split())
    assert "--epochs EPOCHS training epochs (default: 2)" in train
    assert "(default: none)" in train and "(default: )" not in train


def test_env_prints_what_a_bug_report_needs():
    """`jaxpref env` (the console script) prints env.json's record, nothing on stderr."""
    import jax
    import keras

    script = Path(sys.executable).parent / "jaxpref"
    result = subprocess.run(
        [str(script), "env", "--devices", "cpu", "--num-devices", "2"],
        capture_output=True, text=True, env=script_environment(), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result.stderr
    record = json.loads(result.stdout)
    assert record["devices"] == {"platform": "cpu", "kind": "cpu", "count": 2, "processes": 1}
    assert record["packages"]["jax"] == jax.__version__
    assert record["packages"]["keras"] == keras.__version__
    assert record["command"] == ["jaxpref", "env", "--devices", "cpu", "--num-devices", "2"]
    assert record["variables"]["KERAS_BACKEND"] == "jax"
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    assert record["git_commit"] and record["git_commit"].split("+")[0] == head  # a checkout
