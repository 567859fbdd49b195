"""K-fold cross-validation grouped by prompt: out-of-fold log loss beside the baselines.

One validation split of 100 rows has a log-loss standard error near 0.03, too noisy to compare
configurations; K folds score every row once. Each fold trains a full run (its own run
directory under the root) and the baselines are refitted on that fold's training rows, so model
and baselines are scored on exactly the same out-of-fold predictions. Those of the model are
kept in `oof.csv` (calibrated as scored), so a strong configuration can teach a cheap one
(`--soft-labels`) or join a blend (`jaxpref ensemble`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from jaxpref import monitoring
from jaxpref.config import ConfigError, TrainConfig
from jaxpref.data import arena, probabilities, sources, splitting
from jaxpref.data.probabilities import read_probabilities
from jaxpref.rundir import RunDir, epoch_at
from jaxpref.scoring import baselines, metrics, report

log = logging.getLogger("jaxpref")


def epoch_predictions(
    root: Path, frame: pd.DataFrame, splits: list, per_epoch: int = 1
) -> list[np.ndarray]:
    """Per validation (each epoch, or `per_epoch` times per epoch), (n, 3) out-of-fold
    predictions of the weights at that point in every fold, uncalibrated, for the validations
    every fold recorded.

    The model's main score uses each fold's best epoch and temperature, both chosen on the rows
    it is scored on; these choose nothing there (a selection-free score, and a fair input for
    blends and teachers).
    """
    epochs = []
    while True:
        epoch = epoch_at(len(epochs) + 1, per_epoch)
        paths = [RunDir(root / f"fold{f}").epoch_predictions(epoch) for f in range(len(splits))]
        if not all(path.exists() for path in paths):
            return epochs
        probs = np.full((len(frame), arena.NUM_CLASSES), np.nan)
        for path, (_, valid_rows) in zip(paths, splits, strict=True):
            probs[valid_rows] = read_probabilities(path).aligned(
                frame["id"].iloc[valid_rows], str(path)
            )
        epochs.append(probs)


def epoch_oof_file(epoch: float) -> str:
    """Name of the uncalibrated out-of-fold predictions after `epoch` epochs, beside oof.csv."""
    return f"oof-epoch{epoch:g}.csv"


def cross_validate(cfg: TrainConfig, folds: int, train_fraction: float = 1.0) -> dict:
    """Train `folds` runs under `cfg.run.run_dir` (each on `train_fraction` of its training
    rows); write and return the out-of-fold report."""
    import keras

    from jaxpref.training import trainer

    root = Path(cfg.run.run_dir)
    if cfg.data.valid_file:
        raise ConfigError(
            f"valid_file {cfg.data.valid_file}: cross-validation validates on its folds of "
            "--train-file; drop it"
        )
    cfg = cfg.replace(train_file=sources.training_file(cfg.data.train_file))  # said once
    frame = sources.read_rows(cfg.data.train_file)
    splits = splitting.fold_indices(frame, folds, cfg.run.seed, train_fraction)
    for fold, (train_rows, valid_rows) in enumerate(splits):
        train_df = frame.iloc[train_rows].reset_index(drop=True)
        valid_df = frame.iloc[valid_rows].reset_index(drop=True)
        monitoring.setup_logging()  # stderr only; each fold's run logs to its own train.log
        log.info(
            "fold %d/%d: %d train / %d validation rows",
            fold + 1, folds, len(train_df), len(valid_df),
        )  # fmt: skip
        trainer.train(fold_config(cfg, root, fold), train_df, valid_df)
        keras.backend.clear_session()
    return write_report(cfg, folds, train_fraction)


def fold_config(cfg: TrainConfig, root: Path, fold: int) -> TrainConfig:
    """Fold `fold`'s run: its directory under `root`, and its own teacher where the
    --soft-labels path holds {fold} (a teacher that never saw the fold's validation labels)."""
    soft_labels = cfg.data.soft_labels.replace("{fold}", str(fold))
    return cfg.replace(run_dir=str(root / f"fold{fold}"), soft_labels=soft_labels)


def model_predictions(root: Path, frame: pd.DataFrame, splits: list) -> np.ndarray:
    """(n, 3): each row's calibrated prediction by the fold run that did not train on it."""
    probs = np.full((len(frame), arena.NUM_CLASSES), np.nan)
    for fold, (_, valid_rows) in enumerate(splits):
        path = RunDir(root / f"fold{fold}").valid_predictions
        fold_ids = frame["id"].iloc[valid_rows]
        probs[valid_rows] = read_probabilities(path).aligned(fold_ids, f"fold {fold}")
    return probs


def write_report(cfg: TrainConfig, folds: int, train_fraction: float = 1.0) -> dict:
    """Score the fold runs under `cfg.run.run_dir` beside the baselines; write cv.json, cv.md
    and oof.csv (the model's out-of-fold predictions: a teacher file for --soft-labels, an
    input of `jaxpref ensemble`), and each epoch's selection-free oof-epoch<e>.csv."""
    root = Path(cfg.run.run_dir)
    train_file = sources.training_file(cfg.data.train_file)
    frame = sources.read_rows(train_file)
    splits = splitting.fold_indices(frame, folds, cfg.run.seed, train_fraction)
    labels = frame["label"].to_numpy()
    model_probs = model_predictions(root, frame, splits)
    baseline_probs = baselines.baseline_predictions(frame, splits)
    per_epoch = cfg.optim.validations_per_epoch
    epochs = epoch_predictions(root, frame, splits, per_epoch)
    points = [epoch_at(i, per_epoch) for i in range(1, len(epochs) + 1)]
    per_point = [metrics.score_table(probs, baseline_probs, labels) for probs in epochs]
    result = {
        "folds": folds,
        "train_fraction": train_fraction,
        "train_rows": [len(train_rows) for train_rows, _ in splits],
        "config": cfg.to_dict(),
        **metrics.score_table(model_probs, baseline_probs, labels),
        "epochs": points,
        "epoch_log_loss": [table["scores"][metrics.MODEL]["log_loss"] for table in per_point],
        "epoch_minus_baseline": [table["model_minus_baseline"] for table in per_point],
    }
    (root / "cv.json").write_text(json.dumps(result, indent=2) + "\n")
    probabilities.write_submission(frame["id"], model_probs, root / probabilities.OOF_FILE)
    for epoch, probs in zip(points, epochs, strict=True):
        probabilities.write_submission(frame["id"], probs, root / epoch_oof_file(epoch))
    markdown = report.crossval_markdown(result, train_file)
    (root / "cv.md").write_text(markdown)
    monitoring.setup_logging()
    log.info("cross-validation, %d folds:\n%s", folds, markdown)
    return result
