"""Soft labels: the teacher file is checked, targets blend one-hot and teacher, swaps mirror them,
and a training run takes them end to end."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
from conftest import run_script, tiny_run_args

from jaxpref import cli
from jaxpref.config import ConfigError, TrainConfig
from jaxpref.data.arena import LABEL_COLUMNS, DataError
from jaxpref.data.probabilities import read_probabilities
from jaxpref.inputs import batching, feeding, packers
from jaxpref.inputs.featurize import FeaturizedRows
from jaxpref.inputs.token_store import TokenizedPairs
from jaxpref.models import backbones
from jaxpref.training import distillation

HEADER = "id,winner_model_a,winner_model_b,winner_tie\n"


def write(path, text):
    path.write_text(text)
    return path


def test_probability_file_is_read_in_order_and_rescaled(tmp_path):
    path = write(tmp_path / "t.csv", HEADER + "b,0.2,0.3,0.5\na,0.5,0.5,0.001\n")
    teacher = read_probabilities(path)
    assert list(teacher.ids) == ["b", "a"]
    np.testing.assert_allclose(teacher.probs[1], np.array([0.5, 0.5, 0.001]) / 1.001)
    np.testing.assert_allclose(teacher.aligned(["a", "b"], "x.csv")[1], [0.2, 0.3, 0.5])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,winner_model_a,winner_tie\n1,0.5,0.5\n", "line 1: missing column(s) winner_model_b"),
        (HEADER + "1,0.2,x,0.8\n", "line 2 (id 1), column 'winner_model_b': 'x' is not a number"),
        (HEADER + "1,0.2,0.8\n", "line 2 (id 1), column 'winner_tie': missing value"),
        (HEADER + "1,.5,.5,0\n2,-.1,.6,.5\n", "line 3 (id 2), column 'winner_model_a': '-.1'"),
        (HEADER + "1,0.5,0.5,0.5\n", "line 2 (id 1), columns 'winner_model_a', 'winner_model_b', "
         "'winner_tie': probabilities sum to 1.5, not 1 (1 such row(s))"),
        (HEADER + "1,1,0,0\n1,0,1,0\n", "line 3 (id 1), column 'id': id repeats line 2"),
        (HEADER + ",1,0,0\n", "line 2, column 'id': empty id"),
        (HEADER, "line 1: header line but no data rows"),
    ],
)  # fmt: skip
def test_bad_probability_files_are_one_line_errors_naming_line_and_column(tmp_path, text, message):
    path = write(tmp_path / "t.csv", text)
    with pytest.raises(DataError) as caught:
        read_probabilities(path)
    assert str(caught.value).startswith(f"{path}, {message}")
    assert "\n" not in str(caught.value)


def test_ids_differing_from_the_expected_rows_are_counted(tmp_path):
    teacher = read_probabilities(write(tmp_path / "t.csv", HEADER + "a,1,0,0\nz,0,1,0\n"))
    with pytest.raises(DataError, match=r"ids differ: 2 id\(s\) of d.csv missing, 1 not in it"):
        teacher.aligned(["a", "b", "c"], "d.csv")


def test_soft_targets_blend_teacher_and_one_hot_only_where_the_teacher_has_a_row(tmp_path):
    teacher = read_probabilities(write(tmp_path / "t.csv", HEADER + "r2,0.2,0.2,0.6\n"))
    targets = distillation.soft_targets(["r1", "r2"], np.array([0, 1]), teacher, 0.25)
    assert targets.dtype == np.float32
    np.testing.assert_allclose(targets[0], [1, 0, 0])
    np.testing.assert_allclose(targets[1], [0.05, 0.8, 0.15], rtol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1, rtol=1e-6)


def test_a_tie_share_moves_part_of_the_chosen_rows_targets_to_a_tie():
    targets = distillation.with_tie_share(np.array([0, 1, 2]), np.array([1, 2]), 0.3)
    assert targets.dtype == np.float32
    np.testing.assert_allclose(targets, [[1, 0, 0], [0, 0.7, 0.3], [0, 0, 1]], rtol=1e-6)
    soft = np.array([[0.5, 0.3, 0.2], [0.6, 0.2, 0.2]], np.float32)
    np.testing.assert_allclose(
        distillation.with_tie_share(soft, np.array([0]), 0.5), [[0.25, 0.15, 0.6], soft[1]]
    )


def test_teacher_coverage_is_logged_and_a_teacher_of_other_rows_refused(tmp_path, caplog):
    path = write(tmp_path / "t.csv", HEADER + "a,1,0,0\nb,0,1,0\nv,0,0,1\n")
    with caplog.at_level(logging.INFO, logger="jaxpref"):
        distillation.load_teacher(path, ["a", "b", "c"])
    assert "covers 2 of 3 training rows; 1 of its ids match no training row" in caplog.text
    with pytest.raises(DataError, match="no id matches a training row"):
        distillation.load_teacher(path, ["x", "y"])


def test_swapped_rows_get_mirrored_soft_targets(tiny_preset):
    n, length = 8, 16
    tokens = TokenizedPairs.from_padded(
        np.arange(n * 2 * length, dtype=np.int32).reshape(n, 2, length),
        np.zeros((n, 2, length), np.int8),
        np.full((n, 2), length, np.int32),
        pad_id=0,
    )
    targets = np.random.default_rng(0).dirichlet(np.ones(3), size=n).astype(np.float32)
    plan = batching.plan_batches(tokens.row_lengths(), 4, (length,), True, 0, 0, swap=True)
    flips = np.concatenate([b.swap for b in plan])
    assert 0 < flips.sum() < n
    packer = packers.PairPacker(
        backbones.load_preprocessor(str(tiny_preset), length), ("token_ids",)
    )
    rows = FeaturizedRows(packer, tokens)
    for (x, y, _), b in zip(feeding.make_dataset(rows, [plan], targets), plan, strict=True):
        for i, (row, flip) in enumerate(zip(b.rows, b.swap, strict=True)):
            expected = targets[row][[1, 0, 2]] if flip else targets[row]
            np.testing.assert_allclose(y.numpy()[i], expected)
            assert x["token_ids"].numpy()[i, 0, 0] == tokens.token_ids[row, int(flip), 0]


def test_soft_label_settings_are_config_fields_with_flags():
    args = cli.train_parser().parse_args(["--soft-labels", "t.csv", "--soft-label-weight", "0.3"])
    cfg = cli.config_from_args(args)
    assert cfg.data.soft_labels == "t.csv" and cfg.optim.soft_label_weight == 0.3
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig().optim.soft_label_weight == 0.5 and TrainConfig().data.soft_labels == ""
    with pytest.raises(ConfigError, match="--soft-label-weight 1.5: must be at most 1"):
        TrainConfig().replace(soft_label_weight=1.5).validate()


@pytest.mark.slow
def test_training_on_soft_labels_records_them_and_trains(tiny_preset, small_csv, tmp_path):
    frame = pd.read_csv(small_csv, dtype=str)
    teacher = pd.DataFrame({"id": frame["id"].head(150)})
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=len(teacher))
    teacher[list(LABEL_COLUMNS)] = probs
    teacher_csv = tmp_path / "teacher.csv"
    teacher.to_csv(teacher_csv, index=False)
    run_dir = tmp_path / "run"
    args = tiny_run_args(tiny_preset, small_csv, run_dir)
    result = run_script(
        "train_jax.py", *args, "--epochs", "1", "--soft-labels", str(teacher_csv),
        "--soft-label-weight", "0.7", "--no-tensorboard",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["data"]["soft_labels"] == str(teacher_csv)
    assert saved["optim"]["soft_label_weight"] == 0.7
    log = (run_dir / "train.log").read_text()
    split = pd.read_csv(run_dir / "split.csv", dtype=str)
    covered = split[split["split"] == "train"]["id"].isin(set(teacher["id"])).sum()
    assert f"covers {covered} of {(split['split'] == 'train').sum()} training rows" in log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert np.isfinite(summary["best_val_log_loss"]) and summary["train_rows"] == 216
