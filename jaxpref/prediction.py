"""Inference: rebuild a trained model from its run directory, predict, write submission.csv."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from jaxpref import backbones, calibration, data, distribution, pipeline, text
from jaxpref.config import BEST_CHECKPOINT_DIR, PRESET_DIR, TrainConfig


class RunDirError(RuntimeError):
    """The run directory lacks something inference needs."""


def _require(path: Path) -> Path:
    if not path.exists():
        raise RunDirError(f"{path} is missing; is this the run directory of a finished training?")
    return path


def load_run(run_dir: str | os.PathLike):
    """(model with the best weights, PairEncoder, TrainConfig) from a run directory.

    The distribution must already be set (`distribution.set_data_parallel`) so that the
    restored weights land on every device.
    """
    import keras

    from jaxpref import model as model_lib

    run_dir = Path(run_dir).resolve()  # Orbax wants absolute paths
    cfg = TrainConfig.from_json(_require(run_dir / "config.json"))
    checkpoint = _require(run_dir / BEST_CHECKPOINT_DIR)
    model_lib.set_precision(cfg.precision)
    keras.utils.set_random_seed(cfg.seed)  # identical initial values on every process
    preset = str(_require(run_dir / PRESET_DIR))
    backbone = backbones.load_backbone(preset, dtype=cfg.precision, load_weights=False)
    if cfg.lora_rank > 0:
        backbone.enable_lora(cfg.lora_rank)
    model = model_lib.build_model(
        backbone,
        dropout=cfg.dropout,
        head=cfg.head,
        side_features=pipeline.NUM_SIDE_FEATURES if cfg.side_features else 0,
    )
    # Orbax restores into the compiled state tree (keras needs the optimizer attribute).
    model_lib.compile_model(model, cfg.learning_rate or 1e-4, cfg.label_smoothing)
    model.load_weights(str(checkpoint))
    preprocessor = backbones.load_preprocessor(preset, cfg.sequence_length)
    encoder = pipeline.PairEncoder(preprocessor, model_lib.backbone_input_keys(backbone))
    return model, encoder, cfg


def predict_tokens(
    model,
    tokens: pipeline.TokenizedPairs,
    plan,
    input_keys,
    tta: bool = False,
    extra: np.ndarray | None = None,
) -> np.ndarray:
    """Class probabilities (n, 3) for every tokenized row, in input order; none dropped.

    `extra` holds the per-side features for models built with them. With `tta`, each row is
    also predicted with its sides swapped and the mirrored prediction averaged in: the result
    then mirrors exactly when A and B are swapped.
    """
    if tta:
        direct = predict_tokens(model, tokens, plan, input_keys, extra=extra)
        swapped_extra = None if extra is None else extra[:, ::-1]
        swapped = predict_tokens(
            model, pipeline.swap_sides(tokens), plan, input_keys, extra=swapped_extra
        )
        return (direct + swapped[:, pipeline.MIRROR]) / 2
    import jax

    ds = pipeline.make_dataset(
        tokens, [plan], input_keys, None, jax.process_index(), jax.process_count(), extra
    )
    probs = np.asarray(model.predict(ds, verbose=1 if sys.stdout.isatty() else 0), "float64")
    rows = np.concatenate([b.rows for b in plan])
    real = np.concatenate([b.weights for b in plan]) > 0
    out = np.full((len(tokens), probs.shape[1]), np.nan)
    out[rows[real]] = probs[real]
    if np.isnan(out).any():
        raise RuntimeError("some rows received no prediction")
    return out


def predict_frame(
    model, encoder, frame: pd.DataFrame, batch_size: int, tta: bool = False
) -> np.ndarray:
    """Class probabilities (n, 3) for every row of `frame`, in order."""
    texts = text.format_pairs(frame)
    tokens = pipeline.tokenize(texts, encoder, pipeline.default_cache_dir())
    extra = None
    if pipeline.SIDE_FEATURES in model.input:
        extra = pipeline.side_features(texts, tokens)
    buckets = pipeline.bucket_lengths(encoder.sequence_length)
    plan = pipeline.plan_batches(tokens.row_lengths(), batch_size, buckets)
    return predict_tokens(model, tokens, plan, encoder.input_keys, tta, extra)


def write_submission(ids, probs: np.ndarray, path: str | os.PathLike) -> Path:
    """Write `id,winner_model_a,winner_model_b,winner_tie` atomically (temp file + rename)."""
    probs = np.asarray(probs, dtype="float64")
    if not np.all(np.isfinite(probs)):
        raise ValueError("predictions contain non-finite values")
    probs = probs / probs.sum(axis=1, keepdims=True)
    frame = pd.DataFrame(probs, columns=list(data.LABEL_COLUMNS))
    frame.insert(0, "id", list(ids))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            frame.to_csv(handle, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def infer(
    run_dir: str | os.PathLike,
    test_csv: str | os.PathLike,
    output: str | os.PathLike,
    batch_size: int | None = None,
    devices: str = "auto",
    num_devices: int | None = None,
    tta: bool = False,
) -> Path:
    """Predict every row of `test_csv` with the run's best weights and write the submission."""
    import jax

    distribution.hide_accelerators_from_tensorflow()
    frame = data.read_arena_csv(test_csv, labelled=False)
    selected = distribution.select_devices(devices, num_devices)
    distribution.set_data_parallel(selected)
    model, encoder, cfg = load_run(run_dir)
    batch_size = batch_size or cfg.batch_size
    distribution.check_batch_size(batch_size, len(selected), jax.process_count())
    probs = predict_frame(model, encoder, frame, batch_size, tta)
    probs = calibration.apply_temperature(probs, calibration.load_temperature(run_dir))
    return write_submission(frame["id"], probs, output)
