"""K-fold cross-validation grouped by prompt: out-of-fold log loss beside the baselines.

One validation split of 100 rows has a log-loss standard error near 0.03, too noisy to compare
configurations; K folds score every row once. Each fold trains a full run (its own run
directory under the root) and the baselines are refitted on that fold's training rows, so model
and baselines are scored on exactly the same out-of-fold predictions.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from jaxpref import baselines, data, evaluation
from jaxpref.config import TrainConfig

log = logging.getLogger("jaxpref")


def fold_indices(frame: pd.DataFrame, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, validation rows) per fold; one prompt never sits in two folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    labels = frame["label"].to_numpy()
    return list(splitter.split(np.zeros(len(frame)), labels, data.prompt_groups(frame)))


def _fold_predictions(run_dir: Path, ids: pd.Series) -> np.ndarray:
    frame = pd.read_csv(run_dir / "valid_predictions.csv", dtype={"id": str}, keep_default_na=False)
    return frame.set_index("id").loc[list(ids), list(data.LABEL_COLUMNS)].to_numpy(np.float64)


def epoch_log_losses(root: Path, fold_sizes: list[int]) -> list[float]:
    """Out-of-fold log loss of each epoch's weights (the same epoch in every fold), uncalibrated.

    The model's main score uses each fold's best epoch and temperature, both chosen on the rows
    it is scored on; this one chooses nothing there, so it shows how much that selection helps.
    """
    total = 0.0
    for fold, size in enumerate(fold_sizes):
        history = pd.read_csv(root / f"fold{fold}" / "history.csv").sort_values("epoch")
        total = total + history["val_log_loss"].to_numpy(np.float64) * size
    return [float(v) for v in np.asarray(total) / sum(fold_sizes)]


def report_markdown(result: dict, train_csv: str) -> str:
    """cv.md: the score table, the paired differences and the per-epoch scores."""
    diffs = "\n".join(
        f"- model − {name}: {d['log_loss']:+.4f} (paired standard error {d['se']:.4f})"
        for name, d in result["model_minus_baseline"].items()
    )
    epochs = ", ".join(f"{i + 1}: {v:.4f}" for i, v in enumerate(result["epoch_log_loss"]))
    return (
        f"# {result['folds']}-fold cross-validation (grouped by prompt) of `{train_csv}`\n\n"
        f"{result['rows']} out-of-fold rows.\n\n{evaluation.markdown_table(result['scores'])}\n\n"
        f"{diffs}\n\nModel log loss by epoch, the same epoch in every fold, before temperature "
        f"scaling (nothing chosen on the scored rows): {epochs}. The model row above uses each "
        "fold's best epoch and its temperature, both chosen on that fold's validation rows.\n"
    )


def cross_validate(cfg: TrainConfig, folds: int) -> dict:
    """Train `folds` runs under `cfg.run_dir`; write and return the out-of-fold report."""
    import keras

    from jaxpref import training

    root = Path(cfg.run_dir)
    frame = data.read_arena_csv(cfg.train_csv, labelled=True)
    labels = frame["label"].to_numpy()
    model_probs = np.full((len(frame), 3), np.nan)
    baseline_probs: dict[str, np.ndarray] = {}
    fold_sizes = []
    for fold, (train_rows, valid_rows) in enumerate(fold_indices(frame, folds, cfg.seed)):
        fold_sizes.append(len(valid_rows))
        fold_cfg = dataclasses.replace(cfg, run_dir=str(root / f"fold{fold}"))
        train_df = frame.iloc[train_rows].reset_index(drop=True)
        valid_df = frame.iloc[valid_rows].reset_index(drop=True)
        training.setup_logging(None)  # stderr only; each fold's run logs to its own train.log
        log.info(
            "fold %d/%d: %d train / %d validation rows",
            fold + 1,
            folds,
            len(train_df),
            len(valid_df),
        )
        training.train(fold_cfg, train_df, valid_df)
        model_probs[valid_rows] = _fold_predictions(Path(fold_cfg.run_dir), valid_df["id"])
        fitted = baselines.fit_baselines(train_df)
        for name, probs in baselines.predict_baselines(fitted, valid_df).items():
            baseline_probs.setdefault(name, np.full((len(frame), 3), np.nan))[valid_rows] = probs
        keras.backend.clear_session()
    result = {
        "folds": folds,
        "config": dataclasses.asdict(cfg),
        **evaluation.score_table(model_probs, baseline_probs, labels),
        "epoch_log_loss": epoch_log_losses(root, fold_sizes),
    }
    (root / "cv.json").write_text(json.dumps(result, indent=2) + "\n")
    report = report_markdown(result, cfg.train_csv)
    (root / "cv.md").write_text(report)
    training.setup_logging(None)
    log.info("cross-validation, %d folds:\n%s", folds, report)
    return result
