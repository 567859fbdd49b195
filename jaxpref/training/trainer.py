"""Training in named phases: start the run, load splits, build the model and its inputs,
restore or start progress, fit, finish (best weights, calibration, run files).

`train` is the library entry point (the CLI and cross-validation call it); each phase is a
function with explicit inputs and outputs. What a run writes is described in `jaxpref.rundir`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from jaxpref import monitoring
from jaxpref.config import ConfigError, TrainConfig, default_learning_rate, resolve_precision
from jaxpref.data import arena, preferences, probabilities, splitting, text
from jaxpref.data.probabilities import Probabilities
from jaxpref.inputs import pipeline
from jaxpref.models import backbones, objective, presets
from jaxpref.parallel import distribution
from jaxpref.rundir import Preempted, ResumeError, RunDir, RunLock, epoch_at, period_name
from jaxpref.scoring import calibration, metrics
from jaxpref.serve import predict
from jaxpref.training import checkpoints, distillation

log = logging.getLogger("jaxpref")


@dataclasses.dataclass(frozen=True)
class Run:
    """A started run: its resolved config, directory and place among the processes."""

    cfg: TrainConfig
    paths: RunDir
    devices: list
    primary: bool
    process_index: int
    process_count: int
    lock: RunLock | None = None  # the run directory's lock (primary process), held while it runs


@dataclasses.dataclass(frozen=True)
class Splits:
    """Training, validation and extra (training-only) rows, the class-prior score, and the
    teacher's probabilities when training on soft labels."""

    train: pd.DataFrame
    valid: pd.DataFrame
    extra: pd.DataFrame
    prior_log_loss: float
    teacher: Probabilities | None = None


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Tokens, side features and batch plans of both splits; training labels are class indices
    (n,), or target rows (n, 3) with soft labels. `train_plans` holds one plan per validation
    period: per epoch, or `validations_per_epoch` per epoch."""

    train_tokens: pipeline.TokenizedPairs
    valid_tokens: pipeline.TokenizedPairs
    train_labels: np.ndarray
    valid_labels: np.ndarray
    train_plans: list[list[pipeline.Batch]]
    valid_plan: list[pipeline.Batch]
    input_keys: tuple[str, ...]
    layout: str
    train_extra: np.ndarray | None = None
    valid_extra: np.ndarray | None = None
    padding_efficiency: float | None = None
    valid_ids: Sequence[str] = ()

    @property
    def period_steps(self) -> list[int]:
        return [len(plan) for plan in self.train_plans]

    def train_dataset(self, plans: Sequence[Sequence[pipeline.Batch]], run: Run):
        """tf.data pipeline of this process's share of `plans` over the training rows."""
        shard = (run.process_index, run.process_count)
        return pipeline.make_dataset(
            self.train_tokens, plans, self.input_keys, self.train_labels, *shard,
            self.train_extra, self.layout,
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where training stands: the next validation period (an epoch unless validating several
    times per epoch) and step in it, and the best period so far."""

    epoch: int = 0
    step: int = 0
    best: float = math.inf
    best_epoch: int = 0


@dataclasses.dataclass(frozen=True)
class Segment:
    """Periods [first_epoch, last_epoch), Keras' epochs of one `model.fit`, skipping the first
    `skip_steps` steps of `first_epoch` (already trained before an interruption)."""

    first_epoch: int
    last_epoch: int
    skip_steps: int = 0


def train(
    cfg: TrainConfig,
    train_df: pd.DataFrame | None = None,
    valid_df: pd.DataFrame | None = None,
    resume: bool = False,
) -> dict:
    """Train per `cfg` on every selected device; returns the summary written to summary.json,
    and the run directory (absolute, with the default `runs/<time>` resolved) as `run_dir`.

    The split comes from `cfg.data.train_csv` unless both `train_df` and `valid_df` (frames as
    returned by `data.read_arena_csv`) are given, as cross-validation does. The process
    environment must already select the JAX backend and platform
    (`distribution.configure_environment`), as the CLI does. With `resume`, training continues
    from the newest state checkpoint in `cfg.run.run_dir` with the same data order.
    """
    run = start_run(cfg, resume)
    with recorded(run):
        splits = load_splits(run.cfg, train_df, valid_df)
        check_memory(run)
        model, encoder = build_model(run.cfg)
        save_run_files(run, splits, model, encoder)
        inputs = build_inputs(run.cfg, splits, encoder, model)
        rate = compile_for_training(model, run.cfg, sum(inputs.period_steps))
        progress = restore_progress(model, run) if resume else Progress()
        started = time.time()
        state, validation = fit(model, run, inputs, progress, rate)
        summary = finish(model, run, splits, inputs, state, validation, time.time() - started)
        return {**summary, "run_dir": str(run.paths.root)}


@contextlib.contextmanager
def recorded(run: Run) -> Iterator[None]:
    """The run's life after `start_run`: how it ends goes into train.log as the CLI says it on
    stderr, and its lock file goes with it (a killed run's is taken over, and said so)."""
    if run.lock is not None and run.lock.left_by:
        log.info(
            "%s was left by %s, which ended without releasing it: taken over",
            run.lock.path, run.lock.left_by,
        )  # fmt: skip
    try:
        yield
    except Preempted as stop:
        monitoring.log_to_files(f"preempted: {stop}")
        raise
    except KeyboardInterrupt:
        monitoring.log_to_files("interrupted")
        raise
    except Exception as err:
        monitoring.log_to_files(f"error: {err}")
        raise
    finally:
        if run.lock is not None:
            run.lock.release()


def start_run(cfg: TrainConfig, resume: bool) -> Run:
    """Devices, distribution, seed, run directory and log; returns the resolved config."""
    import jax

    if cfg.run.wandb:
        monitoring.require_wandb()  # before any work, not after tokenizing
    sharded = cfg.devices.model_parallel > 1
    if resume:
        checkpoints.check_resume_devices(
            RunDir(cfg.run.run_dir).state_checkpoints, cfg.devices, cfg.optim.batch_size
        )
    selected = distribution.setup(
        cfg.devices.devices, cfg.devices.num_devices, cfg.optim.batch_size,
        cfg.devices.model_parallel, presets.probe(cfg.model.preset).location if sharded else None,
    )  # fmt: skip
    distribution.seed_keras(cfg.run.seed)
    primary = jax.process_index() == 0
    run_dir = cfg.run.run_dir
    if not run_dir:
        if jax.process_count() > 1:
            raise distribution.DeviceError(
                "--run-dir is required with several processes (a directory every host shares)"
            )
        run_dir = f"runs/{time.strftime('%Y%m%d-%H%M%S')}"
    paths = RunDir(run_dir)
    lock = None
    if primary:
        paths.create()
        lock = paths.lock()
    if not resume and paths.has_checkpoints():
        raise ResumeError(
            f"{paths.root} already holds checkpoints; pass --resume to continue that run, "
            "or choose another --run-dir"
        )
    monitoring.setup_logging(paths.log if primary else None, cfg.run.log_every)
    platform = distribution.platform_of(selected)
    cfg = cfg.replace(
        run_dir=str(paths.root),
        num_devices=len(selected),
        precision=resolve_precision(cfg.model.precision, platform),
        learning_rate=cfg.optim.learning_rate or default_learning_rate(cfg.model.lora_rank),
    )
    accumulated = f" ({cfg.optim.grad_accum} x {cfg.optim.batch_size} accumulated)"
    log.info(
        "devices: %d x %s over %d process(es); global batch %d%s; precision %s",
        len(selected), platform, jax.process_count(), cfg.optim.global_batch,
        accumulated if cfg.optim.grad_accum > 1 else "", cfg.model.precision,
    )  # fmt: skip
    cfg = cfg.replace(train_csv=arena.training_csv(cfg.data.train_csv))
    return Run(cfg, paths, selected, primary, jax.process_index(), jax.process_count(), lock)


def load_splits(
    cfg: TrainConfig, train_df: pd.DataFrame | None, valid_df: pd.DataFrame | None
) -> Splits:
    """The given frames, or `train_csv` split by `valid_fraction`; plus extra rows."""
    if train_df is None or valid_df is None:
        frame = arena.read_arena_csv(cfg.data.train_csv, labelled=True)
        train_df, valid_df = splitting.split_train_valid(
            frame, cfg.data.valid_fraction, cfg.run.seed, group_by_prompt=cfg.data.group_by_prompt
        )
    log.info(
        "data: %s -> %d train / %d validation", cfg.data.train_csv, len(train_df), len(valid_df)
    )
    extra = train_df.iloc[:0]
    if cfg.data.extra_train:
        extra = preferences.read_chosen_rejected(cfg.data.extra_train, seed=cfg.run.seed)
        log.info(
            "extra training rows (chosen/rejected, no ties): %s, %d rows",
            cfg.data.extra_train, len(extra),
        )  # fmt: skip
    check_classes(train_df["label"].to_numpy(), valid_df["label"].to_numpy(), cfg.data.train_csv)
    prior = metrics.prior_log_loss(train_df["label"].to_numpy(), valid_df["label"].to_numpy())
    log.info("class-prior validation log loss (the baseline to beat): %.4f", prior)
    teacher = None
    if cfg.data.soft_labels:
        train_ids = pd.concat([train_df["id"], extra["id"]]).to_numpy()
        teacher = distillation.load_teacher(cfg.data.soft_labels, train_ids)
    return Splits(train_df, valid_df, extra, prior, teacher)


MIN_VALID_ROWS_PER_CLASS = 5


def check_classes(train_labels: np.ndarray, valid_labels: np.ndarray, source: str) -> None:
    """Refuse training data with a single class; warn when validation has too few of one."""
    counts = np.bincount(train_labels, minlength=arena.NUM_CLASSES)
    names = ", ".join(f"{n} {c}" for n, c in zip(arena.CLASS_NAMES, counts, strict=True))
    if (counts > 0).sum() < 2:
        raise arena.DataError(
            source, f"only one class among the training rows ({names}); a model cannot "
            "learn to compare from that"
        )  # fmt: skip
    valid = np.bincount(valid_labels, minlength=arena.NUM_CLASSES)
    if valid.min() < MIN_VALID_ROWS_PER_CLASS:
        per_class = ", ".join(f"{n} {c}" for n, c in zip(arena.CLASS_NAMES, valid, strict=True))
        log.warning(
            "validation has fewer than %d rows of some class (%s): its log loss, best epoch "
            "and temperature rest on very few rows",
            MIN_VALID_ROWS_PER_CLASS, per_class,
        )  # fmt: skip


def check_memory(run: Run) -> None:
    """Refuse a Hugging Face directory that neither a family nor keras-hub covers; for decoder
    LLMs, log the memory estimate per device and refuse what cannot fit."""
    from jaxpref.models import lora
    from jaxpref.parallel import sharding

    cfg = run.cfg
    preset = presets.probe(cfg.model.preset)
    preset.check_convertible()
    if preset.family is None:
        return  # an encoder: small next to any accelerator
    targets = lora.target_layers(cfg.model.lora_targets, preset.family)
    estimate = sharding.memory_estimate(
        preset.backbone_config, cfg.optim.batch_size, cfg.data.sequence_length,
        cfg.model.lora_rank, targets,
        dtype=cfg.model.precision,
        mesh=sharding.mesh_shape(len(run.devices), cfg.devices.model_parallel),
        remat=cfg.model.remat,
        fused_attention=distribution.platform_of(run.devices) == "gpu",
    )  # fmt: skip
    log.info("memory estimate per device: %s", estimate.describe())
    sharding.check_devices_fit(estimate, run.devices)


def build_model(cfg: TrainConfig):
    """The pretrained model of `cfg.model` and the encoder that feeds it."""
    from jaxpref.models import preference as model_lib

    model = model_lib.build_model(cfg.model, cfg.data.sequence_length)
    encoder = model_lib.build_encoder(model, cfg.model.preset, cfg.data.sequence_length)
    total, trainable = model_lib.parameter_counts(model)
    log.info(
        "model: %s, %s parameters, %s trainable (LoRA rank %d)",
        type(model.backbone).__name__, f"{total:,}", f"{trainable:,}", cfg.model.lora_rank,
    )  # fmt: skip
    return model, encoder


def save_run_files(run: Run, splits: Splits, model, encoder) -> None:
    """config.json, env.json, the weightless preset and split.csv (primary process only)."""
    if not run.primary:
        return
    run.cfg.to_json(run.paths.config)
    environment = monitoring.environment_record(run.devices)
    run.paths.env.write_text(json.dumps(environment, indent=2) + "\n")
    encoder.save(str(run.paths.preset))
    backbones.save_architecture(model.backbone, run.paths.preset)
    split = pd.concat(
        [
            splits.train[["id"]].assign(split="train"),
            splits.valid[["id"]].assign(split="valid"),
            splits.extra[["id"]].assign(split="extra"),
        ]
    )
    split.to_csv(run.paths.split, index=False)


def build_inputs(cfg: TrainConfig, splits: Splits, encoder, model) -> Inputs:
    """Tokenize both splits (cached), fit the side-feature statistics, plan every epoch; with
    soft labels, blend each training row's target with the teacher's probabilities, and give
    extra rows their tie share."""
    train_df = pd.concat([splits.train, splits.extra], ignore_index=True)
    train_labels = train_df["label"].to_numpy()
    if splits.teacher is not None:
        train_labels = distillation.soft_targets(
            train_df["id"], train_labels, splits.teacher, cfg.optim.soft_label_weight
        )
    if cfg.data.extra_train_tie and len(splits.extra):
        share = cfg.data.extra_train_tie
        extra_rows = np.arange(len(splits.train), len(train_df))
        train_labels = distillation.with_tie_share(train_labels, extra_rows, share)
        log.info("extra rows' targets: %.2f of each on a tie", share)
    cache = pipeline.default_cache_dir()
    log.info("tokenizing (cache: %s)", cache or "off")
    train_tokens = pipeline.tokenize(encoder.texts(train_df), encoder, cache)
    valid_tokens = pipeline.tokenize(encoder.texts(splits.valid), encoder, cache)
    train_extra = valid_extra = None
    if model.side_features:
        train_extra = pipeline.side_features(text.format_pairs(train_df), train_tokens)
        valid_extra = pipeline.side_features(text.format_pairs(splits.valid), valid_tokens)
        model.fit_side_features(train_extra)
    buckets = pipeline.bucket_lengths(cfg.data.sequence_length)
    epoch_plans = [
        pipeline.plan_batches(
            train_tokens.row_lengths(), cfg.optim.batch_size, buckets, shuffle=True,
            seed=cfg.run.seed, epoch=epoch, swap=cfg.data.swap_augment,
        )
        for epoch in range(cfg.optim.epochs)
    ]  # fmt: skip
    valid_plan = pipeline.plan_batches(valid_tokens.row_lengths(), cfg.optim.batch_size, buckets)
    efficiency = pipeline.padding_efficiency(train_tokens, epoch_plans[0])
    log.info(
        "batches: %d per epoch, buckets %s; padding efficiency %.3f train, %.3f validation",
        len(epoch_plans[0]), list(buckets), efficiency,
        pipeline.padding_efficiency(valid_tokens, valid_plan),
    )  # fmt: skip
    train_plans = validation_periods(epoch_plans, cfg.optim.validations_per_epoch)
    return Inputs(
        train_tokens, valid_tokens, train_labels, splits.valid["label"].to_numpy(), train_plans,
        valid_plan, encoder.input_keys, encoder.layout, train_extra, valid_extra, efficiency,
        splits.valid["id"].tolist(),
    )  # fmt: skip


def validation_periods(epoch_plans: list[list[pipeline.Batch]], per_epoch: int) -> list:
    """Each epoch's plan cut into `per_epoch` validation periods (Keras trains each as an
    epoch: the validation, best weights and history of an epoch end follow at every cut)."""
    steps = len(epoch_plans[0])
    if per_epoch > steps:
        raise ConfigError(
            f"--validations-per-epoch {per_epoch} is more than the {steps} training steps per "
            "epoch: use at most that many, or a smaller --batch-size"
        )
    return [period for plan in epoch_plans for period in pipeline.split_plan(plan, per_epoch)]


def compile_for_training(model, cfg: TrainConfig, total_steps: int):
    """Compile with the run's optimizer and loss; returns the learning-rate schedule over the
    run's `total_steps` batches (with --grad-accum too: Keras evaluates it per batch)."""
    from jaxpref.training import optimization

    optim = cfg.optim
    rate = optimization.learning_rate_schedule(
        optim.learning_rate, optim.schedule, total_steps, optim.warmup_fraction
    )
    objective.compile_model(
        model, rate, optim.label_smoothing, optim.weight_decay, optim.grad_accum, optim.clip_norm
    )
    if total_steps % optim.grad_accum:
        log.warning(
            "--grad-accum %d: the last %d of the run's %d steps complete no update; their "
            "gradients are accumulated but never applied",
            optim.grad_accum, total_steps % optim.grad_accum, total_steps,
        )  # fmt: skip
    return rate


def restore_progress(model, run: Run) -> Progress:
    """Load the newest state checkpoint; forget what later epochs wrote last time."""
    meta = checkpoints.restore_state(model, run.paths.state_checkpoints)
    best = meta["best_val_log_loss"]
    progress = Progress(
        meta["epoch"], meta["step_in_epoch"], math.inf if best is None else best, meta["best_epoch"]
    )
    per_epoch = run.cfg.optim.validations_per_epoch
    log.info(
        "resuming at %s, step %d (best so far %.4f)",
        period_name(progress.epoch, per_epoch), progress.step, progress.best,
    )  # fmt: skip
    if run.primary:
        forget_epochs_from(run.paths, progress.epoch, per_epoch)
    return progress


def forget_epochs_from(paths: RunDir, done: int, per_epoch: int = 1) -> None:
    """Before replaying the validation periods after the first `done`, drop what they wrote
    last time (best checkpoints are numbered by period from 1, the rest by `epoch_at`)."""
    if paths.best_checkpoints.exists():
        for step in paths.best_checkpoints.iterdir():
            if step.name.isdigit() and int(step.name) > done:
                shutil.rmtree(step)
    period = done + 1
    while paths.epoch_predictions(epoch_at(period, per_epoch)).exists():
        paths.epoch_predictions(epoch_at(period, per_epoch)).unlink()
        period += 1
    history = paths.history
    if history.exists() and history.stat().st_size:
        frame = pd.read_csv(history)
        frame[frame["epoch"] <= epoch_at(done, per_epoch)].to_csv(history, index=False)
    elif history.exists():
        history.unlink()


def fit_segments(period_steps: Sequence[int], progress: Progress) -> list[Segment]:
    """The `model.fit` calls left: the rest of an interrupted period, then whole periods, one
    call per run of periods of equal length (Keras' `steps_per_epoch` is one number)."""
    segments, period = [], progress.epoch
    if progress.step:
        segments.append(Segment(period, period + 1, progress.step))
        period += 1
    for first in range(period, len(period_steps)):
        if first > period and period_steps[first] == period_steps[first - 1]:
            segments[-1] = Segment(segments[-1].first_epoch, first + 1)
        else:
            segments.append(Segment(first, first + 1))
    return segments


def fit(model, run: Run, inputs: Inputs, progress: Progress, rate):
    """Train the remaining segments; returns the state callback, which tracks the best epoch,
    and the validation callback, which holds this process's best epoch's probabilities.

    Raises `Preempted` after saving the state when SIGTERM arrives.
    """
    from jaxpref.training.callbacks import Validation

    state = checkpoints.StateCheckpoint(
        run.paths.state_checkpoints, inputs.period_steps, run.cfg.run.save_every,
        progress.best, progress.best_epoch, run.paths.best_checkpoints,
    )  # fmt: skip
    validation = Validation(
        lambda: predict.predict_tokens(
            model, inputs.valid_tokens, inputs.valid_plan, inputs.input_keys,
            extra=inputs.valid_extra, label="validating",
        ),
        inputs.valid_labels,
        run.cfg.optim.label_smoothing,
        keep=epoch_predictions_writer(run, inputs.valid_ids) if run.primary else None,
    )  # fmt: skip
    with scalar_writers(run) as writers:
        for segment in fit_segments(inputs.period_steps, progress):
            fit_segment(model, run, inputs, validation, state, segment, rate, writers)
    return state, validation


def epoch_predictions_writer(run: Run, ids: Sequence[str]):
    """Writes each validation period's predictions to the run directory."""

    def write(period: int, probs: np.ndarray) -> None:
        path = run.paths.epoch_predictions(epoch_at(period, run.cfg.optim.validations_per_epoch))
        path.parent.mkdir(exist_ok=True)
        probabilities.write_submission(ids, probs, path)

    return write


def scalar_writers(run: Run):
    """TensorBoard and W&B sinks as the run asks, on the primary process only."""
    cfg = run.cfg.run
    return monitoring.scalar_writers(
        run.paths.tensorboard if cfg.tensorboard and run.primary else None,
        cfg.wandb if run.primary else "",
        run.paths.wandb,
        run.cfg.to_dict(),
    )


def fit_segment(model, run: Run, inputs: Inputs, validation, state, segment, rate, writers) -> None:
    """`model.fit` over one segment's epochs (the validation and state callbacks live across
    segments); raises `Preempted` when SIGTERM stopped it."""
    steps = inputs.period_steps[segment.first_epoch]
    if segment.skip_steps:
        plans = [inputs.train_plans[segment.first_epoch][segment.skip_steps :]]
    else:
        plans = inputs.train_plans[segment.first_epoch : segment.last_epoch]
    batches = [b for plan in plans for b in plan]
    model.fit(
        inputs.train_dataset(plans, run),
        initial_epoch=segment.first_epoch,
        epochs=segment.last_epoch,
        steps_per_epoch=steps - segment.skip_steps,
        shuffle=False,  # the batch plans already shuffle, per epoch
        callbacks=training_callbacks(run, validation, state, batches, inputs, rate, writers),
        verbose=1 if sys.stdout.isatty() else 0,
    )
    if state.preempted:
        raise Preempted(
            f"stopped on SIGTERM; state saved in {run.paths.state_checkpoints}. "
            f"Continue with: jaxpref train --resume --run-dir {run.paths.root}"
        )


def training_callbacks(
    run: Run,
    validation,
    state: checkpoints.StateCheckpoint,
    batches: list,
    inputs: Inputs,
    rate,
    writers,
) -> list:
    """The NaN stop, validation scores, progress and scalars (to `writers`), history.csv,
    then best weights and resumable state (callbacks see an epoch's logs in this order).

    history.csv gets an epoch's row before the state that records the epoch is saved, so a
    process killed in between replays that epoch and rewrites the row.
    """
    from jaxpref.training import optimization
    from jaxpref.training.callbacks import HistoryWriter, MeshPlacement, RunMonitor, StopOnNonFinite

    per_epoch = run.cfg.optim.validations_per_epoch
    monitor = RunMonitor(
        batches,
        optimization.rate_at(rate),
        log_every=None if sys.stdout.isatty() or not run.primary else run.cfg.run.log_every,
        writers=writers,
        padding_efficiency=inputs.padding_efficiency,
        sequences_per_pair=1 if inputs.layout == pipeline.CROSS else 2,
        epochs=run.cfg.optim.epochs,
        per_epoch=per_epoch,
        total_steps=sum(inputs.period_steps),
    )
    history = [HistoryWriter(run.paths.history, per_epoch)] if run.primary else []
    return [
        MeshPlacement(), StopOnNonFinite(run.paths.best_checkpoints, per_epoch), validation,
        monitor, *history, state,
    ]  # fmt: skip


def finish(
    model, run: Run, splits: Splits, inputs: Inputs, state, validation, seconds: float
) -> dict:
    """Calibrate the best epoch's validation predictions, write the run's result files."""
    log.debug(
        "final weights fingerprint (equal on every process): %s",
        monitoring.weights_fingerprint(model),
    )
    valid_probs = validation.best_probs
    best_epoch = epoch_at(state.best_epoch, run.cfg.optim.validations_per_epoch)
    if validation.best_epoch != state.best_epoch:  # the best epoch ran before a --resume
        log.info("restoring the best weights (epoch %s) to predict validation", best_epoch)
        distribution.restore_checkpoint(model, run.paths.best_checkpoints)  # the best epoch's
        valid_probs = predict.predict_tokens(
            model, inputs.valid_tokens, inputs.valid_plan, inputs.input_keys,
            extra=inputs.valid_extra, label="validating",
        )  # fmt: skip
    labels = inputs.valid_labels
    fitted = calibration.calibrate(valid_probs, labels, run.cfg.run.calibrate)
    log.info(
        "temperature scaling: T=%.3f, validation log loss %.4f -> %.4f",
        fitted.temperature, fitted.before, fitted.after,
    )  # fmt: skip
    valid_probs = calibration.apply_temperature(valid_probs, fitted.temperature)
    summary = {
        "best_epoch": best_epoch,
        "best_val_log_loss": state.best,
        "calibrated_val_log_loss": fitted.after,
        "temperature": fitted.temperature,
        "best_val_accuracy": metrics.accuracy(valid_probs, labels),
        "prior_val_log_loss": splits.prior_log_loss,
        "epochs": run.cfg.optim.epochs,
        "validations_per_epoch": run.cfg.optim.validations_per_epoch,
        "train_rows": len(inputs.train_labels),
        "valid_rows": len(labels),
        "train_seconds": round(seconds, 1),
    }
    if run.primary:
        calibration.save(run.paths.calibration, fitted)
        probabilities.write_submission(splits.valid["id"], valid_probs, run.paths.valid_predictions)
        run.paths.summary.write_text(json.dumps(summary, indent=2) + "\n")
    distribution.sync_processes("jaxpref: run files written")
    log.info(
        "best val_log_loss %.4f at epoch %s (class prior %.4f); weights in %s",
        summary["best_val_log_loss"], summary["best_epoch"], splits.prior_log_loss,
        run.paths.best_checkpoints,
    )  # fmt: skip
    return summary
