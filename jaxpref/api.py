"""The public Python API: train, load a model and predict (or score, a reward model), evaluate,
export (docs/api.md).

`jaxpref/__init__.py` re-exports these names lazily, so `import jaxpref` loads no framework;
each function sets up JAX, Keras and the devices on first use, as the command line does, and
runs the same job functions (`jaxpref <command>` is a thin layer over this module). Failures
raise the errors the command line turns into its `error:` line (ConfigError, DataError,
RunDirError, DeviceError, ...), each naming the setting, file, row or column at fault.
Every other module of the package is internal and may change.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import jaxpref
from jaxpref import monitoring, rundir
from jaxpref.config import ConfigError, TrainConfig
from jaxpref.data import arena, preferences, sources
from jaxpref.data.probabilities import submission_frame
from jaxpref.data.responses import responses_frame
from jaxpref.models import presets
from jaxpref.parallel import distribution
from jaxpref.rundir import ResumeError, RunDir, writable_directory

__all__ = jaxpref.__all__  # the public names, listed once (jaxpref/__init__.py)

log = logging.getLogger("jaxpref")

read_arena_csv = arena.read_arena_csv
read_preferences = preferences.read_chosen_rejected
read_rows = sources.read_rows

RunPath = str | os.PathLike
"""A run directory, an exported bundle, or a `TrainedRun` (it is os.PathLike)."""


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A finished training (`train` returns one): its run directory and what its summary.json
    says. It is os.PathLike, so it goes wherever a run directory does.

    Example:
        run = jaxpref.train(config)
        print(run.best_val_log_loss, run.best_epoch, run.path)
        predictor = jaxpref.load(run)
    """

    path: Path
    best_val_log_loss: float
    """Validation log loss of the best epoch (or validation period), before calibration."""
    calibrated_val_log_loss: float
    """The same after temperature scaling: what the run's predictions score on validation."""
    best_epoch: float
    """Epochs trained when validation was best (fractional with validations_per_epoch > 1)."""
    summary: Mapping[str, Any]
    """Everything in summary.json: also temperature, accuracy, the class prior's log loss,
    row counts and training seconds."""

    def __fspath__(self) -> str:
        return str(self.path)


class Predictor:
    """A trained model on its devices, ready to predict (`load` makes one).

    Results are DataFrames in the submission's layout, one row per input row in order: `id`,
    then the calibrated probabilities `winner_model_a`, `winner_model_b`, `winner_tie` (each
    row sums to 1). `result.to_csv(path, index=False)` is a competition submission;
    `result.iloc[:, 1:].to_numpy()` the (n, 3) array.

    Example:
        predictor = jaxpref.load("runs/deberta")
        predictions = predictor.predict(jaxpref.read_arena_csv("test.csv", labelled=False))
    """

    def __init__(self, loaded, path: Path):
        self.loaded = loaded  # a serve.predict.LoadedRun
        self.path = path

    @property
    def config(self) -> TrainConfig:
        """The settings the model was trained with."""
        return self.loaded.config

    def __repr__(self) -> str:
        return f"Predictor({str(self.path)!r}, preset={self.config.model.preset!r})"

    def predict(self, frame: pd.DataFrame, tta: bool = False) -> pd.DataFrame:
        """Class probabilities for every row of an arena frame (as `read_arena_csv` gives: an
        `id` column and `prompt`, `response_a`, `response_b` cells that are lists of turns),
        calibrated as `jaxpref infer` does. `tta` also predicts each pair with A and B swapped
        and averages in the mirrored prediction (twice the compute).

        Example:
            test = jaxpref.read_arena_csv("test.csv", labelled=False)
            predictor.predict(test).to_csv("submission.csv", index=False)
        """
        rows = arena.checked_pairs(frame, "the frame")
        return submission_frame(rows["id"], self.loaded.predict(rows, tta))

    def predict_pairs(
        self,
        prompts: str | Sequence[str | Sequence[str | None]],
        responses_a: str | Sequence[str | Sequence[str | None]],
        responses_b: str | Sequence[str | Sequence[str | None]],
        tta: bool = False,
    ) -> pd.DataFrame:
        """Class probabilities for pairs given as plain Python values: three strings (one
        pair), or three lists with one entry a pair, each entry a string (one turn) or a list
        of turns (a multi-turn conversation). Ids are "0", "1", ... in order; otherwise as
        `predict`.

        Example:
            predictor.predict_pairs("What is 2 + 2?", "4.", "It is 5.")
            predictor.predict_pairs(
                [["Hi!", "Tell me a joke."]], [["Hello!", "Why did..."]], [["Hey.", "No."]]
            )
        """
        rows = arena.pairs_frame(prompts, responses_a, responses_b, "predict_pairs")
        return self.predict(rows, tta)

    def rewards(self, frame: pd.DataFrame) -> np.ndarray:
        """A reward model's (--objective reward) rewards of both responses of every row of an
        arena frame (as `predict` takes), in order: (n, 2) float64, [response A, response B].
        Raw scores (no temperature), the logits of its transformers export: P(A wins) /
        P(B wins) in `predict` is exp((rA - rB) / T). ConfigError for a 3-class model.

        Example:
            pairs = jaxpref.read_rows("prefs.jsonl")  # label 0: A is the chosen response
            rewards = predictor.rewards(pairs)
            chosen_higher = (rewards[:, 0] > rewards[:, 1]) == (pairs["label"] == 0)
        """
        rows = arena.checked_pairs(frame, "the frame")
        return self.loaded.rewards(rows)

    def score(
        self,
        prompts: str | Sequence[str | Sequence[str | None]],
        responses: str | Sequence[str | Sequence[str | None]],
    ) -> np.ndarray:
        """A reward model's rewards (n,) of single responses, in order: two strings (one
        response to one prompt), or two lists with one entry a response, a string (one turn) or
        a list of turns (the user's; that conversation's replies, the last the one scored).
        Each is the reward the response gets as a side of any pair (`rewards`). ConfigError
        for a 3-class model.

        Example:
            candidates = ["7", "9", "I cannot say."]
            rewards = predictor.score(["Name a prime."] * 3, candidates)
            best = candidates[int(rewards.argmax())]  # best-of-n
        """
        rows = responses_frame(prompts, responses, "score")
        return self.loaded.score(rows)


def train(
    config: TrainConfig,
    train_frame: pd.DataFrame | None = None,
    valid_frame: pd.DataFrame | None = None,
    resume: bool = False,
) -> TrainedRun:
    """Train as `jaxpref train` does, on the devices of `config.devices`; returns the run.

    The rows are `config.data.train_file` split by `valid_fraction`, or with `valid_file`'s
    rows to validate on, unless `train_frame` and `valid_frame` are both given (rows of that
    file, as `read_rows` gives them, split your own way; evaluate reads them back from it).
    With `resume`, the
    run in `config.run.run_dir` continues from its newest state checkpoint with its saved
    settings; a setting of `config` that differs from TrainConfig's default and from the
    saved one is refused (ConfigError), as `--resume` refuses a differing flag.

    Example:
        config = jaxpref.TrainConfig().replace(
            preset="deberta_v3_small_en", train_file="train.csv", run_dir="runs/deberta"
        )
        run = jaxpref.train(config)
    """
    if (train_frame is None) != (valid_frame is None):
        raise ConfigError("train_frame and valid_frame go together: pass both, or neither")
    if train_frame is not None and not config.data.train_file:
        raise ConfigError("with train_frame and valid_frame, set train_file to their file")
    config = config.validate()
    if resume:
        defaults = TrainConfig().flat()
        changed = {k: v for k, v in config.flat().items() if v != defaults[k]}
        config = resumed_config(config, changed)
    check_training(config)
    start(config.devices.devices, config.devices.num_devices)
    from jaxpref.training import trainer

    join_processes()
    try:
        summary = dict(trainer.train(config, train_frame, valid_frame, resume))
    finally:
        monitoring.setup_logging()  # the run's train.log is complete: log to stderr only
    path = Path(summary.pop("run_dir"))
    return TrainedRun(
        path, summary["best_val_log_loss"], summary["calibrated_val_log_loss"],
        summary["best_epoch"], summary,
    )  # fmt: skip


def load(
    run_or_bundle: RunPath,
    devices: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    quantize: str | None = None,
    model_parallel: int | None = None,
) -> Predictor:
    """Load a run's best weights (or an exported bundle's) on `devices` for prediction.

    `precision`: "auto" is the run's own on GPU/TPU and float32 on CPU, or one of
    config.INFERENCE_PRECISIONS. `batch_size` defaults to the training batch rounded up to a
    multiple of the devices. `quantize="int8"` stores the backbone's weights in int8 (Keras'
    `quantize`, LoRA merged first); `model_parallel` splits the weights over that many devices
    (None: the run's own setting, or the greatest common divisor of it and the device count
    where it does not divide them). One model: for a cross-validation's folds, `export` their
    mean and load that.

    Example:
        predictor = jaxpref.load("runs/deberta", devices="gpu")
    """
    runs = rundir.expand_runs([run_or_bundle])
    if len(runs) > 1:
        raise ConfigError(
            f"{os.fspath(run_or_bundle)} holds {len(runs)} fold runs: load one of them, or "
            "export(...) their mean into one bundle and load that"
        )
    rundir.require_trained(runs[0])
    start(devices)
    from jaxpref.serve import predict

    loaded = predict.load_for_prediction(
        runs[0], batch_size, devices, None, precision, quantize, model_parallel
    )
    return Predictor(loaded, runs[0])


def evaluate(
    run: RunPath,
    file: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    devices: str = "auto",
    *,
    csv: str | os.PathLike | None = None,
) -> dict:
    """Score a run and simple baselines (fitted on the run's training split) on the same rows,
    as `jaxpref evaluate` does; write evaluation.json/.md and plots to `out_dir` (default:
    RUN/evaluation) and return what evaluation.json holds: `scores` by predictor (the model
    first, `log_loss`, `accuracy`, ...), `rows`, `model_log_loss_se`, `model_minus_baseline`.

    Without `file` the rows are the run's validation rows, with its saved calibrated
    predictions (no model is loaded; optimistic: these rows chose the best epoch). With `file`,
    labelled rows of any `read_rows` source, the run's best weights predict it on `devices`.
    `csv` is the earlier name of `file`.

    Example:
        report = jaxpref.evaluate(run)
        report["scores"]["model"]["log_loss"]
    """
    if csv is not None:
        if file is not None:
            raise ConfigError("file and csv are one argument (csv is its earlier name): give one")
        file = csv
    monitoring.setup_logging()
    if file is not None:
        sources.source_kind(file)
        start(devices)
    from jaxpref.jobs import evaluate as evaluate_job

    return evaluate_job.evaluate_run(run, file, out_dir, devices)


def export(
    runs: RunPath | Iterable[RunPath],
    out: str | os.PathLike,
    devices: str = "auto",
) -> Path:
    """Write a self-contained inference bundle of one run, or of the mean of several runs'
    weights (a cross-validation's directory stands for its folds), as `jaxpref export` does;
    returns its directory, which `load` reads like a run.

    Example:
        bundle = jaxpref.export(run, "bundles/deberta")
        jaxpref.load(bundle).predict(test)
    """
    run_dirs = [runs] if isinstance(runs, str | os.PathLike) else list(runs)
    start(devices)
    from jaxpref.jobs import export as export_job

    result = export_job.export_runs(run_dirs, out, devices)
    log.info("wrote %s (%.2f MiB)", result.path, result.bundle_bytes / 2**20)
    return result.path


RESUME_MAY_CHANGE = ("run_dir", "devices", "num_devices")


def resumed_config(wanted: TrainConfig, given: Mapping[str, Any]) -> TrainConfig:
    """The saved config of the run in `wanted`'s run directory, on `wanted`'s devices.

    Any other setting in `given` ({field name: value}, what the user set) that differs from
    the saved one is refused: a resumed run replays the same data order with the same model.
    """
    run_dir = wanted.run.run_dir
    saved = RunDir(run_dir or ".").config
    if not run_dir or not saved.exists():
        raise ResumeError(f"--resume needs --run-dir of an earlier run ({saved})")
    cfg = TrainConfig.from_json(saved)
    differ = [
        f"--{name.replace('_', '-')} {value} (saved: {cfg.flat()[name]})"
        for name, value in given.items()
        if name not in RESUME_MAY_CHANGE and value != cfg.flat()[name]
    ]
    if differ:
        raise ConfigError(
            f"--resume continues {run_dir} with its saved settings, but these differ: "
            f"{'; '.join(differ)}. Drop them, or start a new --run-dir."
        )
    return cfg.replace(**{k: wanted.flat()[k] for k in RESUME_MAY_CHANGE})


def check_training(cfg: TrainConfig) -> None:
    """What a training can be refused for without a framework: a data file or directory that
    is missing or of no known kind, a run directory that cannot be written, a preset path that
    is no preset or whose config.json cannot be read, no wandb package."""
    for path in (cfg.data.train_file, cfg.data.valid_file, cfg.data.extra_train):
        if path:
            sources.source_kind(path)
    presets.probe(cfg.model.preset)
    if cfg.run.wandb:
        monitoring.require_wandb()
    if cfg.run.run_dir:
        writable_directory(Path(cfg.run.run_dir), "the run directory")


def start(devices: str, num_devices: int | None = None) -> None:
    """Log to stderr, and set up JAX for `devices` and load the frameworks (on first use)."""
    monitoring.setup_logging()
    distribution.start_frameworks(devices, num_devices)


def join_processes() -> None:
    """Join the other processes of a launcher JAX detects (SLURM, Open MPI, TPU pods), once."""
    import jax

    if not jax.distributed.is_initialized():
        distribution.initialize_processes()
