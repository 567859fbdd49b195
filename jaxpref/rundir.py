"""The run directory: the one statement of what a training run writes and inference reads.

```
RUN/
  config.json            resolved TrainConfig (automatic choices filled in)
  preset/                keras-hub preset without weights: backbone config.json, tokenizer,
                         preprocessor (the trained weights live in the checkpoints)
  checkpoints/best/<p>/  the weights with the lowest val_log_loss, after validation period p
                         (from 1; = the epoch unless --validations-per-epoch N > 1)
  checkpoints/state/<s>/ resumable state at global step s (weights, optimizer, RNG, progress)
  split.csv              id -> train / valid / extra
  history.csv            per validation (epoch 1, 2.. or 0.5, 1..): loss, log_loss, accuracy
  valid_predictions.csv  the best weights' calibrated predictions for the validation rows
  validation/epoch-<e>.csv  validation predictions after e epochs, uncalibrated (nothing chosen on
                         the validation rows: cross-validation's selection-free scores)
  calibration.json       the temperature fitted on them, with the log loss before and after
  summary.json           best epoch, best val_log_loss, the class-prior baseline, timings
  train.log              the log
  env.json               versions, devices, processes, git commit and command line of the run
  tensorboard/           TensorBoard event files: losses, accuracy, learning rate, pairs/s
  wandb/                 with --wandb: the W&B run's local files and its id (run-id)
  evaluation/            report of `evaluate.py` (evaluation.md/.json, plots)
```

Inference needs config.json, preset/, checkpoints/best/ and (if present) calibration.json: no
hub access and no training data.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from jaxpref.config import ConfigError


class RunDirError(RuntimeError):
    """The run directory lacks something a command needs."""


class ResumeError(RunDirError):
    """Nothing to resume, or a fresh run would overwrite an earlier one."""


class Preempted(Exception):
    """Training stopped on SIGTERM after saving its state; rerun with --resume."""


class Diverged(RuntimeError):
    """The training loss became NaN or infinite; the checkpoints saved before it are kept."""


class CheckpointError(RunDirError):
    """A checkpoint could not be written or read; earlier complete checkpoints stay intact."""


@dataclasses.dataclass
class RunLock:
    """A held run-directory lock (`RunDir.lock`); `left_by` names the holder of a lock file
    that a run which ended without releasing it left behind ("" when there was none)."""

    path: Path
    handle: object
    left_by: str = ""

    def release(self) -> None:
        """Remove the lock file and drop the lock: a finished or failed run leaves none."""
        if not self.handle.closed:
            self.path.unlink(missing_ok=True)
            self.handle.close()


def writable_directory(directory: Path, what: str) -> None:
    """Make `directory` and prove it writable, or RunDirError naming it: before any work."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise RunDirError(f"cannot write {what} {directory}: {err}") from None


def new_directory(path: str | os.PathLike, flag: str) -> Path:
    """`path` as an absolute path, or RunDirError if it is a file or a non-empty directory:
    an output directory given with `flag` that nothing may be overwritten in."""
    path = Path(path).expanduser().resolve()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RunDirError(f"{flag} {path} exists and is not an empty directory; choose another")
    return path


def epoch_at(period: int, per_epoch: int) -> float:
    """Epochs trained after `period` validation periods of 1 / `per_epoch` epoch each: what
    logs, history.csv, file names and summaries call the epoch (whole epochs as ints)."""
    epoch = round(period / per_epoch, 4)
    return int(epoch) if epoch == int(epoch) else epoch


def period_name(period: int, per_epoch: int, epochs: int | None = None) -> str:
    """How logs name 0-based validation period `period`: "epoch 2", "epoch 2/3", or with
    several periods per epoch "epoch 2/3 part 1/4"."""
    epoch, part = divmod(period, per_epoch)
    name = f"epoch {epoch + 1}" if epochs is None else f"epoch {epoch + 1}/{epochs}"
    return name if per_epoch == 1 else f"{name} part {part + 1}/{per_epoch}"


@dataclasses.dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory (always absolute: Orbax wants absolute paths)."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root).expanduser().resolve())

    config = property(lambda self: self.root / "config.json")
    preset = property(lambda self: self.root / "preset")
    best_checkpoints = property(lambda self: self.root / "checkpoints" / "best")
    state_checkpoints = property(lambda self: self.root / "checkpoints" / "state")
    split = property(lambda self: self.root / "split.csv")
    history = property(lambda self: self.root / "history.csv")
    valid_predictions = property(lambda self: self.root / "valid_predictions.csv")
    calibration = property(lambda self: self.root / "calibration.json")
    summary = property(lambda self: self.root / "summary.json")
    log = property(lambda self: self.root / "train.log")
    env = property(lambda self: self.root / "env.json")
    tensorboard = property(lambda self: self.root / "tensorboard")
    wandb = property(lambda self: self.root / "wandb")
    evaluation = property(lambda self: self.root / "evaluation")

    def epoch_predictions(self, epoch: float) -> Path:
        """The uncalibrated validation predictions after `epoch` epochs (`epoch_at`)."""
        return self.root / "validation" / f"epoch-{epoch:g}.csv"

    def has_checkpoints(self) -> bool:
        return (self.root / "checkpoints").exists()

    def create(self) -> None:
        """Make the directory and prove it writable now, before any tokenizing or training."""
        writable_directory(self.root, "the run directory")

    def lock(self) -> RunLock:
        """Hold an exclusive lock on the directory until the returned lock is released (or the
        process ends); a second run on it is refused at once. The kernel drops the lock of a
        process that dies, so a killed run never leaves it stuck: the next run takes over the
        lock file and says whose it was (`RunLock.left_by`)."""
        import fcntl

        path = self.root / ".lock"
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunDirError(
                f"{self.root} is in use by a running training ({holder}); wait for it to end, "
                "or choose another --run-dir"
            ) from None
        handle.seek(0)
        left_by = handle.read().strip()
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        return RunLock(path, handle, left_by)

    @staticmethod
    def require(path: Path) -> Path:
        """`path`, or RunDirError saying it is missing."""
        if not path.exists():
            raise RunDirError(
                f"{path} is missing; is this the run directory of a finished training?"
            )
        return path


def expand_runs(run_dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """The run directories (or bundles) to predict with, in order: a cross-validation's
    directory (cv.json beside fold0/, fold1/, ...) stands for its fold runs."""
    runs: list[Path] = []
    for run_dir in run_dirs:
        root = Path(run_dir)
        folds = [path for path in root.glob("fold*") if path.name[4:].isdigit()]
        folds.sort(key=lambda path: int(path.name[4:]))
        runs += folds if (root / "cv.json").exists() and folds else [root]
    repeated = sorted({str(run) for run in runs if runs.count(run) > 1})
    if repeated:
        raise ConfigError(f"--run-dir {repeated[0]}: given twice")
    return runs


def require_trained(path: str | os.PathLike) -> None:
    """RunDirError unless `path` holds a finished training's files or a bundle's manifest:
    what commands check before they load any framework, so a wrong path fails in a second."""
    root = Path(path)
    if (root / "bundle.json").is_file():
        return
    paths = RunDir(root)
    for part in (paths.config, paths.preset, paths.best_checkpoints):
        RunDir.require(part)
