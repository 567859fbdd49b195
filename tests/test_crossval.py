import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_script, tiny_run_args

from jaxpref.config import TrainConfig
from jaxpref.data import arena, probabilities, splitting
from jaxpref.data.probabilities import read_probabilities
from jaxpref.jobs import crossval
from jaxpref.rundir import RunDir
from jaxpref.scoring import metrics


def test_folds_cover_every_row_once_and_never_split_a_prompt():
    frame = arena.read_arena_csv(arena.DEFAULT_TRAIN_CSV, labelled=True)
    folds = splitting.fold_indices(frame, 5, seed=0)
    valid = np.concatenate([v for _, v in folds])
    assert sorted(valid.tolist()) == list(range(len(frame)))
    groups = splitting.prompt_groups(frame)
    for train_rows, valid_rows in folds:
        assert not set(groups[train_rows]) & set(groups[valid_rows])
        assert len(train_rows) + len(valid_rows) == len(frame)
    with pytest.raises(ValueError, match="at least 2"):
        splitting.fold_indices(frame, 1, seed=0)


def test_a_train_fraction_keeps_the_validation_rows_and_nests_the_training_subsets():
    frame = arena.read_arena_csv(arena.DEFAULT_TRAIN_CSV, labelled=True)
    full = splitting.fold_indices(frame, 3, seed=0)
    half = splitting.fold_indices(frame, 3, seed=0, train_fraction=0.5)
    quarter = splitting.fold_indices(frame, 3, seed=0, train_fraction=0.25)
    for (all_train, valid), (half_train, half_valid), (quarter_train, _) in zip(
        full, half, quarter, strict=True
    ):
        np.testing.assert_array_equal(valid, half_valid)
        assert len(half_train) == round(len(all_train) / 2)
        assert set(quarter_train) < set(half_train) < set(all_train)
    with pytest.raises(ValueError, match="train-fraction"):
        splitting.fold_indices(frame, 3, seed=0, train_fraction=0)


def test_epoch_predictions_join_the_folds_for_the_epochs_every_fold_recorded(small_csv, tmp_path):
    frame = arena.read_arena_csv(small_csv, labelled=True)
    splits = splitting.fold_indices(frame, 2, seed=0)
    rng = np.random.default_rng(1)
    expected = [rng.dirichlet(np.ones(3), len(frame)) for _ in range(2)]
    for fold, (_, valid_rows) in enumerate(splits):
        paths = RunDir(tmp_path / f"fold{fold}")
        (paths.root / "validation").mkdir(parents=True)
        for epoch in (1, 2) if fold == 0 else (1,):  # fold 1 stopped before its epoch 2
            rows = rng.permutation(valid_rows)
            probabilities.write_submission(
                frame["id"].iloc[rows], expected[epoch - 1][rows], paths.epoch_predictions(epoch)
            )
    epochs = crossval.epoch_predictions(tmp_path, frame, splits)
    assert len(epochs) == 1
    np.testing.assert_allclose(epochs[0], expected[0], rtol=1e-12)


def test_report_of_the_fold_runs_keeps_their_out_of_fold_predictions(small_csv, tmp_path):
    cfg = TrainConfig().replace(run_dir=str(tmp_path), train_csv=str(small_csv), seed=3)
    frame = arena.read_arena_csv(small_csv, labelled=True)
    rng = np.random.default_rng(0)
    expected = np.full((len(frame), 3), np.nan)
    uniform = np.full((len(frame), 3), 1 / 3)
    splits = splitting.fold_indices(frame, 2, seed=3)
    for fold, (_, valid_rows) in enumerate(splits):
        paths = RunDir(tmp_path / f"fold{fold}")
        paths.root.mkdir()
        expected[valid_rows] = rng.dirichlet(np.ones(3), len(valid_rows))
        shuffled = rng.permutation(valid_rows)  # a fold's file may list its rows in any order
        probabilities.write_submission(
            frame["id"].iloc[shuffled], expected[shuffled], paths.valid_predictions
        )
        paths.epoch_predictions(1).parent.mkdir()
        probabilities.write_submission(
            frame["id"].iloc[valid_rows], uniform[valid_rows], paths.epoch_predictions(1)
        )
    result = crossval.write_report(cfg, 2)
    oof = read_probabilities(tmp_path / probabilities.OOF_FILE)
    assert list(oof.ids) == list(frame["id"])
    np.testing.assert_allclose(oof.probs, expected, rtol=1e-12)
    model_log_loss = metrics.log_loss(expected, frame["label"].to_numpy())
    assert result["scores"]["model"]["log_loss"] == pytest.approx(model_log_loss)
    written = json.loads((tmp_path / "cv.json").read_text())
    assert written["rows"] == 240 and written["train_rows"] == [len(t) for t, _ in splits]
    assert result["epoch_log_loss"] == [pytest.approx(np.log(3))] and (tmp_path / "cv.md").exists()
    epoch_oof = read_probabilities(tmp_path / crossval.epoch_oof_file(1))
    np.testing.assert_allclose(epoch_oof.probs, uniform)
    assert "epoch 1 − tfidf_length_logreg" in (tmp_path / "cv.md").read_text()


@pytest.mark.slow
def test_two_fold_cross_validation_scores_every_row_beside_the_baselines(
    tiny_preset, small_csv, tmp_path
):
    args = tiny_run_args(tiny_preset, small_csv, tmp_path / "cv")
    result = run_script(
        "cross_validate.py", *args, "--epochs", "1", "--folds", "2", "--train-fraction", "0.5",
        "--validations-per-epoch", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert report["rows"] == 240 and report["folds"] == 2
    assert set(report["scores"]) == {"model", "class_prior", "length_logreg", "tfidf_length_logreg"}
    assert all(np.isfinite(s["log_loss"]) for s in report["scores"].values())
    for fold in range(2):
        assert (tmp_path / "cv" / f"fold{fold}" / "valid_predictions.csv").exists()
    assert list(read_probabilities(tmp_path / "cv" / probabilities.OOF_FILE).ids) == list(
        arena.read_arena_csv(small_csv, labelled=True)["id"]
    )
    histories = [pd.read_csv(tmp_path / "cv" / f"fold{f}" / "history.csv") for f in range(2)]
    assert [h["epoch"].tolist() for h in histories] == [[0.5, 1.0]] * 2
    assert report["epochs"] == [0.5, 1]
    # the same point's out-of-fold log loss, as each fold's history saw it
    sizes = pd.read_csv(tmp_path / "cv" / "fold0" / "split.csv")["split"].value_counts()
    assert sizes["train"] == report["train_rows"][0] == round((240 - sizes["valid"]) / 2)
    weights = [sizes["valid"], 240 - sizes["valid"]]
    for point in range(2):
        valid_log_losses = [h["val_log_loss"][point] for h in histories]
        expected = np.average(valid_log_losses, weights=weights)
        assert report["epoch_log_loss"][point] == pytest.approx(expected)
    assert (tmp_path / "cv" / crossval.epoch_oof_file(0.5)).name == "oof-epoch0.5.csv"
    assert (tmp_path / "cv" / "oof-epoch0.5.csv").exists()
    text = (tmp_path / "cv" / "cv.md").read_text()
    assert "| model |" in text and "model − tfidf_length_logreg" in text


def test_each_fold_reads_its_own_teacher_where_the_path_names_the_fold(tmp_path):
    cfg = TrainConfig().replace(soft_labels="teachers/fold{fold}/oof.csv")
    runs = [crossval.fold_config(cfg, tmp_path, fold) for fold in range(2)]
    assert [c.data.soft_labels for c in runs] == [
        "teachers/fold0/oof.csv",
        "teachers/fold1/oof.csv",
    ]
    assert [c.run.run_dir for c in runs] == [str(tmp_path / "fold0"), str(tmp_path / "fold1")]
    shared = crossval.fold_config(cfg.replace(soft_labels="oof.csv"), tmp_path, 1)
    assert shared.data.soft_labels == "oof.csv"
