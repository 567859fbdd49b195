"""Human-readable output of scores: markdown tables and reports, reliability and learning-curve
plots. Plots use matplotlib's Agg canvas directly, so the global backend is never changed."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from jaxpref.data.arena import CLASS_NAMES
from jaxpref.scoring import metrics

CLASS_TITLES = ("A wins", "B wins", "tie")


def number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(scores: Mapping[str, dict]) -> str:
    """One row per predictor: log loss, accuracy, ECE and the log loss of each true class."""
    head = ["predictor", "log loss", "accuracy", "ECE"]
    head += [f"log loss ({title})" for title in CLASS_TITLES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in scores.items():
        cells = [name, number(m["log_loss"]), number(m["accuracy"], 3), number(m["ece"])]
        cells += [number(m["per_class_log_loss"][c]) for c in CLASS_NAMES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def confusion_table(confusion: list[list[int]]) -> str:
    lines = [
        "| true \\ predicted | " + " | ".join(CLASS_TITLES) + " |",
        "|" + "---|" * (len(CLASS_TITLES) + 1),
    ]
    for title, row in zip(CLASS_TITLES, confusion, strict=True):
        lines.append(f"| {title} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


SELECTED_ON_THESE_ROWS = (
    "**Note:** the best epoch was chosen and the temperature fitted on these same rows (the "
    "validation split), so the model's scores are slightly optimistic; `--csv` with rows the "
    "run never saw gives unbiased ones."
)


def evaluation_markdown(result: Mapping) -> str:
    """The whole evaluation.md for a result of `evaluation.evaluate_run`."""
    model = result["scores"][metrics.MODEL]
    diffs = ", ".join(
        f"{name} {d['log_loss']:+.4f} ± {number(d['se'])}"
        for name, d in result["model_minus_baseline"].items()
    )
    lines = [
        f"# Evaluation of `{result['run_dir']}`",
        "",
        f"{result['rows']} rows from {result['source']}; baselines fitted on the run's "
        f"{result['train_rows']} training rows.",
    ]
    if result.get("selected_on_these_rows"):
        lines.append(SELECTED_ON_THESE_ROWS)
    if result["rows_in_training_split"]:
        lines.append(
            f"**Warning:** {result['rows_in_training_split']} of these rows were in the run's "
            "training split; their scores are optimistic."
        )
    lines += [
        "",
        markdown_table(result["scores"]),
        "",
        f"Model log loss {model['log_loss']:.4f} ± {number(result['model_log_loss_se'])} "
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
        confusion_table(model["confusion_matrix"]),
        "",
    ]
    lines += [f"![{Path(name).stem}]({name})" for name in result["plots"]]
    return "\n".join(lines) + "\n"


def crossval_markdown(result: Mapping, train_file: str) -> str:
    """cv.md: the score table, the paired differences and the per-epoch scores."""
    points = result["epochs"]
    scores = zip(points, result["epoch_log_loss"], strict=True)
    epochs = ", ".join(f"{e:g}: {v:.4f}" for e, v in scores)
    last = points[-1] if points else 0
    last_diffs = (
        difference_lines(f"epoch {last}", result["epoch_minus_baseline"][-1]) if last else ""
    )
    trained = ", ".join(str(n) for n in result["train_rows"])
    return (
        f"# {result['folds']}-fold cross-validation (grouped by prompt) of `{train_file}`\n\n"
        f"{result['rows']} out-of-fold rows; training rows per fold: {trained} "
        f"(--train-fraction {result['train_fraction']:g}), baselines fitted on the same.\n\n"
        f"{markdown_table(result['scores'])}\n\n"
        f"{difference_lines('model', result['model_minus_baseline'])}\n\n"
        "Model log loss by epoch, the same epoch in every fold, before temperature scaling "
        f"(nothing chosen on the scored rows; oof-epoch<e>.csv): {epochs}. The model row above "
        "uses each fold's best epoch and its temperature, both chosen on that fold's validation "
        f"rows.\n\n{last_diffs}\n"
    )


def difference_lines(label: str, differences: Mapping) -> str:
    """One markdown line per baseline: `label` − baseline, with its paired standard error."""
    return "\n".join(
        f"- {label} − {name}: {d['log_loss']:+.4f} (paired standard error {d['se']:.4f})"
        for name, d in differences.items()
    )


def save_figure(figure: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=100)
    return path


def reliability_diagram(
    probs: np.ndarray, labels: np.ndarray, path: str | os.PathLike, bins: int = metrics.ECE_BINS
) -> Path:
    """PNG of top-class accuracy against confidence per bin, with the rows in each bin below."""
    counts, confidence, accuracy = metrics.calibration_bins(probs, labels, bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    width = 1.0 / bins
    filled = counts > 0
    figure = Figure(figsize=(5, 6), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    top.bar(
        edges[:-1][filled], accuracy[filled], width=width, align="edge", alpha=0.7,
        edgecolor="black", label="accuracy",
    )  # fmt: skip
    top.plot(confidence[filled], accuracy[filled], "o", color="black", label="mean confidence")
    top.set(ylim=(0, 1), ylabel="accuracy of the top class")
    ece = metrics.expected_calibration_error(probs, labels, bins)
    top.set_title(f"Reliability (ECE {ece:.4f})")
    top.legend(loc="upper left")
    bottom.bar(edges[:-1], counts, width=width, align="edge", edgecolor="black")
    bottom.set(xlim=(0, 1), xlabel="top-class confidence", ylabel="rows")
    return save_figure(figure, path)


def learning_curves(history_csv: str | os.PathLike, path: str | os.PathLike) -> Path:
    """PNG of per-epoch log loss (and training loss) and accuracy from a run's history.csv."""
    history = pd.read_csv(history_csv)
    if history.empty or "epoch" not in history.columns:
        raise ValueError(f"{history_csv}: no epochs recorded")
    epochs = history["epoch"].to_numpy()
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
    return save_figure(figure, path)
