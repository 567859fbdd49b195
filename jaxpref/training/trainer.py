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
from jaxpref.data import arena, probabilities, sources, splitting
from jaxpref.data.probabilities import Probabilities
from jaxpref.inputs import batching, feeding, token_store
from jaxpref.inputs.batching import Batch
from jaxpref.inputs.featurize import FeaturizedRows, featurize
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
    """Training and validation rows, the rows of the `--extra-train` preference files
    (training only), the class-prior score, the teacher's probabilities when training on
    soft labels, and each training row's margin (training, then preference rows; 0 for a row
    without one) when either has a margin column (`training_margins`)."""

    train: pd.DataFrame
    valid: pd.DataFrame
    preference_rows: pd.DataFrame
    prior_log_loss: float
    teacher: Probabilities | None = None
    margins: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Both splits featurized (tokens, side features) and planned; training labels are class
    indices (n,), or target rows (n, 3) with soft labels, (n, 4) with margins. `train_plans`
    holds one plan per validation period: per epoch, or `validations_per_epoch` per epoch."""

    train: FeaturizedRows
    valid: FeaturizedRows
    train_labels: np.ndarray
    valid_labels: np.ndarray
    train_plans: list[list[Batch]]
    valid_plan: list[Batch]
    padding_efficiency: float | None = None
    valid_ids: Sequence[str] = ()

    @property
    def margins(self) -> bool:
        """Whether the training targets carry margins (`objective.with_margins`)."""
        return self.train_labels.ndim == 2 and self.train_labels.shape[1] > arena.NUM_CLASSES

    @property
    def period_steps(self) -> list[int]:
        return [len(plan) for plan in self.train_plans]

    def train_dataset(self, plans: Sequence[Sequence[Batch]], run: Run):
        """tf.data pipeline of this process's share of `plans` over the training rows."""
        shard = (run.process_index, run.process_count)
        return feeding.make_dataset(self.train, plans, self.train_labels, *shard)

    def predict_valid(self, model) -> np.ndarray:
        """`model`'s probabilities (n, 3) for the validation rows."""
        return predict.predict_rows(model, self.valid, self.valid_plan, label="validating")


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where training stands: the next validation period (an epoch unless validating several
    times per epoch) and step in it, the best validation log loss and how many periods had
    been trained when it was reached (0: none yet)."""

    period: int = 0
    step: int = 0
    best: float = math.inf
    best_period: int = 0


@dataclasses.dataclass(frozen=True)
class Segment:
    """Validation periods [first_period, last_period), Keras' epochs of one `model.fit`,
    skipping the first `skip_steps` steps of `first_period` (already trained before an
    interruption)."""

    first_period: int
    last_period: int
    skip_steps: int = 0


def train(
    cfg: TrainConfig,
    train_df: pd.DataFrame | None = None,
    valid_df: pd.DataFrame | None = None,
    resume: bool = False,
) -> dict:
    """Train per `cfg` on every selected device; returns the summary written to summary.json,
    and the run directory (absolute, with the default `runs/<time>` resolved) as `run_dir`.

    The rows come from `cfg.data.train_file` (and `valid_file`) unless both `train_df` and
    `valid_df` (frames as `data.sources.read_rows` returns) are given, as cross-validation
    does. The process environment must already select the JAX backend and platform
    (`distribution.configure_environment`), as the CLI does. With `resume`, training continues
    from the newest state checkpoint in `cfg.run.run_dir` with the same data order.
    """
    run = start_run(cfg, resume)
    with recorded(run):
        splits = load_splits(run.cfg, train_df, valid_df)
        check_memory(run)
        model, packer = build_model(run.cfg)
        save_run_files(run, splits, model, packer)
        inputs = build_inputs(run.cfg, splits, packer, model)
        rate = compile_for_training(model, run.cfg, sum(inputs.period_steps), inputs.margins)
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
        valid_fraction=cfg.data.split_fraction(),
    )
    accumulated = f" ({cfg.optim.grad_accum} x {cfg.optim.batch_size} accumulated)"
    log.info(
        "devices: %d x %s over %d process(es); global batch %d%s; precision %s",
        len(selected), platform, jax.process_count(), cfg.optim.global_batch,
        accumulated if cfg.optim.grad_accum > 1 else "", cfg.model.precision,
    )  # fmt: skip
    cfg = cfg.replace(train_file=sources.training_file(cfg.data.train_file))
    return Run(cfg, paths, selected, primary, jax.process_index(), jax.process_count(), lock)


def load_splits(
    cfg: TrainConfig, train_df: pd.DataFrame | None, valid_df: pd.DataFrame | None
) -> Splits:
    """The given frames, or `train_file` split by `valid_fraction` (whole, with `valid_file`'s
    rows to validate on); plus the preference rows of `extra_train`."""
    if train_df is None or valid_df is None:
        train_df, valid_df = read_train_valid(cfg)
    log.info(
        "data: %s -> %d train / %d validation%s", cfg.data.train_file, len(train_df),
        len(valid_df), f" (from {cfg.data.valid_file})" if cfg.data.valid_file else "",
    )  # fmt: skip
    preference_rows = train_df.iloc[:0]
    if cfg.data.extra_train:
        preference_rows = sources.read_pairs(
            cfg.data.extra_train, seed=cfg.run.seed, id_prefix="hh"
        )
        log.info(
            "extra training rows (chosen/rejected, no ties): %s, %d rows",
            cfg.data.extra_train, len(preference_rows),
        )  # fmt: skip
    check_classes(train_df["label"].to_numpy(), valid_df["label"].to_numpy(), cfg.data.train_file)
    prior = metrics.prior_log_loss(train_df["label"].to_numpy(), valid_df["label"].to_numpy())
    log.info("class-prior validation log loss (the baseline to beat): %.4f", prior)
    margins = training_margins(
        cfg, [(cfg.data.train_file, train_df), (cfg.data.extra_train, preference_rows)]
    )
    teacher = None
    if cfg.data.soft_labels:
        train_ids = pd.concat([train_df["id"], preference_rows["id"]]).to_numpy()
        teacher = distillation.load_teacher(cfg.data.soft_labels, train_ids)
    return Splits(train_df, valid_df, preference_rows, prior, teacher, margins)


def training_margins(
    cfg: TrainConfig, frames: Sequence[tuple[str, pd.DataFrame]]
) -> np.ndarray | None:
    """The margins (`arena.MARGIN`) of the rows of `frames` ((source, frame)) in order, 0 for
    the rows of a frame without them; None when no frame has them.

    Margins shift the reward loss (`objective.MarginCrossentropy`); with another objective
    they are not used, and a warning says so; with --soft-labels, a ConfigError naming the
    source."""
    sources_with = [source for source, frame in frames if arena.MARGIN in frame]
    if not sources_with:
        return None
    if cfg.model.objective != "reward":
        log.warning(
            "%s: its rows have a margin (TRL's reward-trainer margin), which only --objective "
            "reward trains with; --objective %s does not use it", sources_with[0],
            cfg.model.objective,
        )  # fmt: skip
        return None
    if cfg.data.soft_labels:
        raise ConfigError(
            f"{sources_with[0]}: its rows have a margin, which does not combine with "
            "--soft-labels: drop one of them"
        )
    margins = [
        frame[arena.MARGIN].to_numpy(np.float32) if arena.MARGIN in frame else np.zeros(len(frame))
        for _, frame in frames
    ]
    return np.concatenate(margins).astype(np.float32)


def read_train_valid(cfg: TrainConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training file's rows and the validation file's, or a split of the training file."""
    frame = sources.read_rows(cfg.data.train_file)
    if not cfg.data.valid_file:
        return splitting.split_train_valid(
            frame, cfg.data.split_fraction(), cfg.run.seed, group_by_prompt=cfg.data.group_by_prompt
        )
    valid = sources.read_rows(cfg.data.valid_file)
    sources.check_distinct_ids({cfg.data.train_file: frame, cfg.data.valid_file: valid})
    return frame, valid


MIN_VALID_ROWS_PER_CLASS = 5


def check_classes(train_labels: np.ndarray, valid_labels: np.ndarray, source: str) -> None:
    """Refuse training data with a single class; say so when a class is missing from one side
    (preference rows never tie); warn when validation has too few rows of a class it holds.

    Log loss stays over all three classes: without tie rows anywhere, the model learns that
    ties are rare (label smoothing keeps their probability above 0)."""
    counts = np.bincount(train_labels, minlength=arena.NUM_CLASSES)
    names = ", ".join(f"{n} {c}" for n, c in zip(arena.CLASS_NAMES, counts, strict=True))
    if (counts > 0).sum() < 2:
        raise arena.DataError(
            source, f"only one class among the training rows ({names}); a model cannot "
            "learn to compare from that"
        )  # fmt: skip
    valid = np.bincount(valid_labels, minlength=arena.NUM_CLASSES)
    per_class = ", ".join(f"{n} {c}" for n, c in zip(arena.CLASS_NAMES, valid, strict=True))
    for name, in_train, in_valid in zip(arena.CLASS_NAMES, counts, valid, strict=True):
        if not in_train and not in_valid:
            log.info(
                "no %s rows in training or validation (chosen/rejected pairs never tie): "
                "the model learns it as rare; log loss stays over all three classes", name,
            )  # fmt: skip
        elif not in_train:
            log.warning(
                "validation has %d %s rows but training none: the model cannot learn to "
                "predict them, and their log loss will be high", in_valid, name,
            )  # fmt: skip
    held = valid[(counts > 0) | (valid > 0)]
    if held.min() < MIN_VALID_ROWS_PER_CLASS:
        log.warning(
            "validation has fewer than %d rows of some class (%s): its log loss, best epoch "
            "and temperature rest on very few rows",
            MIN_VALID_ROWS_PER_CLASS, per_class,
        )  # fmt: skip


def check_memory(run: Run) -> None:
    """Refuse a Hugging Face directory that neither a family nor keras-hub covers; for decoder
    LLMs, log the memory estimate per device and refuse what cannot fit."""
    from jaxpref.models import lora
    from jaxpref.models import preference as model_lib
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
        sequences_per_row=model_lib.sequences_per_row(cfg.model.architecture),
    )  # fmt: skip
    log.info("memory estimate per device: %s", estimate.describe())
    sharding.check_devices_fit(estimate, run.devices)


def build_model(cfg: TrainConfig):
    """The pretrained model of `cfg.model` and the packer that feeds it."""
    from jaxpref.models import preference as model_lib

    model = model_lib.build_model(cfg.model, cfg.data.sequence_length)
    packer = model.build_packer(cfg.model.preset, cfg.data.sequence_length)
    total, trainable = model_lib.parameter_counts(model)
    log.info(
        "model: %s, %s parameters, %s trainable (LoRA rank %d)",
        type(model.backbone).__name__, f"{total:,}", f"{trainable:,}", cfg.model.lora_rank,
    )  # fmt: skip
    return model, packer


def save_run_files(run: Run, splits: Splits, model, packer) -> None:
    """config.json, env.json, the weightless preset and split.csv (primary process only)."""
    if not run.primary:
        return
    run.cfg.to_json(run.paths.config)
    environment = monitoring.environment_record(run.devices)
    run.paths.env.write_text(json.dumps(environment, indent=2) + "\n")
    packer.save(str(run.paths.preset))
    backbones.save_architecture(model.backbone, run.paths.preset)
    split = pd.concat(
        [
            splits.train[["id"]].assign(split="train"),
            splits.valid[["id"]].assign(split="valid"),
            splits.preference_rows[["id"]].assign(split="extra"),
        ]
    )
    split.to_csv(run.paths.split, index=False)


def build_inputs(cfg: TrainConfig, splits: Splits, packer, model) -> Inputs:
    """Featurize both splits with `packer` (tokens cached), fit the side-feature statistics,
    plan every epoch."""
    train_df = pd.concat([splits.train, splits.preference_rows], ignore_index=True)
    train_labels = training_targets(cfg, splits, train_df)
    cache = token_store.default_cache_dir()
    log.info("tokenizing (cache: %s)", cache or "off")
    with_side_features = bool(model.side_features)
    train = featurize(train_df, packer, with_side_features, cache)
    valid = featurize(splits.valid, packer, with_side_features, cache)
    if train.side_features is not None:
        model.fit_side_features(train.side_features)
    epoch_plans = [
        train.plan(
            cfg.optim.batch_size, shuffle=True, seed=cfg.run.seed, epoch=epoch,
            swap=cfg.data.swap_augment,
        )
        for epoch in range(cfg.optim.epochs)
    ]  # fmt: skip
    valid_plan = valid.plan(cfg.optim.batch_size)
    efficiency = train.padding_efficiency(epoch_plans[0])
    log.info(
        "batches: %d per epoch, buckets %s; padding efficiency %.3f train, %.3f validation",
        len(epoch_plans[0]), list(train.buckets), efficiency,
        valid.padding_efficiency(valid_plan),
    )  # fmt: skip
    train_plans = validation_periods(epoch_plans, cfg.optim.validations_per_epoch)
    return Inputs(
        train, valid, train_labels, splits.valid["label"].to_numpy(), train_plans, valid_plan,
        efficiency, splits.valid["id"].tolist(),
    )  # fmt: skip


def training_targets(cfg: TrainConfig, splits: Splits, train_df: pd.DataFrame) -> np.ndarray:
    """The class of each row of `train_df` (the training split, then the preference rows); with
    soft labels, each row's target blended with the teacher's probabilities, with
    `extra_train_tie`, the preference rows' tie share, and with margins, (n, 4)
    `objective.with_margins` rows."""
    train_labels = train_df["label"].to_numpy()
    if splits.teacher is not None:
        train_labels = distillation.soft_targets(
            train_df["id"], train_labels, splits.teacher, cfg.optim.soft_label_weight
        )
    if cfg.data.extra_train_tie and len(splits.preference_rows):
        share = cfg.data.extra_train_tie
        preference_rows = np.arange(len(splits.train), len(train_df))
        train_labels = distillation.with_tie_share(train_labels, preference_rows, share)
        log.info("extra rows' targets: %.2f of each on a tie", share)
    if splits.margins is not None:
        train_labels = objective.with_margins(train_labels, splits.margins)
        log.info(
            "training margins: %d of %d rows have a nonzero one (mean %.3f); the winner's "
            "reward must beat the other's by it", np.count_nonzero(splits.margins),
            len(splits.margins), splits.margins.mean(),
        )  # fmt: skip
    return train_labels


def validation_periods(epoch_plans: list[list[Batch]], per_epoch: int) -> list:
    """Each epoch's plan cut into `per_epoch` validation periods (Keras trains each as an
    epoch: the validation, best weights and history of an epoch end follow at every cut)."""
    steps = len(epoch_plans[0])
    if per_epoch > steps:
        raise ConfigError(
            f"--validations-per-epoch {per_epoch} is more than the {steps} training steps per "
            "epoch: use at most that many, or a smaller --batch-size"
        )
    return [period for plan in epoch_plans for period in batching.split_plan(plan, per_epoch)]


def compile_for_training(model, cfg: TrainConfig, total_steps: int, margins: bool = False):
    """Compile with the run's optimizer and loss (with `margins`, for targets that carry them);
    returns the learning-rate schedule over the run's `total_steps` batches (with --grad-accum
    too: Keras evaluates it per batch)."""
    from jaxpref.training import optimization

    optim = cfg.optim
    rate = optimization.learning_rate_schedule(
        optim.learning_rate, optim.schedule, total_steps, optim.warmup_fraction
    )
    objective.compile_model(
        model,
        rate,
        optim.label_smoothing,
        optim.weight_decay,
        optim.grad_accum,
        optim.clip_norm,
        margins,
    )
    if total_steps % optim.grad_accum:
        log.warning(
            "--grad-accum %d: the last %d of the run's %d steps complete no update; their "
            "gradients are accumulated but never applied",
            optim.grad_accum, total_steps % optim.grad_accum, total_steps,
        )  # fmt: skip
    return rate


def restore_progress(model, run: Run) -> Progress:
    """Load the newest state checkpoint; forget what later periods wrote last time (the
    checkpoint's "epoch" and "best_epoch" count validation periods)."""
    meta = checkpoints.restore_state(model, run.paths.state_checkpoints)
    best = meta["best_val_log_loss"]
    progress = Progress(
        period=meta["epoch"],
        step=meta["step_in_epoch"],
        best=math.inf if best is None else best,
        best_period=meta["best_epoch"],
    )
    per_epoch = run.cfg.optim.validations_per_epoch
    log.info(
        "resuming at %s, step %d (best so far %.4f)",
        period_name(progress.period, per_epoch), progress.step, progress.best,
    )  # fmt: skip
    if run.primary:
        forget_periods_after(run.paths, progress.period, per_epoch)
    return progress


def forget_periods_after(paths: RunDir, done: int, per_epoch: int = 1) -> None:
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
    segments, period = [], progress.period
    if progress.step:
        segments.append(Segment(period, period + 1, progress.step))
        period += 1
    for first in range(period, len(period_steps)):
        if first > period and period_steps[first] == period_steps[first - 1]:
            segments[-1] = Segment(segments[-1].first_period, first + 1)
        else:
            segments.append(Segment(first, first + 1))
    return segments


def fit(model, run: Run, inputs: Inputs, progress: Progress, rate):
    """Train the remaining segments; returns the state callback, which tracks the best period,
    and the validation callback, which holds this process's best period's probabilities.

    Raises `Preempted` after saving the state when SIGTERM arrives.
    """
    from jaxpref.training.callbacks import Validation

    state = checkpoints.StateCheckpoint(
        run.paths.state_checkpoints, inputs.period_steps, run.cfg.run.save_every,
        progress.best, progress.best_period, run.paths.best_checkpoints,
    )  # fmt: skip
    validation = Validation(
        lambda: inputs.predict_valid(model),
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
    steps = inputs.period_steps[segment.first_period]
    if segment.skip_steps:
        plans = [inputs.train_plans[segment.first_period][segment.skip_steps :]]
    else:
        plans = inputs.train_plans[segment.first_period : segment.last_period]
    batches = [b for plan in plans for b in plan]
    model.fit(
        inputs.train_dataset(plans, run),
        initial_epoch=segment.first_period,
        epochs=segment.last_period,
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
        sequences_per_pair=inputs.train.packer.sequences_per_pair,
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
    if validation.best_epoch != state.best_epoch:  # the best period ran before a --resume
        log.info("restoring the best weights (epoch %s) to predict validation", best_epoch)
        distribution.restore_checkpoint(model, run.paths.best_checkpoints)  # the best period's
        valid_probs = inputs.predict_valid(model)
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
