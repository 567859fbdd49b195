"""Simple baselines that a preference model has to beat, scored with the same log loss.

Three predictors of increasing strength, all fitted on the training rows only:

- ``class_prior``: the training class frequencies for every row (the floor);
- ``length_logreg``: multinomial logistic regression on length and markdown features of each
  side's response (longer, better formatted answers win more often in the arena);
- ``tfidf_length_logreg``: the same plus the difference of the two responses' TF-IDF vectors,
  so that words, not only lengths, can move the prediction.

They use scikit-learn only (no JAX or Keras): seconds on the 1,000-row sample, a few minutes
on the competition's 57k rows, on CPU.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from jaxpref.data import text
from jaxpref.data.arena import NUM_CLASSES
from jaxpref.scoring.metrics import class_prior, log_loss

__all__ = [
    "BASELINE_NAMES",
    "LengthModel",
    "TfidfLengthModel",
    "fit_baselines",
    "fit_logistic_regression",
    "length_features",
    "predict_baselines",
]

BASELINE_NAMES = ("class_prior", "length_logreg", "tfidf_length_logreg")
RANDOM_STATE = 0
MAX_TFIDF_FEATURES = 20_000
MAX_ITER = 2_000
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
"""Inverse regularisation strengths tried; small data wants the small ones, 57k rows larger."""
HELD_OUT_FOLDS = 5


@dataclasses.dataclass(frozen=True)
class LengthModel:
    """The fitted parts of the length baseline."""

    scaler: StandardScaler
    classifier: LogisticRegression


@dataclasses.dataclass(frozen=True)
class TfidfLengthModel:
    """The fitted parts of the TF-IDF + length baseline."""

    vectorizer: TfidfVectorizer
    scaler: StandardScaler
    classifier: LogisticRegression


def length_features(pairs: dict[str, np.ndarray]) -> np.ndarray:
    """(n, 32) features from ``text.format_pairs`` output: per side, A−B and |A−B|, log1p scaled.

    Per side: response characters, words, lines, code blocks, markdown headers, list items,
    bold spans, and the context's characters. The signed difference lets a linear model prefer
    the longer side; the absolute difference lets it predict ties when the sides look alike.
    """
    a = text.side_counts(pairs, "a")
    b = text.side_counts(pairs, "b")
    return np.hstack([a, b, a - b, np.abs(a - b)])


def _logistic_regression(c: float) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=MAX_ITER, random_state=RANDOM_STATE)


def fit_logistic_regression(
    features: np.ndarray | sp.spmatrix, labels: np.ndarray
) -> LogisticRegression:
    """Multinomial logistic regression with C from ``C_GRID``, picked on training rows only.

    One stratified fifth of the rows is held out; the C with the lowest log loss there is
    refitted on every row. So the baseline is as regularised as its data size needs, without
    looking at the rows it will be scored on.
    """
    folds = StratifiedKFold(HELD_OUT_FOLDS, shuffle=True, random_state=RANDOM_STATE)
    fit_rows, held_rows = next(folds.split(np.zeros(len(labels)), labels))

    def held_out_log_loss(c: float) -> float:
        model = _logistic_regression(c).fit(features[fit_rows], labels[fit_rows])
        return log_loss(class_probabilities(model, features[held_rows]), labels[held_rows])

    return _logistic_regression(min(C_GRID, key=held_out_log_loss)).fit(features, labels)


def _tfidf_design(
    vectorizer: TfidfVectorizer, scaler: StandardScaler, pairs: dict, lengths: np.ndarray
) -> sp.csr_matrix:
    """TF-IDF(A) − TF-IDF(B), then the scaled length features."""
    diff = vectorizer.transform(pairs["response_a"]) - vectorizer.transform(pairs["response_b"])
    return sp.hstack([diff, sp.csr_matrix(scaler.transform(lengths))], format="csr")


def class_probabilities(classifier, features) -> np.ndarray:
    """(n, 3) probabilities, with zeros for a class absent from the training labels."""
    probs = np.zeros((features.shape[0], NUM_CLASSES))
    probs[:, classifier.classes_] = classifier.predict_proba(features)
    return probs


def fit_baselines(train_df: pd.DataFrame) -> dict[str, object]:
    """Fit every baseline on labelled rows (a ``data.read_arena_csv(..., labelled=True)`` frame).

    Returns ``{name: fitted}`` for the names in ``BASELINE_NAMES``; deterministic.
    """
    labels = train_df["label"].to_numpy()
    pairs = text.format_pairs(train_df)
    lengths = length_features(pairs)
    scaler = StandardScaler().fit(lengths)
    vectorizer = TfidfVectorizer(
        sublinear_tf=True, max_features=MAX_TFIDF_FEATURES, min_df=2, dtype=np.float32
    )
    vectorizer.fit(np.concatenate([pairs["response_a"], pairs["response_b"]]))
    # One BLAS thread: these problems are small, and competing BLAS thread pools slow lbfgs.
    with threadpool_limits(1, user_api="blas"):
        length_model = LengthModel(
            scaler, fit_logistic_regression(scaler.transform(lengths), labels)
        )
        design = _tfidf_design(vectorizer, scaler, pairs, lengths)
        tfidf_model = TfidfLengthModel(vectorizer, scaler, fit_logistic_regression(design, labels))
    return {
        "class_prior": class_prior(labels),
        "length_logreg": length_model,
        "tfidf_length_logreg": tfidf_model,
    }


def predict_baselines(fitted: dict[str, object], df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Probabilities (n, 3) of every fitted baseline for the rows of ``df``, in row order."""
    pairs = text.format_pairs(df)
    lengths = length_features(pairs)
    out: dict[str, np.ndarray] = {}
    for name, model in fitted.items():
        if name == "class_prior":
            probs = np.tile(model, (len(df), 1))
        elif name == "length_logreg":
            probs = class_probabilities(model.classifier, model.scaler.transform(lengths))
        elif name == "tfidf_length_logreg":
            design = _tfidf_design(model.vectorizer, model.scaler, pairs, lengths)
            probs = class_probabilities(model.classifier, design)
        else:
            raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINE_NAMES}")
        out[name] = np.asarray(probs, dtype=np.float64)
    return out


def baseline_predictions(frame: pd.DataFrame, splits: list) -> dict[str, np.ndarray]:
    """{baseline: (n, 3)} out-of-fold predictions, each baseline refitted per fold."""
    out: dict[str, np.ndarray] = {}
    for train_rows, valid_rows in splits:
        fitted = fit_baselines(frame.iloc[train_rows].reset_index(drop=True))
        valid_df = frame.iloc[valid_rows].reset_index(drop=True)
        for name, probs in predict_baselines(fitted, valid_df).items():
            out.setdefault(name, np.full((len(frame), NUM_CLASSES), np.nan))
            out[name][valid_rows] = probs
    return out
