"""Blend several predictors' out-of-fold predictions into one (`jaxpref ensemble`).

The blend is log-linear, softmax(sum_k w_k log p_k + b), with weights w_k >= 0 and a per-class
bias b, fitted to minimise log loss (scipy's L-BFGS-B with the exact gradient). Weights scored
on the rows they were fitted on flatter the blend, so the reported score is nested: for each
fold (grouped by prompt), the weights are fitted on the other folds' rows and predict the
held-out ones. The saved weights are then refitted on every row. Picking the best of several
configurations by their out-of-fold scores flatters the winner the same way, so the report also
holds a nested selection: each fold's rows are predicted by the predictor that scores best on
the other folds. The inputs must be out-of-fold predictions (each row predicted by a model that
did not train on it), such as the `oof.csv` of cross_validate.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.optimize

from jaxpref.config import ConfigError
from jaxpref.data import probabilities, sources, splitting
from jaxpref.data.arena import NUM_CLASSES, DataError
from jaxpref.data.probabilities import read_probabilities
from jaxpref.scoring import baselines, metrics

BLEND_FILE = "blend.json"
SUBMISSION_FILE = "submission.csv"
"""The nested blend's out-of-fold predictions: a teacher file for `--soft-labels`."""
BLENDED_BASELINES = tuple(n for n in baselines.BASELINE_NAMES if n != "class_prior")
"""Baselines `--baselines` adds; the blend's bias already is a class prior."""
BLEND = "blend"


@dataclasses.dataclass(frozen=True)
class Blend:
    """Fitted blend weights (one per predictor) and per-class bias (the last class's is 0)."""

    weights: np.ndarray
    bias: np.ndarray

    def predict(self, probs: Sequence[np.ndarray]) -> np.ndarray:
        """(n, 3) blended probabilities of the predictors' (n, 3) probabilities, in order."""
        logits = np.tensordot(self.weights, log_probabilities(probs), axes=1) + self.bias
        return np.exp(log_softmax(logits))


def log_probabilities(probs: Sequence[np.ndarray]) -> np.ndarray:
    """(m, n, 3) logs of m predictors' probabilities, clipped as the metric clips them."""
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in probs])
    return np.log(np.clip(stacked, metrics.CLIP, 1.0))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def fit_blend(probs: Sequence[np.ndarray], labels: np.ndarray) -> Blend:
    """The weights (>= 0) and bias with the least log loss of the blend on these rows."""
    logs = log_probabilities(probs)
    count = len(logs)
    one_hot = np.eye(NUM_CLASSES)[np.asarray(labels)]

    def unpack(params: np.ndarray) -> Blend:
        return Blend(params[:count], np.append(params[count:], 0.0))

    def loss_and_gradient(params: np.ndarray) -> tuple[float, np.ndarray]:
        blend = unpack(params)
        log_p = log_softmax(np.tensordot(blend.weights, logs, axes=1) + blend.bias)
        residual = (np.exp(log_p) - one_hot) / len(one_hot)
        gradient = np.concatenate(
            [np.einsum("knc,nc->k", logs, residual), residual.sum(axis=0)[:-1]]
        )
        return float(-np.sum(one_hot * log_p) / len(one_hot)), gradient

    start = np.concatenate([np.full(count, 1.0 / count), np.zeros(NUM_CLASSES - 1)])
    bounds = [(0.0, None)] * count + [(None, None)] * (NUM_CLASSES - 1)
    fitted = scipy.optimize.minimize(
        loss_and_gradient, start, jac=True, method="L-BFGS-B", bounds=bounds
    )
    return unpack(fitted.x)


def nested_predictions(probs: Sequence[np.ndarray], labels: np.ndarray, splits: list) -> np.ndarray:
    """(n, 3) blend predictions, each fold's rows by weights fitted on the other folds only."""
    out = np.full((len(labels), NUM_CLASSES), np.nan)
    for fit_rows, held_rows in splits:
        blend = fit_blend([p[fit_rows] for p in probs], labels[fit_rows])
        out[held_rows] = blend.predict([p[held_rows] for p in probs])
    return out


def nested_selection(
    names: Sequence[str], probs: Sequence[np.ndarray], labels: np.ndarray, splits: list
) -> tuple[list[str], np.ndarray]:
    """The predictor picked for each fold (least log loss on the other folds' rows) and the (n, 3)
    predictions it makes there: the honest score of choosing among configurations."""
    out = np.full((len(labels), NUM_CLASSES), np.nan)
    picks = []
    for fit_rows, held_rows in splits:
        losses = [metrics.log_loss(p[fit_rows], labels[fit_rows]) for p in probs]
        best = int(np.argmin(losses))
        picks.append(names[best])
        out[held_rows] = probs[best][held_rows]
    return picks, out


def blend_report(
    names: Sequence[str], probs: Sequence[np.ndarray], labels: np.ndarray, splits: list
) -> tuple[dict, Blend, np.ndarray]:
    """The blend.json record, the blend refitted on every row and the nested blend's (n, 3)
    out-of-fold predictions.

    `log_loss` holds each predictor's and the nested blend's out-of-fold log loss;
    `blend_minus_best` (and `blend_minus_each`) the mean per-row difference of the nested blend
    to the best single predictor (to each) with its paired standard error; `selection` the
    nested selection's picks per fold, log loss and differences to each predictor.
    """
    labels = np.asarray(labels)
    nested = nested_predictions(probs, labels, splits)
    table = metrics.score_table(nested, dict(zip(names, probs, strict=True)), labels)
    singles = {name: table["scores"][name]["log_loss"] for name in names}
    best = min(singles, key=singles.get)
    blend = fit_blend(probs, labels)
    picks, selected = nested_selection(names, probs, labels, splits)
    chosen = metrics.score_table(selected, dict(zip(names, probs, strict=True)), labels)
    record = {
        "models": list(names),
        "weights": dict(zip(names, blend.weights.tolist(), strict=True)),
        "bias": blend.bias.tolist(),
        "folds": len(splits),
        "rows": len(labels),
        "log_loss": {**singles, BLEND: table["scores"][metrics.MODEL]["log_loss"]},
        "blend_log_loss_se": table["model_log_loss_se"],
        "in_sample_blend_log_loss": metrics.log_loss(blend.predict(probs), labels),
        "best_single": best,
        "blend_minus_best": table["model_minus_baseline"][best],
        "blend_minus_each": table["model_minus_baseline"],
        "selection": {
            "picks": picks,
            "log_loss": chosen["scores"][metrics.MODEL]["log_loss"],
            "log_loss_se": chosen["model_log_loss_se"],
            "minus_each": chosen["model_minus_baseline"],
        },
    }
    return record, blend, nested


def run_ensemble(
    predictions: Sequence[str],
    train_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    folds: int = 5,
    seed: int = 42,
    with_baselines: bool = False,
    test_predictions: Sequence[str] = (),
    test_csv: str | os.PathLike | None = None,
) -> dict:
    """Fit and score the blend of `predictions` (out-of-fold files covering every row of the
    labelled `train_csv`, plus the baselines' out-of-fold predictions `with_baselines`); write
    `blend.json` and the nested blend's out-of-fold predictions (`oof.csv`, a teacher for
    `--soft-labels`) to `out_dir` and, given `test_predictions` (one per file of `predictions`,
    in the same order), the blended `submission.csv` there. Returns the blend.json record."""
    check_arguments(predictions, folds, with_baselines, test_predictions, test_csv)
    frame = sources.read_rows(train_csv)
    names = [os.fspath(p) for p in predictions]
    probs = [read_probabilities(p).aligned(frame["id"], os.fspath(train_csv)) for p in names]
    splits = splitting.fold_indices(frame, folds, seed)
    if with_baselines:
        oof = baselines.baseline_predictions(frame, splits)
        names += list(BLENDED_BASELINES)
        probs += [oof[name] for name in BLENDED_BASELINES]
    result, blend, nested = blend_report(names, probs, frame["label"].to_numpy(), splits)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    oof = out / probabilities.OOF_FILE
    result["oof"] = str(probabilities.write_submission(frame["id"], nested, oof))
    if test_predictions:
        train_df = frame if with_baselines else None
        path = blend_test(blend, test_predictions, train_df, test_csv, out / SUBMISSION_FILE)
        result["submission"] = str(path)
    (out / BLEND_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def check_arguments(
    predictions: Sequence[str],
    folds: int,
    with_baselines: bool,
    test_predictions: Sequence[str],
    test_csv: str | os.PathLike | None,
) -> None:
    """ConfigError for inconsistent arguments (before any file is read)."""
    if folds < 2:
        raise ConfigError(f"--folds {folds}: must be at least 2")
    repeated = sorted({os.fspath(p) for p in predictions if list(predictions).count(p) > 1})
    if repeated:
        raise ConfigError(f"{repeated[0]}: given twice")
    if test_predictions and len(test_predictions) != len(predictions):
        raise ConfigError(
            f"--test-predictions: {len(test_predictions)} file(s) for {len(predictions)} "
            "out-of-fold file(s); give one per model, in the same order"
        )
    if test_predictions and with_baselines and not test_csv:
        raise ConfigError("--baselines with --test-predictions needs --test-csv (the test rows)")


def blend_test(
    blend: Blend,
    paths: Sequence[str],
    train_df: pd.DataFrame | None,
    test_csv: str | os.PathLike | None,
    output: Path,
) -> Path:
    """Write the blended submission of the models' test predictions (ids of the first file, in
    its order); with `train_df`, the baselines are refitted on it and predict `test_csv`."""
    files = [read_probabilities(p) for p in paths]
    ids = files[0].ids
    probs = [f.aligned(ids, files[0].path) for f in files]
    if train_df is not None:
        test = sources.read_rows(test_csv, labelled=False)
        if set(test["id"]) != set(ids):
            raise DataError(test_csv, f"ids differ from those of {files[0].path}")
        test = test.set_index("id", drop=False).loc[list(ids)].reset_index(drop=True)
        fitted = baselines.fit_baselines(train_df)
        predicted = baselines.predict_baselines(fitted, test)
        probs += [predicted[name] for name in BLENDED_BASELINES]
    return probabilities.write_submission(ids, blend.predict(probs), output)


def summary(result: dict) -> str:
    """A few lines for the terminal: nested blend score against the best single model."""
    diff, chosen = result["blend_minus_best"], result["selection"]
    lines = [
        f"{result['rows']} rows, {result['folds']} nested folds",
        *(f"  {name}: log loss {result['log_loss'][name]:.4f}, weight {w:.3f}"
          for name, w in result["weights"].items()),
        f"blend: log loss {result['log_loss'][BLEND]:.4f} (out of fold, nested); "
        f"minus the best single model ({result['best_single']}): {diff['log_loss']:+.4f} "
        f"± {diff['se'] or 0:.4f}",
        f"nested selection (the best on the other folds; picks {', '.join(chosen['picks'])}): "
        f"log loss {chosen['log_loss']:.4f}",
    ]  # fmt: skip
    return "\n".join(lines)
