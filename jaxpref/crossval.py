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

from jaxpref import baselines, data, metrics, monitoring, prediction, report
from jaxpref.config import TrainConfig
from jaxpref.probabilities import read_probabilities
from jaxpref.rundir import RunDir

log = logging.getLogger("jaxpref")

OOF_FILE = "oof.csv"


def fold_indices(frame: pd.DataFrame, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, validation rows) per fold; one prompt never sits in two folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    labels = frame["label"].to_numpy()
    return list(splitter.split(np.zeros(len(frame)), labels, data.prompt_groups(frame)))


def epoch_log_losses(root: Path, fold_sizes: list[int]) -> list[float]:
    """Out-of-fold log loss of each epoch's weights (the same epoch in every fold), uncalibrated.

    The model's main score uses each fold's best epoch and temperature, both chosen on the rows
    it is scored on; this one chooses nothing there, so it shows how much that selection helps.
    """
    total = 0.0
    for fold, size in enumerate(fold_sizes):
        history = pd.read_csv(RunDir(root / f"fold{fold}").history).sort_values("epoch")
        total = total + history["val_log_loss"].to_numpy(np.float64) * size
    return [float(v) for v in np.asarray(total) / sum(fold_sizes)]


def cross_validate(cfg: TrainConfig, folds: int) -> dict:
    """Train `folds` runs under `cfg.run.run_dir`; write and return the out-of-fold report."""
    import keras

    from jaxpref import training

    root = Path(cfg.run.run_dir)
    frame = data.read_arena_csv(training_csv(cfg), labelled=True)
    for fold, (train_rows, valid_rows) in enumerate(fold_indices(frame, folds, cfg.run.seed)):
        train_df = frame.iloc[train_rows].reset_index(drop=True)
        valid_df = frame.iloc[valid_rows].reset_index(drop=True)
        monitoring.setup_logging()  # stderr only; each fold's run logs to its own train.log
        log.info(
            "fold %d/%d: %d train / %d validation rows",
            fold + 1, folds, len(train_df), len(valid_df),
        )  # fmt: skip
        training.train(cfg.replace(run_dir=str(root / f"fold{fold}")), train_df, valid_df)
        keras.backend.clear_session()
    return write_report(cfg, folds)


def training_csv(cfg: TrainConfig) -> str:
    return cfg.data.train_csv or str(data.DEFAULT_TRAIN_CSV)


def model_predictions(root: Path, frame: pd.DataFrame, splits: list) -> np.ndarray:
    """(n, 3): each row's calibrated prediction by the fold run that did not train on it."""
    probs = np.full((len(frame), data.NUM_CLASSES), np.nan)
    for fold, (_, valid_rows) in enumerate(splits):
        path = RunDir(root / f"fold{fold}").valid_predictions
        fold_ids = frame["id"].iloc[valid_rows]
        probs[valid_rows] = read_probabilities(path).aligned(fold_ids, f"fold {fold}")
    return probs


def baseline_predictions(frame: pd.DataFrame, splits: list) -> dict[str, np.ndarray]:
    """{baseline: (n, 3)} out-of-fold predictions, each baseline refitted per fold."""
    out: dict[str, np.ndarray] = {}
    for train_rows, valid_rows in splits:
        fitted = baselines.fit_baselines(frame.iloc[train_rows].reset_index(drop=True))
        valid_df = frame.iloc[valid_rows].reset_index(drop=True)
        for name, probs in baselines.predict_baselines(fitted, valid_df).items():
            out.setdefault(name, np.full((len(frame), data.NUM_CLASSES), np.nan))
            out[name][valid_rows] = probs
    return out


def write_report(cfg: TrainConfig, folds: int) -> dict:
    """Score the fold runs under `cfg.run.run_dir` beside the baselines; write cv.json, cv.md
    and oof.csv (the model's out-of-fold predictions: a teacher file for --soft-labels, an
    input of `jaxpref ensemble`)."""
    root = Path(cfg.run.run_dir)
    train_csv = training_csv(cfg)
    frame = data.read_arena_csv(train_csv, labelled=True)
    splits = fold_indices(frame, folds, cfg.run.seed)
    model_probs = model_predictions(root, frame, splits)
    result = {
        "folds": folds,
        "config": cfg.to_dict(),
        **metrics.score_table(model_probs, baseline_predictions(frame, splits), frame["label"]),
        "epoch_log_loss": epoch_log_losses(root, [len(v) for _, v in splits]),
    }
    (root / "cv.json").write_text(json.dumps(result, indent=2) + "\n")
    prediction.write_submission(frame["id"], model_probs, root / OOF_FILE)
    markdown = report.crossval_markdown(result, train_csv)
    (root / "cv.md").write_text(markdown)
    monitoring.setup_logging()
    log.info("cross-validation, %d folds:\n%s", folds, markdown)
    return result
