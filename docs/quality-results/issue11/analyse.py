"""Selection-free tables of docs/quality.md (regularization, learning curve), from the
cross-validation directories that `cross_validate.py --folds 3` wrote under ROOT.

    python docs/quality-results/issue11/analyse.py ROOT > table.md   (writes ROOT/analysis.json)

Every score here chooses nothing on the rows it scores: each epoch's uncalibrated predictions
(`oof-epoch<e>.csv`), the same after a temperature and bias fitted on the other folds (a nested
one-input blend), epochs 1 and 2 blended with nested weights (prediction averaging over
checkpoints), and a nested selection among all configurations and epochs (`jaxpref ensemble`).
"""

import json
import sys
from pathlib import Path

import numpy as np

from jaxpref import crossval, data, ensemble, metrics
from jaxpref.probabilities import read_probabilities

REGULARIZATION = {
    "siamese2": "siamese, current defaults",
    "wd1": "`--weight-decay 1.0`",
    "rank2": "`--lora-rank 2` (fewer trainable weights)",
}
LEARNING_CURVE = {"lc025": 0.25, "lc050": 0.5, "lc075": 0.75, "siamese2": 1.0}
REFERENCE = ("siamese2", 2)
BASELINE = "tfidf_length_logreg"

root = Path(sys.argv[1])
frame = data.read_arena_csv(data.DEFAULT_TRAIN_CSV, labelled=True)
labels = frame["label"].to_numpy()
splits = crossval.fold_indices(frame, 3, 42)


def epoch_probs(name: str, epoch: int) -> np.ndarray:
    path = root / name / crossval.epoch_oof_file(epoch)
    return read_probabilities(path).aligned(frame["id"], str(path))


def paired(probs: np.ndarray, other: np.ndarray) -> str:
    d = metrics.row_log_loss(probs, labels) - metrics.row_log_loss(other, labels)
    return f"{d.mean():+.4f} ({metrics.standard_error(d):.4f})"


def nested(probs: list[np.ndarray]) -> np.ndarray:
    return ensemble.nested_predictions(probs, labels, splits)


reference = epoch_probs(*REFERENCE)
found = [n for n in REGULARIZATION if (root / n / "oof-epoch2.csv").exists()]
result: dict = {"configurations": {}, "learning_curve": {}}
print("| configuration | epoch 1 | epoch 2 | epoch 2, nested temperature | epochs 1+2, nested blend "
      "| epoch 2 − default's | nested temperature − default's | epoch 2 − TF-IDF + length |")
print("|---|---|---|---|---|---|---|---|")
reference_calibrated = nested([reference])
for name in found:
    e1, e2 = epoch_probs(name, 1), epoch_probs(name, 2)
    cv = json.loads((root / name / "cv.json").read_text())
    calibrated, averaged = nested([e2]), nested([e1, e2])
    row = {
        "epoch_log_loss": [metrics.log_loss(e1, labels), metrics.log_loss(e2, labels)],
        "nested_temperature": metrics.log_loss(calibrated, labels),
        "nested_epoch_blend": metrics.log_loss(averaged, labels),
        "minus_default": paired(e2, reference),
        "calibrated_minus_default": paired(calibrated, reference_calibrated),
        "minus_baseline": cv["epoch_minus_baseline"][1][BASELINE],
    }
    result["configurations"][name] = row
    base = row["minus_baseline"]
    print(f"| {REGULARIZATION[name]} | {row['epoch_log_loss'][0]:.4f} | {row['epoch_log_loss'][1]:.4f} "
          f"| {row['nested_temperature']:.4f} | {row['nested_epoch_blend']:.4f} "
          f"| {'—' if name == REFERENCE[0] else row['minus_default']} "
          f"| {'—' if name == REFERENCE[0] else row['calibrated_minus_default']} "
          f"| {base['log_loss']:+.4f} ({base['se']:.4f}) |")

names = [f"{n} epoch {e}" for n in found for e in (1, 2)]
candidates = [epoch_probs(n, e) for n in found for e in (1, 2)]
picks, selected = ensemble.nested_selection(names, candidates, labels, splits)
result["nested_selection"] = {
    "candidates": names, "picks": picks, "log_loss": metrics.log_loss(selected, labels),
    "minus_default": paired(selected, reference),
}
print(f"\nNested selection among {len(names)} (configuration, epoch) candidates: picks {picks}, "
      f"log loss {result['nested_selection']['log_loss']:.4f}, − default epoch 2 "
      f"{result['nested_selection']['minus_default']}")

print("\n| training rows per fold | model, epoch 2 | nested temperature | length LR | TF-IDF + length "
      "| model − TF-IDF + length |")
print("|---|---|---|---|---|---|")
for name, fraction in LEARNING_CURVE.items():
    if not (root / name / "oof-epoch2.csv").exists():
        continue
    cv = json.loads((root / name / "cv.json").read_text())
    e2 = epoch_probs(name, 2)
    rows = cv.get("train_rows") or [len(t) for t, _ in splits]
    point = {
        "train_rows": rows,
        "epoch2": metrics.log_loss(e2, labels),
        "nested_temperature": metrics.log_loss(nested([e2]), labels),
        "length_logreg": cv["scores"]["length_logreg"]["log_loss"],
        BASELINE: cv["scores"][BASELINE]["log_loss"],
        "minus_baseline": cv["epoch_minus_baseline"][1][BASELINE],
    }
    result["learning_curve"][fraction] = point
    d = point["minus_baseline"]
    print(f"| {round(np.mean(rows))} | {point['epoch2']:.4f} | {point['nested_temperature']:.4f} "
          f"| {point['length_logreg']:.4f} | {point[BASELINE]:.4f} | {d['log_loss']:+.4f} ({d['se']:.4f}) |")
curve = result["learning_curve"]
if len(curve) >= 2:
    x = np.log2([np.mean(p["train_rows"]) for p in curve.values()])
    slope, _ = np.polyfit(x, [p["nested_temperature"] for p in curve.values()], 1)
    result["slope_per_doubling"] = slope
    print(f"\nLeast-squares slope of the nested-temperature log loss: {slope:+.4f} per doubling of "
          "the training rows")
(root / "analysis.json").write_text(json.dumps(result, indent=2) + "\n")
