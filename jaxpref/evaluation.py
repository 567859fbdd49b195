"""Score a trained run against simple baselines on the same rows, and write a report.

Log loss is the competition metric, so every predictor (the model and each baseline of
:mod:`jaxpref.baselines`, fitted on the run's own training split) is scored on exactly the same
rows, with the standard error of the model's log loss and of its paired difference to each
baseline: on 100 validation rows a difference of a few hundredths is noise.

The report goes to ``<run_dir>/evaluation/``: ``evaluation.json``, ``evaluation.md``,
``reliability.png`` and ``learning_curves.png``. Plots use matplotlib's Agg canvas directly,
so nothing here changes the global matplotlib backend. JAX and Keras are imported only when a
model has to predict a CSV.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from jaxpref import baselines, calibration, cli, data, distribution, prediction
from jaxpref.config import TrainConfig

__all__ = [
    "CLIP",
    "ECE_BINS",
    "evaluate_main",
    "evaluate_parser",
    "evaluate_run",
    "expected_calibration_error",
    "learning_curves",
    "markdown_report",
    "markdown_table",
    "metrics",
    "reliability_diagram",
    "row_log_loss",
    "score_table",
]

CLIP = 1e-15
ECE_BINS = 15
MODEL = "model"
CLASS_TITLES = ("A wins", "B wins", "tie")


def _probabilities(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes; scale rows to sum 1, clip to [CLIP, 1 − CLIP], renormalise (Kaggle's way)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[1] != 3 or len(probs) != len(labels) or not len(probs):
        raise ValueError(
            f"expected probabilities (n, 3) and labels (n,) with n > 0, "
            f"got {probs.shape} and {labels.shape}"
        )
    if not np.all(np.isfinite(probs)) or np.any(probs < 0) or np.any(probs.sum(axis=1) <= 0):
        raise ValueError("probabilities must be finite, non-negative, with positive row sums")
    if not np.isin(labels, (0, 1, 2)).all():
        raise ValueError("labels must be 0, 1 or 2")
    probs = np.clip(probs / probs.sum(axis=1, keepdims=True), CLIP, 1 - CLIP)
    return probs / probs.sum(axis=1, keepdims=True), labels.astype(np.int64)


def row_log_loss(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """−log p(true class) for every row (n,), after clipping and renormalising."""
    probs, labels = _probabilities(probs, labels)
    return -np.log(probs[np.arange(len(labels)), labels])


def _calibration_bins(
    probs: np.ndarray, labels: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of top-class confidence: row count, mean confidence, accuracy."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(index, confidence, minlength=bins) / counts
        accuracy = np.bincount(index, correct, minlength=bins) / counts
    return counts, mean_confidence, accuracy


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Σ over confidence bins of (rows in bin / n) · |accuracy − mean confidence| (top class)."""
    probs, labels = _probabilities(probs, labels)
    counts, confidence, accuracy = _calibration_bins(probs, labels, bins)
    filled = counts > 0
    gaps = np.abs(accuracy[filled] - confidence[filled])
    return float(np.dot(counts[filled], gaps) / len(labels))


def metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Log loss, accuracy, per-class log loss, ECE, confusion matrix and row count.

    ``per_class_log_loss`` maps each class name to the mean −log p over the rows of that true
    class (``None`` when there are none); ``confusion_matrix[true][predicted]`` counts rows.
    """
    probs, labels = _probabilities(probs, labels)
    losses = row_log_loss(probs, labels)
    predicted = probs.argmax(axis=1)
    confusion = np.zeros((3, 3), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    return {
        "log_loss": float(losses.mean()),
        "accuracy": float(np.mean(predicted == labels)),
        "per_class_log_loss": {
            name: float(losses[labels == k].mean()) if np.any(labels == k) else None
            for k, name in enumerate(data.CLASS_NAMES)
        },
        "ece": expected_calibration_error(probs, labels),
        "confusion_matrix": confusion.tolist(),
        "rows": len(labels),
    }


def _standard_error(values: np.ndarray) -> float | None:
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def score_table(
    model_probs: np.ndarray, baselines_probs: Mapping[str, np.ndarray], labels: np.ndarray
) -> dict:
    """Score the model and every baseline on the same rows.

    Returns ``{"rows", "scores": {name: metrics}, "model_log_loss_se",
    "model_minus_baseline": {name: {"log_loss", "se"}}}``; the model comes first in
    ``scores``. Differences are taken per row (model − baseline, negative = the model is
    better) and their standard error is that of the paired differences, which is what says
    whether the model really beats a baseline on these rows.
    """
    model_losses = row_log_loss(model_probs, labels)
    scores = {MODEL: metrics(model_probs, labels)}
    differences = {}
    for name, probs in baselines_probs.items():
        scores[name] = metrics(probs, labels)
        delta = model_losses - row_log_loss(probs, labels)
        differences[name] = {"log_loss": float(delta.mean()), "se": _standard_error(delta)}
    return {
        "rows": len(model_losses),
        "scores": scores,
        "model_log_loss_se": _standard_error(model_losses),
        "model_minus_baseline": differences,
    }


def _number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(scores: Mapping[str, dict]) -> str:
    """One row per predictor: log loss, accuracy, ECE and the log loss of each true class."""
    head = ["predictor", "log loss", "accuracy", "ECE"]
    head += [f"log loss ({title})" for title in CLASS_TITLES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in scores.items():
        cells = [name, _number(m["log_loss"]), _number(m["accuracy"], 3), _number(m["ece"])]
        cells += [_number(m["per_class_log_loss"][c]) for c in data.CLASS_NAMES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _confusion_table(confusion: list[list[int]]) -> str:
    lines = [
        "| true \\ predicted | " + " | ".join(CLASS_TITLES) + " |",
        "|" + "---|" * (len(CLASS_TITLES) + 1),
    ]
    for title, row in zip(CLASS_TITLES, confusion, strict=True):
        lines.append(f"| {title} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def markdown_report(result: Mapping) -> str:
    """The whole ``evaluation.md`` for a result of :func:`evaluate_run`."""
    model = result["scores"][MODEL]
    diffs = ", ".join(
        f"{name} {d['log_loss']:+.4f} ± {_number(d['se'])}"
        for name, d in result["model_minus_baseline"].items()
    )
    lines = [
        f"# Evaluation of `{result['run_dir']}`",
        "",
        f"{result['rows']} rows from {result['source']}; baselines fitted on the run's "
        f"{result['train_rows']} training rows.",
    ]
    if result["rows_in_training_split"]:
        lines.append(
            f"**Warning:** {result['rows_in_training_split']} of these rows were in the run's "
            "training split; their scores are optimistic."
        )
    lines += [
        "",
        markdown_table(result["scores"]),
        "",
        f"Model log loss {model['log_loss']:.4f} ± {_number(result['model_log_loss_se'])} "
        f"(standard error over {result['rows']} rows).",
        "",
    ]
    if "calibration" in result:
        cal = result["calibration"]
        lines += [
            f"Temperature scaling (T = {cal['temperature']:.3f}, fitted on the validation split): "
            f"validation log loss {cal['val_log_loss_before']:.4f} before, "
            f"{cal['val_log_loss_after']:.4f} after; the model row above is after.",
            "",
        ]
    lines += [
        f"Model − baseline log loss, paired over the same rows (negative: the model is better): "
        f"{diffs}.",
        "",
        "Confusion matrix of the model (rows: true class, columns: predicted class):",
        "",
        _confusion_table(model["confusion_matrix"]),
        "",
    ]
    lines += [f"![{Path(name).stem}]({name})" for name in result["plots"]]
    return "\n".join(lines) + "\n"


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=100)
    return path


def reliability_diagram(
    probs: np.ndarray, labels: np.ndarray, path: str | os.PathLike, bins: int = ECE_BINS
) -> Path:
    """PNG of top-class accuracy against confidence per bin, with the rows in each bin below."""
    probs, labels = _probabilities(probs, labels)
    counts, confidence, accuracy = _calibration_bins(probs, labels, bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    width = 1.0 / bins
    filled = counts > 0
    figure = Figure(figsize=(5, 6), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    top.bar(
        edges[:-1][filled],
        accuracy[filled],
        width=width,
        align="edge",
        alpha=0.7,
        edgecolor="black",
        label="accuracy",
    )
    top.plot(confidence[filled], accuracy[filled], "o", color="black", label="mean confidence")
    top.set(ylim=(0, 1), ylabel="accuracy of the top class")
    top.set_title(f"Reliability (ECE {expected_calibration_error(probs, labels, bins):.4f})")
    top.legend(loc="upper left")
    bottom.bar(edges[:-1], counts, width=width, align="edge", edgecolor="black")
    bottom.set(xlim=(0, 1), xlabel="top-class confidence", ylabel="rows")
    return _save(figure, path)


def learning_curves(history_csv: str | os.PathLike, path: str | os.PathLike) -> Path:
    """PNG of per-epoch log loss (and training loss) and accuracy from a run's history.csv."""
    history = pd.read_csv(history_csv)
    if history.empty or "epoch" not in history.columns:
        raise ValueError(f"{history_csv}: no epochs recorded")
    epochs = history["epoch"].to_numpy() + 1
    figure = Figure(figsize=(10, 4), layout="constrained")
    losses, accuracies = figure.subplots(1, 2)
    for axis, metric_names in ((losses, ("log_loss", "loss")), (accuracies, ("accuracy",))):
        for color, name in enumerate(metric_names):
            for column, style in ((name, "-"), (f"val_{name}", "--")):
                if column in history.columns:
                    axis.plot(
                        epochs, history[column], style, color=f"C{color}", marker="o", label=column
                    )
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend()
    losses.set(title="log_loss (competition metric); loss is label-smoothed", ylabel="loss")
    accuracies.set(title="accuracy", ylabel="accuracy")
    return _save(figure, path)


def _required(path: Path) -> Path:
    if not path.exists():
        raise prediction.RunDirError(
            f"{path} is missing; is this the run directory of a finished training?"
        )
    return path


def _read_split(run_dir: Path) -> pd.DataFrame:
    path = _required(run_dir / "split.csv")
    split = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"id", "split"} <= set(split.columns):
        raise prediction.RunDirError(f"{path}: expected columns id, split")
    return split


def _rows_with_ids(frame: pd.DataFrame, ids: pd.Series, source: Path, csv: str) -> pd.DataFrame:
    missing = set(ids) - set(frame["id"])
    if missing:
        raise prediction.RunDirError(
            f"{source}: {len(missing)} id(s), e.g. {sorted(missing)[0]!r}, are not in {csv}; "
            "was the training CSV changed after the run?"
        )
    return frame[frame["id"].isin(set(ids))].reset_index(drop=True)


def _valid_predictions(run_dir: Path, ids: pd.Series) -> np.ndarray:
    path = _required(run_dir / "valid_predictions.csv")
    frame = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    columns = ["id", *data.LABEL_COLUMNS]
    if not set(columns) <= set(frame.columns):
        raise prediction.RunDirError(f"{path}: expected columns {', '.join(columns)}")
    if set(frame["id"]) != set(ids) or frame["id"].duplicated().any():
        raise prediction.RunDirError(f"{path}: ids differ from the validation ids of split.csv")
    return frame.set_index("id").loc[list(ids), list(data.LABEL_COLUMNS)].to_numpy(np.float64)


def _predict_with_model(
    run_dir: Path, frame: pd.DataFrame, devices: str, num_devices: int | None
) -> np.ndarray:
    distribution.hide_accelerators_from_tensorflow()
    selected = distribution.select_devices(devices, num_devices)
    distribution.set_data_parallel(selected)
    model, encoder, cfg = prediction.load_run(run_dir)
    batch_size = -(-cfg.batch_size // len(selected)) * len(selected)
    probs = prediction.predict_frame(model, encoder, frame, batch_size)
    return calibration.apply_temperature(probs, calibration.load_temperature(run_dir))


def evaluate_run(
    run_dir: str | os.PathLike,
    csv_path: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    devices: str = "auto",
    num_devices: int | None = None,
) -> dict:
    """Score a run's model and the baselines on the same rows; write the report to ``out_dir``.

    Without ``csv_path`` the rows are the run's validation split and the model's predictions
    come from its ``valid_predictions.csv`` (no model is loaded). With ``csv_path`` (a labelled
    arena CSV) the run's best weights predict it on ``devices``. Either way the baselines are
    fitted on the run's own training split (``config.json``'s ``train_csv`` and
    ``split.csv``). ``out_dir`` defaults to ``<run_dir>/evaluation``. Returns the dict written
    to ``evaluation.json``.
    """
    run_dir = Path(run_dir).resolve()
    cfg = TrainConfig.from_json(_required(run_dir / "config.json"))
    split = _read_split(run_dir)
    frame = data.read_arena_csv(cfg.train_csv, labelled=True)
    train_ids = split.loc[split["split"] == "train", "id"]
    train_df = _rows_with_ids(frame, train_ids, run_dir / "split.csv", cfg.train_csv)

    if csv_path is None:
        valid_ids = split.loc[split["split"] == "valid", "id"]
        rows = _rows_with_ids(frame, valid_ids, run_dir / "split.csv", cfg.train_csv)
        model_probs = _valid_predictions(run_dir, rows["id"])
        source = "the run's validation split"
    else:
        rows = data.read_arena_csv(csv_path, labelled=True)
        model_probs = _predict_with_model(run_dir, rows, devices, num_devices)
        source = f"`{csv_path}`"

    labels = rows["label"].to_numpy()
    baseline_probs = baselines.predict_baselines(baselines.fit_baselines(train_df), rows)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [reliability_diagram(model_probs, labels, out_dir / "reliability.png").name]
    history = run_dir / "history.csv"
    if history.exists():
        plots.append(learning_curves(history, out_dir / "learning_curves.png").name)

    result = {
        "run_dir": str(run_dir),
        "source": source,
        "train_rows": len(train_df),
        "rows_in_training_split": int(rows["id"].isin(set(train_ids)).sum()),
        **score_table(model_probs, baseline_probs, labels),
        "plots": plots,
    }
    calibration_file = run_dir / calibration.CALIBRATION_FILE
    if calibration_file.exists():
        result["calibration"] = json.loads(calibration_file.read_text())
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "evaluation.md").write_text(markdown_report(result))
    return result


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Score a trained run and simple baselines (fitted on the run's training "
        "split) on the same rows; write evaluation.json/.md and plots.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    cli._device_flags(p)
    p.add_argument("--run-dir", required=True, help="directory written by train_jax.py")
    p.add_argument(
        "--csv",
        default=None,
        help="labelled arena CSV to predict with the model (default: the run's validation "
        "split and its valid_predictions.csv; no model is loaded)",
    )
    p.add_argument("--out-dir", default=None, help="report directory (default: RUN_DIR/evaluation)")
    return p


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """Command line: configure devices before JAX starts, evaluate, print the table."""
    args = evaluate_parser().parse_args(argv)
    distribution.configure_environment(args.devices, args.num_devices)

    def go():
        result = evaluate_run(args.run_dir, args.csv, args.out_dir, args.devices, args.num_devices)
        print(markdown_table(result["scores"]))
        se = _number(result["model_log_loss_se"])
        print(f"\n{result['rows']} rows; model log loss standard error {se}")
        print(f"wrote {args.out_dir or Path(result['run_dir']) / 'evaluation'}")

    return cli._run(go)
