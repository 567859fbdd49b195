"""Score a trained run against simple baselines on the same rows, and write its report.

Log loss is the competition metric, so every predictor (the model and each baseline of
`jaxpref.scoring.baselines`, fitted on the run's own training split) is scored on exactly the same
rows, with the standard error of the model's log loss and of its paired difference to each
baseline: on 100 validation rows a difference of a few hundredths is noise. The report goes to
`RUN/evaluation/` (`evaluation.json`, `evaluation.md`, `reliability.png`,
`learning_curves.png`). JAX and Keras are imported only when a model has to predict a CSV.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from jaxpref.config import TrainConfig
from jaxpref.data import sources
from jaxpref.data.probabilities import read_probabilities
from jaxpref.rundir import RunDir, RunDirError
from jaxpref.scoring import baselines, metrics, report


def read_split(paths: RunDir) -> pd.DataFrame:
    """The run's split.csv: id -> train / valid / extra."""
    path = paths.require(paths.split)
    split = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"id", "split"} <= set(split.columns):
        raise RunDirError(f"{path}: expected columns id, split")
    return split


def rows_with_ids(frame: pd.DataFrame, ids: pd.Series, source: Path, file: str) -> pd.DataFrame:
    """The rows of `frame` whose id is in `ids`; RunDirError naming one that is not there."""
    missing = set(ids) - set(frame["id"])
    if missing:
        raise RunDirError(
            f"{source}: {len(missing)} id(s), e.g. {sorted(missing)[0]!r}, are not in {file}; "
            "was the file changed after the run?"
        )
    return frame[frame["id"].isin(set(ids))].reset_index(drop=True)


def evaluate_run(
    run_dir: str | os.PathLike,
    file: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    devices: str = "auto",
    num_devices: int | None = None,
) -> dict:
    """Score a run's model and the baselines on the same rows; write the report to `out_dir`.

    Without `file` the rows are the run's validation rows (a split of its training file, or its
    validation file) and the model's predictions come from its `valid_predictions.csv` (no
    model is loaded). With `file` (labelled rows of any `sources.read_rows` source) the run's
    best weights predict it on `devices`. Either way the baselines are fitted on the run's own
    training rows (config.json's `train_file` and split.csv). `out_dir` defaults to
    `RUN/evaluation`. Returns the dict written to `evaluation.json`.
    """
    paths = RunDir(run_dir)
    cfg = TrainConfig.from_json(paths.require(paths.config))
    split = read_split(paths)
    frame = sources.read_rows(cfg.data.train_file)
    train_ids = split.loc[split["split"] == "train", "id"]
    train_df = rows_with_ids(frame, train_ids, paths.split, cfg.data.train_file)

    if file is None:
        valid_ids = split.loc[split["split"] == "valid", "id"]
        valid_file = cfg.data.valid_file or cfg.data.train_file
        valid_frame = sources.read_rows(valid_file) if cfg.data.valid_file else frame
        rows = rows_with_ids(valid_frame, valid_ids, paths.split, valid_file)
        predictions = read_probabilities(paths.require(paths.valid_predictions))
        model_probs = predictions.aligned(rows["id"], "the validation split (split.csv)")
        source = "the run's validation split"
    else:
        from jaxpref.serve import predict

        rows = sources.read_rows(file)
        model_probs = predict.predict_run(paths.root, rows, None, devices, num_devices)
        source = f"`{file}`"

    labels = rows["label"].to_numpy()
    baseline_probs = baselines.predict_baselines(baselines.fit_baselines(train_df), rows)
    out_dir = Path(out_dir) if out_dir is not None else paths.evaluation
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [report.reliability_diagram(model_probs, labels, out_dir / "reliability.png").name]
    if paths.history.exists():
        plots.append(report.learning_curves(paths.history, out_dir / "learning_curves.png").name)

    result = {
        "run_dir": str(paths.root),
        "source": source,
        "train_rows": len(train_df),
        "rows_in_training_split": int(rows["id"].isin(set(train_ids)).sum()),
        # The validation split chose the best epoch and fitted the temperature: optimistic.
        "selected_on_these_rows": file is None,
        **metrics.score_table(model_probs, baseline_probs, labels),
        "plots": plots,
    }
    if paths.calibration.exists():
        result["calibration"] = json.loads(paths.calibration.read_text())
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "evaluation.md").write_text(report.evaluation_markdown(result))
    return result
