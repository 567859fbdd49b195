"""Selection-free tables of experiments/quality-notes.md (regularization, preference data,
learning curve, stop points, the cross-encoder with HH-RLHF rows, fold averaging) from the
cross-validation directories that `cross_validate.py --folds 3` wrote under ROOT, or from the
copies of their files committed beside this script (`NAME.cv.json`, `NAME.oof-epoch2.csv`, ...).

    python experiments/beyond-defaults/analyse.py ROOT > tables.md   (also ROOT/analysis.json)
    python experiments/beyond-defaults/analyse.py experiments/beyond-defaults   (seconds)

Every score here chooses nothing on the rows it scores: each epoch's uncalibrated predictions
(`oof-epoch<e>.csv`), the same after a temperature and bias fitted on the other folds (a nested
one-input blend), epochs 1 and 2 blended with nested weights (prediction averaging over
checkpoints), a nested selection among all configurations and epochs (`jaxpref ensemble`), and
a nested choice of the stop point among the quarter-epoch validations of `--validations-per-epoch
4`. The cross-encoder rows compare the runs' own selected and calibrated `oof.csv` (the cross
run predates the per-epoch files). The last table is the pairwise accuracy (rows with a winner)
of the reward model (`--objective reward`), the defaults and the baselines.
"""

import json
import sys
from pathlib import Path

import numpy as np

from jaxpref.data import arena, probabilities, splitting
from jaxpref.data.probabilities import read_probabilities
from jaxpref.jobs import crossval, ensemble
from jaxpref.scoring import baselines, metrics

CONFIGURATIONS = {
    "siamese2": "siamese, current defaults",
    "wd1": "`--weight-decay 1.0`",
    "rank2": "`--lora-rank 2` (fewer trainable weights)",
    "extra-siamese": "`--extra-train` 667 HH-RLHF rows",
    "extra-tie-siamese": "`--extra-train` 667 HH-RLHF rows `--extra-train-tie 0.3`",
    "lora-dropout": "`--lora-dropout 0.1`",
    "quarters": "`--validations-per-epoch 4` (its epochs 1 and 2)",
    "distilled-nested": "`--soft-labels` from per-fold teachers (`nested_teachers.sh`)",
    "distilled-nested-cross": "`--soft-labels` from per-fold siamese + cross-encoder + baselines "
    "teachers (`nested_teachers.sh ROOT cross`)",
    "extra-full-siamese": "`--extra-train` the whole HH-RLHF file (2,354 rows), tie 0.3",
    "reward": "`--objective reward` (one scalar per side from [CLS], Davidson ties)",
}
SELECTABLE = ("siamese2", "wd1", "rank2", "lora-dropout")
STOPS = "quarters"
CROSS = {
    "cross": "cross-encoder",
    "extra-tie-cross": "cross-encoder + 667 HH-RLHF rows, tie 0.3",
    "extra-full-cross": "cross-encoder + the whole HH-RLHF file (2,354 rows), tie 0.3",
}
LEARNING_CURVE = {"lc025": 0.25, "lc050": 0.5, "lc075": 0.75, "siamese2": 1.0}
FOLD_AVERAGING = {  # `fold_average.sh` ROOT/nested: each fold's 2 inner models, 333 rows each
    "fold-mean.oof.csv": "2 half-data models, mean of calibrated predictions (`infer.py`)",
    "fold-average.oof.csv": "2 half-data models, mean weights (`export.py`), one model",
}
REFERENCE = ("siamese2", 2)
REWARD = "reward"
BASELINE = "tfidf_length_logreg"
TIE = arena.CLASS_NAMES.index("winner_tie")

root = Path(sys.argv[1])
frame = arena.read_arena_csv(arena.DEFAULT_TRAIN_CSV, labelled=True)
labels = frame["label"].to_numpy()
splits = splitting.fold_indices(frame, 3, 42)


def run_file(name: str, file: str) -> Path:
    """ROOT/NAME/FILE as cross-validation wrote it, else the committed copy ROOT/NAME.FILE (the
    fold-averaging files of `fold_average.sh`, ROOT/nested/FILE, are committed as ROOT/FILE)."""
    written = root / name / file
    if written.exists():
        return written
    return root / (file if name == "nested" else f"{name}.{file}")


def epoch_probs(name: str, epoch: float) -> np.ndarray:
    return oof_probs(name, crossval.epoch_oof_file(epoch))


def oof_probs(name: str, file: str) -> np.ndarray:
    path = run_file(name, file)
    return read_probabilities(path).aligned(frame["id"], str(path))


def paired(probs: np.ndarray, other: np.ndarray) -> str:
    d = metrics.row_log_loss(probs, labels) - metrics.row_log_loss(other, labels)
    return f"{d.mean():+.4f} ({metrics.standard_error(d):.4f})"


def nested(probs: list[np.ndarray]) -> np.ndarray:
    return ensemble.nested_predictions(probs, labels, splits)


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def configuration(name: str, reference: np.ndarray, reference_calibrated: np.ndarray) -> dict:
    e1, e2 = epoch_probs(name, 1), epoch_probs(name, 2)
    calibrated = nested([e2])
    return {
        "epoch_log_loss": [metrics.log_loss(e1, labels), metrics.log_loss(e2, labels)],
        "nested_temperature": metrics.log_loss(calibrated, labels),
        "nested_epoch_blend": metrics.log_loss(nested([e1, e2]), labels),
        "mean_tie_probability": float(e2[:, TIE].mean()),
        "minus_default": paired(e2, reference),
        "calibrated_minus_default": paired(calibrated, reference_calibrated),
        "minus_baseline": epoch_entry(name, "epoch_minus_baseline", 2)[BASELINE],
    }


def epoch_entry(name: str, key: str, epoch: float):
    """cv.json's `key` list at `epoch` (runs before --validations-per-epoch list epochs 1..)."""
    cv = json.loads(run_file(name, "cv.json").read_text())
    epochs = cv.get("epochs") or list(range(1, len(cv[key]) + 1))
    return cv[key][epochs.index(epoch)]


def configurations_table(result: dict) -> str:
    reference = epoch_probs(*REFERENCE)
    reference_calibrated = nested([reference])
    rows = []
    for name, label in CONFIGURATIONS.items():
        if not run_file(name, "oof-epoch2.csv").exists():
            continue
        row = result["configurations"][name] = configuration(name, reference, reference_calibrated)
        base = row["minus_baseline"]
        versus = ["—", "—"] if name == REFERENCE[0] else [
            row["minus_default"], row["calibrated_minus_default"]
        ]  # fmt: skip
        rows.append([
            label, *(f"{v:.4f}" for v in row["epoch_log_loss"]),
            f"{row['nested_temperature']:.4f}", f"{row['nested_epoch_blend']:.4f}",
            f"{row['mean_tie_probability']:.3f}", *versus,
            f"{base['log_loss']:+.4f} ({base['se']:.4f})",
        ])  # fmt: skip
    head = [
        "configuration", "epoch 1", "epoch 2", "epoch 2, nested temperature",
        "epochs 1+2, nested blend", "mean P(tie), epoch 2", "epoch 2 − default's",
        "nested temperature − default's", "epoch 2 − TF-IDF + length",
    ]  # fmt: skip
    return table(head, rows)


def selection_line(result: dict) -> str:
    found = [n for n in SELECTABLE if n in result["configurations"]]
    names = [f"{n} epoch {e}" for n in found for e in (1, 2)]
    candidates = [epoch_probs(n, e) for n in found for e in (1, 2)]
    picks, selected = ensemble.nested_selection(names, candidates, labels, splits)
    chosen = result["nested_selection"] = {
        "candidates": names,
        "picks": picks,
        "log_loss": metrics.log_loss(selected, labels),
        "minus_default": paired(selected, epoch_probs(*REFERENCE)),
    }
    return (
        f"Nested selection among {len(names)} (configuration, epoch) candidates: picks "
        f"{picks}, log loss {chosen['log_loss']:.4f}, − default epoch 2 {chosen['minus_default']}"
    )


def learning_curve_table(result: dict) -> str:
    rows = []
    for name, fraction in LEARNING_CURVE.items():
        if not run_file(name, "oof-epoch2.csv").exists():
            continue
        cv = json.loads(run_file(name, "cv.json").read_text())
        e2 = epoch_probs(name, 2)
        point = result["learning_curve"][fraction] = {
            "train_rows": cv.get("train_rows") or [len(t) for t, _ in splits],
            "epoch2": metrics.log_loss(e2, labels),
            "nested_temperature": metrics.log_loss(nested([e2]), labels),
            "length_logreg": cv["scores"]["length_logreg"]["log_loss"],
            BASELINE: cv["scores"][BASELINE]["log_loss"],
            "minus_baseline": epoch_entry(name, "epoch_minus_baseline", 2)[BASELINE],
        }
        d = point["minus_baseline"]
        rows.append([
            str(round(np.mean(point["train_rows"]))), f"{point['epoch2']:.4f}",
            f"{point['nested_temperature']:.4f}", f"{point['length_logreg']:.4f}",
            f"{point[BASELINE]:.4f}", f"{d['log_loss']:+.4f} ({d['se']:.4f})",
        ])  # fmt: skip
    head = [
        "training rows per fold", "model, epoch 2", "nested temperature", "length LR",
        "TF-IDF + length", "model epoch 2 − TF-IDF + length",
    ]  # fmt: skip
    curve = result["learning_curve"]
    x = np.log2([np.mean(p["train_rows"]) for p in curve.values()])
    slope = result["slope_per_doubling"] = np.polyfit(
        x, [p["nested_temperature"] for p in curve.values()], 1
    )[0]
    return (
        f"{table(head, rows)}\n\nLeast-squares slope of the nested-temperature log loss: "
        f"{slope:+.4f} per doubling of the training rows"
    )


def stop_point_table(result: dict) -> str:
    """Each quarter-epoch validation's score, and the stop point chosen on the other folds."""
    cv = json.loads(run_file(STOPS, "cv.json").read_text())
    points = [epoch_probs(STOPS, e) for e in cv["epochs"]]
    reference = epoch_probs(*REFERENCE)
    names = [f"epoch {e:g}" for e in cv["epochs"]]
    picks, selected = ensemble.nested_selection(names, points, labels, splits)
    stops = result["stop_points"] = {
        "epochs": cv["epochs"],
        "log_loss": [metrics.log_loss(p, labels) for p in points],
        "nested_temperature": [metrics.log_loss(nested([p]), labels) for p in points],
        "picks": picks,
        "selected_log_loss": metrics.log_loss(selected, labels),
        "selected_nested_temperature": metrics.log_loss(nested([selected]), labels),
        "selected_minus_default": paired(selected, reference),
        "selected_minus_own_epoch2": paired(selected, epoch_probs(STOPS, 2)),
        "last_four_nested_blend": metrics.log_loss(nested(points[-4:]), labels),
    }
    rows = [
        [name, f"{a:.4f}", f"{b:.4f}"]
        for name, a, b in zip(names, stops["log_loss"], stops["nested_temperature"], strict=True)
    ]
    return (
        f"{table(['validation', 'log loss', 'nested temperature'], rows)}\n\n"
        f"Stop point chosen on the other folds: {picks}; log loss "
        f"{stops['selected_log_loss']:.4f} ({stops['selected_nested_temperature']:.4f} with a "
        f"nested temperature), − the default's epoch 2 {stops['selected_minus_default']}, − "
        f"its own epoch 2 {stops['selected_minus_own_epoch2']}. The last four points (epochs "
        f"1.25-2) blended with nested weights: {stops['last_four_nested_blend']:.4f}"
    )


def cross_table(result: dict) -> str:
    """The cross-encoder with and without the HH-RLHF rows: selected, calibrated oof.csv."""
    rows, without = [], oof_probs("cross", probabilities.OOF_FILE)
    for name, label in CROSS.items():
        if not run_file(name, "cv.json").exists():
            continue
        cv = json.loads(run_file(name, "cv.json").read_text())
        probs = oof_probs(name, probabilities.OOF_FILE)
        row = result["cross"][name] = {
            "log_loss": metrics.log_loss(probs, labels),
            "epoch_log_loss": cv["epoch_log_loss"],
            "minus_cross": paired(probs, without),
        }
        versus = "—" if name == "cross" else row["minus_cross"]
        rows.append([
            label, f"{row['log_loss']:.4f}", *(f"{v:.4f}" for v in row["epoch_log_loss"]), versus
        ])  # fmt: skip
    head = ["configuration", "selected, calibrated", "epoch 1", "epoch 2", "− cross-encoder"]
    return table(head, rows)


def fold_averaging_table(result: dict) -> str:
    """The inner models of `nested_teachers.sh` averaged (predictions or weights) on the rows
    none of them saw, beside one model trained on all those rows (the default's epoch 2)."""
    reference = epoch_probs(*REFERENCE)
    calibrated_reference = nested([reference])
    rows = [["one model on all 667 rows (the default, epoch 2)",
             f"{metrics.log_loss(reference, labels):.4f}",
             f"{metrics.log_loss(calibrated_reference, labels):.4f}", "—", "—"]]  # fmt: skip
    for file, label in FOLD_AVERAGING.items():
        probs = oof_probs("nested", file)
        calibrated = nested([probs])
        row = result["fold_averaging"][file] = {
            "log_loss": metrics.log_loss(probs, labels),
            "nested_temperature": metrics.log_loss(calibrated, labels),
            "minus_default": paired(probs, reference),
            "calibrated_minus_default": paired(calibrated, calibrated_reference),
        }
        rows.append([
            label, f"{row['log_loss']:.4f}", f"{row['nested_temperature']:.4f}",
            row["minus_default"], row["calibrated_minus_default"],
        ])  # fmt: skip
    predictions, weights = (nested([oof_probs("nested", f)]) for f in FOLD_AVERAGING)
    versus = result["fold_averaging"]["weights_minus_predictions"] = paired(weights, predictions)
    head = ["model", "log loss", "nested temperature", "− default", "nested temp. − default's"]
    return f"{table(head, rows)}\n\nMean weights − mean predictions, nested temperature: {versus}"


def pairwise_table(result: dict) -> str:
    """Pairwise accuracy (rows with a winner: the winner the more probable side) of the reward
    model and the default at epoch 2 and of the baselines, with the paired difference."""
    decided = labels != TIE
    reward, default = epoch_probs(REWARD, 2), epoch_probs(*REFERENCE)

    def correct(probs: np.ndarray) -> np.ndarray:
        winner = labels[decided]
        rows = np.flatnonzero(decided)
        return probs[rows, winner] > probs[rows, np.asarray(arena.MIRROR)[winner]]

    predictors = {"reward model, epoch 2": reward, "default, epoch 2": default}
    fitted = baselines.baseline_predictions(frame, splits)
    predictors |= {name: fitted[name] for name in ("length_logreg", BASELINE)}
    rows, accuracy = [], {}
    result["pairwise_accuracy"] = accuracy
    for name, probs in predictors.items():
        accuracy[name] = metrics.pairwise_accuracy(probs, labels)
        rows.append([name, f"{accuracy[name]:.3f}"])
    d = correct(reward).astype(float) - correct(default)
    versus = result["pairwise_accuracy"]["reward_minus_default"] = {
        "difference": float(d.mean()), "se": metrics.standard_error(d), "rows": int(decided.sum())
    }  # fmt: skip
    return (
        f"{table(['predictor', 'pairwise accuracy'], rows)}\n\nReward model − default on the "
        f"{versus['rows']} rows with a winner: {versus['difference']:+.3f} "
        f"(paired SE {versus['se']:.3f})"
    )


result: dict = {"configurations": {}, "learning_curve": {}, "cross": {}, "fold_averaging": {}}
print(configurations_table(result), selection_line(result), learning_curve_table(result),
      stop_point_table(result), cross_table(result), fold_averaging_table(result),
      pairwise_table(result), sep="\n\n")  # fmt: skip
(root / "analysis.json").write_text(json.dumps(result, indent=2) + "\n")
