"""Training: data -> pipeline -> siamese model -> fit with the best weights kept by Orbax.

A run directory holds everything inference needs:
    config.json        resolved TrainConfig (automatic choices filled in)
    preset/            keras-hub preset without weights: backbone config.json, tokenizer
                       assets and preprocessor config (the weights live in the checkpoint)
    checkpoints/best/  Orbax checkpoint of the weights with the lowest val_log_loss
    split.csv          which rows were used for training and validation
    history.csv        per-epoch metrics
    summary.json       best epoch and validation log loss
    valid_predictions.csv  the best weights' (calibrated) predictions for the validation rows
    calibration.json   the temperature fitted on them, with the log loss before and after
    train.log          the log
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from jaxpref import (
    backbones,
    calibration,
    checkpoints,
    data,
    distribution,
    hh_rlhf,
    pipeline,
    prediction,
    text,
)
from jaxpref.config import BEST_CHECKPOINT_DIR, PRESET_DIR, TrainConfig, resolve_precision

log = logging.getLogger("jaxpref")


def setup_logging(run_dir: Path | None, primary: bool = True) -> None:
    """Log to stderr, and to run_dir/train.log on the primary process."""
    log.setLevel(logging.INFO)
    log.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler()
    stream.setFormatter(fmt)
    log.addHandler(stream)
    if run_dir is not None and primary:
        file = logging.FileHandler(run_dir / "train.log")
        file.setFormatter(fmt)
        log.addHandler(file)
    log.propagate = False


def prior_log_loss(train_labels: np.ndarray, valid_labels: np.ndarray) -> float:
    """Log loss of always predicting the training class frequencies: the floor to beat."""
    prior = np.bincount(train_labels, minlength=3) + 1.0
    prior = prior / prior.sum()
    return float(-np.mean(np.log(prior[valid_labels])))


def _forget_epochs_from(run_dir: Path, epoch: int) -> None:
    """Before replaying epochs from `epoch` (0-based), drop what they wrote last time."""
    best_dir = run_dir / BEST_CHECKPOINT_DIR
    if best_dir.exists():
        for step in best_dir.iterdir():
            if step.name.isdigit() and int(step.name) >= epoch:
                shutil.rmtree(step)
    history = run_dir / "history.csv"
    if history.exists() and history.stat().st_size:
        frame = pd.read_csv(history)
        frame[frame["epoch"] < epoch].to_csv(history, index=False)
    elif history.exists():
        history.unlink()


def weights_fingerprint(model) -> str:
    """Sum and sum of squares of every weight: a cheap check that replicas agree."""
    values = [np.asarray(v.value, dtype=np.float32).ravel() for v in model.weights]
    total = sum(float(np.sum(v, dtype=np.float64)) for v in values)
    squares = sum(float(np.einsum("i,i->", v, v, dtype=np.float64)) for v in values)
    return f"{total:.10e}/{squares:.10e}"


_COMPILES = [0]


def _count_compiles(event: str, duration: float, **kwargs) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


@functools.cache
def _listen_for_compiles() -> None:
    import jax

    jax.monitoring.register_event_duration_secs_listener(_count_compiles)


def compile_counter():
    """A function returning how many XLA compilations happened since its previous call."""
    _listen_for_compiles()
    seen = [_COMPILES[0]]

    def since_last() -> int:
        new = _COMPILES[0] - seen[0]
        seen[0] = _COMPILES[0]
        return new

    return since_last


def epoch_logger():
    """A Keras callback that writes one log line per epoch, with its XLA compilations.

    Every padded length compiles the train step once; later epochs should compile nothing.
    """
    import keras

    compiles = compile_counter()
    started = [time.time()]

    def on_epoch_begin(epoch, logs=None):
        started[0] = time.time()

    def on_epoch_end(epoch, logs=None):
        items = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()))
        log.info(
            "epoch %d: %s (%.0f s, %d XLA compilations)",
            epoch + 1,
            items,
            time.time() - started[0],
            compiles(),
        )

    return keras.callbacks.LambdaCallback(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end)


def build_backbone(cfg: TrainConfig, dtype: str | None):
    """Pretrained backbone with LoRA adapters (rank 0 = every weight trains)."""
    backbone = backbones.load_backbone(cfg.preset, dtype=dtype)
    backbones.check_sequence_length(backbone, cfg.sequence_length)
    if cfg.lora_rank > 0:
        backbone.enable_lora(cfg.lora_rank)
    return backbone


def train(
    cfg: TrainConfig,
    train_df: pd.DataFrame | None = None,
    valid_df: pd.DataFrame | None = None,
    resume: bool = False,
) -> dict:
    """Train per `cfg` on every selected device; returns the summary written to summary.json.

    The split comes from `cfg.train_csv` unless both `train_df` and `valid_df` (frames as
    returned by `data.read_arena_csv`) are given, as cross-validation does. The process
    environment must already select the JAX backend and platform
    (`distribution.configure_environment`), as the CLI does. With `resume`, training continues
    from the newest state checkpoint in `cfg.run_dir` with the same data order.
    """
    import jax
    import keras

    from jaxpref import model as model_lib

    distribution.hide_accelerators_from_tensorflow()
    devices = distribution.select_devices(cfg.devices, cfg.num_devices)
    distribution.check_batch_size(cfg.batch_size, len(devices), jax.process_count())
    distribution.set_data_parallel(devices)
    keras.utils.set_random_seed(cfg.seed)
    primary = jax.process_index() == 0

    if not cfg.run_dir:
        if jax.process_count() > 1:
            raise distribution.DeviceError(
                "--run-dir is required with several processes (a directory every host shares)"
            )
        cfg = dataclasses.replace(cfg, run_dir=str(Path("runs") / time.strftime("%Y%m%d-%H%M%S")))
    run_dir = Path(cfg.run_dir).resolve()
    if not resume and (run_dir / "checkpoints").exists():
        raise checkpoints.ResumeError(
            f"{run_dir} already holds checkpoints; pass --resume to continue that run, "
            "or choose another --run-dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir, primary)
    cfg = dataclasses.replace(
        cfg,
        run_dir=str(run_dir),
        num_devices=len(devices),
        precision=resolve_precision(cfg.precision, distribution.platform_of(devices)),
        learning_rate=cfg.learning_rate or cfg.default_learning_rate(),
    )
    log.info(
        "devices: %d x %s over %d process(es); global batch %d; precision %s",
        len(devices),
        distribution.platform_of(devices),
        jax.process_count(),
        cfg.batch_size,
        cfg.precision,
    )

    if train_df is None or valid_df is None:
        frame = data.read_arena_csv(cfg.train_csv, labelled=True)
        train_df, valid_df = data.split_train_valid(
            frame, cfg.valid_fraction, cfg.seed, group_by_prompt=cfg.group_by_prompt
        )
    log.info("data: %s -> %d train / %d validation", cfg.train_csv, len(train_df), len(valid_df))
    extra = train_df.iloc[:0]
    if cfg.extra_train:
        extra = hh_rlhf.read_chosen_rejected(cfg.extra_train, seed=cfg.seed)
        log.info(
            "extra training rows (chosen/rejected, no ties): %s, %d rows",
            cfg.extra_train,
            len(extra),
        )
    baseline = prior_log_loss(train_df["label"].to_numpy(), valid_df["label"].to_numpy())
    log.info("class-prior validation log loss (the baseline to beat): %.4f", baseline)

    model_lib.set_precision(cfg.precision)
    preprocessor = backbones.load_preprocessor(cfg.preset, cfg.sequence_length)
    backbone = build_backbone(cfg, cfg.precision)
    model = model_lib.build_model(
        backbone,
        dropout=cfg.dropout,
        head=cfg.head,
        side_features=pipeline.NUM_SIDE_FEATURES if cfg.side_features else 0,
    )
    log.info(
        "model: %s, %s parameters, %s trainable (LoRA rank %d)",
        type(backbone).__name__,
        f"{model.count_params():,}",
        f"{sum(int(np.prod(v.shape)) for v in model.trainable_weights):,}",
        cfg.lora_rank,
    )

    if primary:
        cfg.to_json(run_dir / "config.json")
        preprocessor.save_to_preset(str(run_dir / PRESET_DIR))
        backbones.save_architecture(backbone, run_dir / PRESET_DIR)
        split = pd.concat(
            [
                train_df[["id"]].assign(split="train"),
                valid_df[["id"]].assign(split="valid"),
                extra[["id"]].assign(split="extra"),
            ]
        )
        split.to_csv(run_dir / "split.csv", index=False)
    train_df = pd.concat([train_df, extra], ignore_index=True)

    encoder = pipeline.PairEncoder(preprocessor, model_lib.backbone_input_keys(backbone))
    cache = pipeline.default_cache_dir()
    log.info("tokenizing (cache: %s)", cache or "off")
    train_texts, valid_texts = text.format_pairs(train_df), text.format_pairs(valid_df)
    train_tokens = pipeline.tokenize(train_texts, encoder, cache)
    valid_tokens = pipeline.tokenize(valid_texts, encoder, cache)
    train_extra = valid_extra = None
    if cfg.side_features:
        train_extra = pipeline.side_features(train_texts, train_tokens)
        valid_extra = pipeline.side_features(valid_texts, valid_tokens)
        model_lib.fit_side_features(model, train_extra)
    buckets = pipeline.bucket_lengths(cfg.sequence_length)
    train_plans = [
        pipeline.plan_batches(
            train_tokens.row_lengths(),
            cfg.batch_size,
            buckets,
            shuffle=True,
            seed=cfg.seed,
            epoch=epoch,
            swap=cfg.swap_augment,
        )
        for epoch in range(cfg.epochs)
    ]
    valid_plan = pipeline.plan_batches(valid_tokens.row_lengths(), cfg.batch_size, buckets)
    log.info(
        "batches: %d per epoch, buckets %s; padding efficiency %.3f train, %.3f validation",
        len(train_plans[0]),
        list(buckets),
        pipeline.padding_efficiency(train_tokens, train_plans[0]),
        pipeline.padding_efficiency(valid_tokens, valid_plan),
    )
    shard = {"process_index": jax.process_index(), "process_count": jax.process_count()}
    keys = encoder.input_keys
    train_labels = train_df["label"].to_numpy()
    valid_ds = pipeline.make_dataset(
        valid_tokens, [valid_plan], keys, valid_df["label"].to_numpy(), **shard, extra=valid_extra
    )

    steps = len(train_plans[0])
    rate = model_lib.learning_rate_schedule(
        cfg.learning_rate, cfg.schedule, steps * cfg.epochs, cfg.warmup_fraction
    )
    model_lib.compile_model(model, rate, cfg.label_smoothing)
    start_epoch, start_step, best, best_epoch = 0, 0, math.inf, 0
    if resume:
        meta = checkpoints.restore_state(model, run_dir)
        start_epoch, start_step = meta["epoch"], meta["step_in_epoch"]
        best = meta["best_val_log_loss"] if meta["best_val_log_loss"] is not None else math.inf
        best_epoch = meta["best_epoch"]
        log.info(
            "resuming at epoch %d, step %d (best so far %.4f)", start_epoch + 1, start_step, best
        )
        if primary:
            _forget_epochs_from(run_dir, start_epoch)
    state = checkpoints.StateCheckpoint(
        run_dir / checkpoints.STATE_DIR, steps, cfg.save_every, best, best_epoch
    )

    def fit(plans, first_epoch: int, last_epoch: int, steps_per_epoch: int) -> None:
        callbacks = [
            keras.callbacks.OrbaxCheckpoint(
                str(run_dir / BEST_CHECKPOINT_DIR),
                monitor="val_log_loss",
                mode="min",
                save_best_only=True,
                save_weights_only=True,
                max_to_keep=1,
                initial_value_threshold=None if math.isinf(state.best) else state.best,
                # Synchronous: a background save would overlap the state save's multi-host
                # barrier at the same epoch end.
                save_on_background=False,
            ),
            state,
            epoch_logger(),
        ]
        if primary:
            callbacks.append(keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True))
        model.fit(
            pipeline.make_dataset(
                train_tokens, plans, keys, train_labels, **shard, extra=train_extra
            ),
            validation_data=valid_ds,
            initial_epoch=first_epoch,
            epochs=last_epoch,
            steps_per_epoch=steps_per_epoch,
            shuffle=False,  # the batch plans already shuffle, per epoch
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,
        )
        if state.preempted:
            raise checkpoints.Preempted(
                f"stopped on SIGTERM; state saved in {run_dir / checkpoints.STATE_DIR}. "
                f"Continue with: train_jax.py --resume --run-dir {run_dir}"
            )

    start = time.time()
    if start_step:  # finish the interrupted epoch from the step where it stopped
        fit(
            [train_plans[start_epoch][start_step:]],
            start_epoch,
            start_epoch + 1,
            steps - start_step,
        )
        start_epoch += 1
    if start_epoch < cfg.epochs:
        fit(train_plans[start_epoch:], start_epoch, cfg.epochs, steps)

    log.info("final weights fingerprint (equal on every process): %s", weights_fingerprint(model))
    model.load_weights(str(run_dir / BEST_CHECKPOINT_DIR))
    valid_probs = prediction.predict_tokens(
        model, valid_tokens, valid_plan, keys, extra=valid_extra
    )
    valid_labels = valid_df["label"].to_numpy()
    raw_loss = calibration.log_loss(valid_probs, valid_labels)
    temperature = calibration.fit_temperature(valid_probs, valid_labels) if cfg.calibrate else 1.0
    valid_probs = calibration.apply_temperature(valid_probs, temperature)
    calibrated_loss = calibration.log_loss(valid_probs, valid_labels)
    log.info(
        "temperature scaling: T=%.3f, validation log loss %.4f -> %.4f",
        temperature,
        raw_loss,
        calibrated_loss,
    )
    summary = {
        "best_epoch": state.best_epoch,
        "best_val_log_loss": state.best,
        "calibrated_val_log_loss": calibrated_loss,
        "temperature": temperature,
        "best_val_accuracy": float(np.mean(valid_probs.argmax(axis=1) == valid_labels)),
        "prior_val_log_loss": baseline,
        "epochs": cfg.epochs,
        "train_rows": len(train_df),
        "valid_rows": len(valid_df),
        "train_seconds": round(time.time() - start, 1),
    }
    if primary:
        calibration.save(run_dir, temperature, raw_loss, calibrated_loss)
        prediction.write_submission(valid_df["id"], valid_probs, run_dir / "valid_predictions.csv")
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxpref: run files written")
    log.info(
        "best val_log_loss %.4f at epoch %d (class prior %.4f); weights in %s",
        summary["best_val_log_loss"],
        summary["best_epoch"],
        baseline,
        run_dir / BEST_CHECKPOINT_DIR,
    )
    return summary
