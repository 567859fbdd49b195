"""K-fold cross-validation grouped by prompt: out-of-fold log loss beside the baselines.

One validation split of 100 rows has a log-loss standard error near 0.03, too noisy to compare
configurations; K folds score every row once. Each fold trains a full run (its own run
directory under the root) and the baselines are refitted on that fold's training rows, so model
and baselines are scored on exactly the same out-of-fold predictions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from jaxpref import baselines, data, evaluation, metrics, monitoring, report
from jaxpref.config import TrainConfig
from jaxpref.rundir import RunDir

log = logging.getLogger("jaxpref")


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
    train_csv = cfg.data.train_csv or str(data.DEFAULT_TRAIN_CSV)
    frame = data.read_arena_csv(train_csv, labelled=True)
    labels = frame["label"].to_numpy()
    model_probs = np.full((len(frame), data.NUM_CLASSES), np.nan)
    baseline_probs: dict[str, np.ndarray] = {}
    fold_sizes = []
    for fold, (train_rows, valid_rows) in enumerate(fold_indices(frame, folds, cfg.run.seed)):
        fold_sizes.append(len(valid_rows))
        fold_dir = RunDir(root / f"fold{fold}")
        train_df = frame.iloc[train_rows].reset_index(drop=True)
        valid_df = frame.iloc[valid_rows].reset_index(drop=True)
        monitoring.setup_logging()  # stderr only; each fold's run logs to its own train.log
        log.info(
            "fold %d/%d: %d train / %d validation rows",
            fold + 1, folds, len(train_df), len(valid_df),
        )  # fmt: skip
        training.train(cfg.replace(run_dir=str(fold_dir.root)), train_df, valid_df)
        model_probs[valid_rows] = evaluation.read_predictions(
            fold_dir.valid_predictions, valid_df["id"]
        )
        fitted = baselines.fit_baselines(train_df)
        for name, probs in baselines.predict_baselines(fitted, valid_df).items():
            baseline_probs.setdefault(name, np.full_like(model_probs, np.nan))[valid_rows] = probs
        keras.backend.clear_session()
    result = {
        "folds": folds,
        "config": cfg.to_dict(),
        **metrics.score_table(model_probs, baseline_probs, labels),
        "epoch_log_loss": epoch_log_losses(root, fold_sizes),
    }
    (root / "cv.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = report.crossval_markdown(result, train_csv)
    (root / "cv.md").write_text(markdown)
    monitoring.setup_logging()
    log.info("cross-validation, %d folds:\n%s", folds, markdown)
    return result
