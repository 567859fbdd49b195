"""Pairwise accuracy of a reward run on its validation rows beside the length and TF-IDF
baselines (fitted on its training rows), with the paired standard error of each difference:
what `jaxpref evaluate RUN` reports, plus the paired SEs it does not print.

    python experiments/reward/hh_pairwise.py runs/hh-reward helpful-base_test.jsonl.gz
"""

import json
import sys

import numpy as np
import pandas as pd

from jaxpref.data import sources
from jaxpref.data.probabilities import read_probabilities
from jaxpref.scoring import baselines, metrics

run, data = sys.argv[1], sys.argv[2]
frame = sources.read_rows(data)
split = pd.read_csv(f"{run}/split.csv", dtype=str)
train = frame[frame["id"].isin(set(split["id"][split["split"] == "train"]))]
valid = frame[frame["id"].isin(set(split["id"][split["split"] == "valid"]))]
valid = valid.reset_index(drop=True)
labels = valid["label"].to_numpy()
model = read_probabilities(f"{run}/valid_predictions.csv").aligned(valid["id"], run)
predictors = {"model": model, **baselines.predict_baselines(baselines.fit_baselines(train), valid)}


def correct(probs: np.ndarray) -> np.ndarray:
    """1 where the chosen response is the more probable side (chosen/rejected rows never tie)."""
    rows = np.arange(len(labels))
    return (probs[rows, labels] > probs[rows, 1 - labels]).astype(float)


result = {"train_rows": len(train), "valid_rows": len(valid)}
for name, probs in predictors.items():
    right, versus = correct(probs), correct(model) - correct(probs)
    result[name] = {
        "pairwise_accuracy": right.mean(),
        "se": metrics.standard_error(right),
        "model_minus": versus.mean(),
        "paired_se": metrics.standard_error(versus),
    }
    print(f"{name}: {right.mean():.3f} ({result[name]['se']:.3f}); model − it "
          f"{versus.mean():+.3f} ({result[name]['paired_se']:.3f})")  # fmt: skip
print(json.dumps(result, indent=2))
