"""The command-line contract: documented flags, and one-line errors instead of tracebacks."""

import pytest
from conftest import run_script

from jaxpref import cli

TRAIN_FLAGS = [
    "--devices", "--num-devices", "--preset", "--train-csv", "--run-dir", "--epochs",
    "--batch-size", "--sequence-length", "--learning-rate", "--lora-rank", "--valid-fraction",
    "--seed",
]  # fmt: skip
INFER_FLAGS = ["--run-dir", "--test-csv", "--output", "--batch-size", "--devices"]


@pytest.mark.parametrize(
    ("parser", "flags"), [(cli.train_parser, TRAIN_FLAGS), (cli.infer_parser, INFER_FLAGS)]
)
def test_help_documents_every_contract_flag(parser, flags):
    text = parser().format_help()
    for flag in flags:
        assert flag in text


def test_defaults_work_without_flags():
    args = cli.train_parser().parse_args([])
    assert args.preset == "deberta_v3_small_en" and args.sequence_length == 1024
    assert args.valid_fraction == 0.1 and args.lora_rank == 8
    cfg = cli.config_from_args(args)
    assert cfg.data.train_csv == "" and cfg.model.head == "symmetric" and cfg.run.calibrate
    assert cli.infer_parser().parse_args(["--run-dir", "r"]).test_csv.endswith("arena_test.csv")


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


def test_missing_run_dir_is_a_clear_error(tmp_path):
    result = run_script("infer.py", "--devices", "cpu", "--run-dir", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "config.json is missing" in result.stderr
