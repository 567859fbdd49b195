"""The run directory: the one statement of what a training run writes and inference reads.

```
RUN/
  config.json            resolved TrainConfig (automatic choices filled in)
  preset/                keras-hub preset without weights: backbone config.json, tokenizer,
                         preprocessor (the trained weights live in the checkpoints)
  checkpoints/best/<e>/  weights of epoch e (numbered from 1) with the lowest val_log_loss
  checkpoints/state/<s>/ resumable state at global step s (weights, optimizer, RNG, progress)
  split.csv              id -> train / valid / extra
  history.csv            per epoch (1-based): loss, log_loss, accuracy (train and validation)
  valid_predictions.csv  the best weights' calibrated predictions for the validation rows
  calibration.json       the temperature fitted on them, with the log loss before and after
  summary.json           best epoch, best val_log_loss, the class-prior baseline, timings
  train.log              the log
  env.json               versions, devices, processes, git commit and command line of the run
  tensorboard/           TensorBoard event files: losses, accuracy, learning rate, pairs/s
  evaluation/            report of `evaluate.py` (evaluation.md/.json, plots)
```

Inference needs config.json, preset/, checkpoints/best/ and (if present) calibration.json: no
hub access and no training data.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


class RunDirError(RuntimeError):
    """The run directory lacks something a command needs."""


class ResumeError(RunDirError):
    """Nothing to resume, or a fresh run would overwrite an earlier one."""


class Preempted(Exception):
    """Training stopped on SIGTERM after saving its state; rerun with --resume."""


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
    evaluation = property(lambda self: self.root / "evaluation")

    def has_checkpoints(self) -> bool:
        return (self.root / "checkpoints").exists()

    @staticmethod
    def require(path: Path) -> Path:
        """`path`, or RunDirError saying it is missing."""
        if not path.exists():
            raise RunDirError(
                f"{path} is missing; is this the run directory of a finished training?"
            )
        return path
