"""Resumable training state: weights, optimizer, RNG and progress, saved with Orbax.

`checkpoints/state/<global step>/` holds the model's trainable and non-trainable variables (the
dropout RNG state among them) and the optimizer's variables (with --grad-accum, the gradients
accumulated since the last update among them); steps count training batches, not optimizer
updates. The checkpoint's custom metadata holds the epoch, the step inside it and the best
validation log loss so far. Orbax writes each checkpoint to a temporary directory and renames
it when complete, so a process killed during a save leaves the previous checkpoint intact.
Every process takes part in a save (Orbax coordinates them); on several processes a preemption
notice (SIGTERM) is agreed on through JAX's preemption sync point, so all save at the same step.

Both kinds restore through `distribution.restore_checkpoint`, onto the layout in use: a run
saved on 8 devices resumes, and predicts, on any device count its batch and model axis fit.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import signal
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from jaxpref.config import DeviceConfig
from jaxpref.parallel import distribution
from jaxpref.rundir import CheckpointError, ResumeError

log = logging.getLogger("jaxpref")

WEIGHT_PARTS = ("trainable_variables", "non_trainable_variables")
SAVED_PARTS = (*WEIGHT_PARTS, "optimizer_variables")


def _checkpointer(directory: Path, keep: int = 2):
    import orbax.checkpoint as oc

    ocp = oc.v1
    return ocp.training.Checkpointer(
        directory=str(directory),
        preservation_policy=ocp.training.preservation_policies.LatestN(keep),
    )


def _multiprocess() -> bool:
    import jax

    return jax.process_count() > 1


class StateCheckpoint(keras.callbacks.Callback):
    """Saves the full training state every `save_every` steps and at every epoch end, and the
    weights of the best epoch.

    Keras' epochs here are periods of `period_steps[i]` steps (whole epochs, or fractions of
    one when validating several times per epoch); every epoch number below counts them.
    `best` / `best_epoch` track the lowest `val_log_loss` seen, so a resumed run keeps choosing
    the best checkpoint against the whole history; an epoch that improves on it saves its
    weights (trainable and non-trainable, no optimizer) to `best_directory/<epoch>` (1-based,
    only the newest kept), before the state that records it. On SIGTERM the state is saved at
    the next step boundary and training stops (`preempted` is set).

    `step` counts the training batches done, from the newest state in `directory` (the one a
    resumed run restored) on: the optimizer's counters fall behind it, by the batches a
    `LossScaleOptimizer` skipped (non-finite gradients), or to one per update with
    accumulation.
    """

    def __init__(
        self,
        directory: Path,
        period_steps: Sequence[int],
        save_every: int | None = None,
        best: float = math.inf,
        best_epoch: int = 0,
        best_directory: Path | None = None,
    ):
        super().__init__()
        self.directory = Path(directory)
        self.period_ends = np.cumsum(period_steps).tolist()
        self.save_every = save_every
        self.best = best
        self.best_epoch = best_epoch
        self.preempted = False
        self._signalled = False
        self._checkpointer = _checkpointer(self.directory)
        latest = self._checkpointer.latest  # named by its global step
        self.step = 0 if latest is None else int(latest.step)
        self._best_directory = best_directory
        self._best_checkpointer = (
            _checkpointer(Path(best_directory), keep=1) if best_directory else None
        )
        self._previous_handler = None

    def on_train_begin(self, logs=None):
        if not _multiprocess():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def on_train_end(self, logs=None):
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
        self._checkpointer.wait()
        if self._best_checkpointer is not None:
            self._best_checkpointer.wait()

    def _on_sigterm(self, signum, frame):
        self._signalled = True

    def _preemption_requested(self, step: int) -> bool:
        if _multiprocess():
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self._signalled

    def save(self) -> int:
        """Save now (blocking); returns the global step saved."""
        model = self.model
        step = self.step
        done = bisect.bisect_right(self.period_ends, step)  # periods complete
        tree = model.get_state_tree()
        state = {part: tree[part] for part in SAVED_PARTS if part in tree}
        meta = {
            "global_step": step,
            "epoch": done,
            "step_in_epoch": step - [0, *self.period_ends][done],
            "best_val_log_loss": None if math.isinf(self.best) else self.best,
            "best_epoch": self.best_epoch,
        }
        with saving(self.directory, step):
            self._checkpointer.save_checkpointables(
                step, {distribution.CHECKPOINTABLE: state}, custom_metadata=meta, force=True
            )
            self._checkpointer.wait()
        return step

    def save_weights(self, epoch: int) -> None:
        """Save the model's weights as the best so far, under its 1-based epoch (blocking)."""
        tree = self.model.get_state_tree()
        weights = {part: tree[part] for part in WEIGHT_PARTS if part in tree}
        with saving(self._best_directory, epoch):
            self._best_checkpointer.save_checkpointables(
                epoch, {distribution.CHECKPOINTABLE: weights}, force=True
            )
            self._best_checkpointer.wait()

    def on_train_batch_end(self, batch, logs=None):
        self.step = step = self.step + 1
        if self._preemption_requested(step):
            saved = self.save()
            log.warning("SIGTERM: saved the training state at step %d; stopping", saved)
            self.preempted = True
            self.model.stop_training = True
            return
        at_epoch_end = step in self.period_ends
        if self.save_every and step % self.save_every == 0 and not at_epoch_end:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get("val_log_loss")
        if current is not None and current < self.best:
            self.best, self.best_epoch = float(current), epoch + 1
            if self._best_checkpointer is not None:
                self.save_weights(self.best_epoch)
        if not self.preempted:
            self.save()


@contextlib.contextmanager
def saving(directory: Path, step: int):
    """Turn a failed save (disk full, I/O error) into one CheckpointError line. Orbax writes a
    checkpoint into a temporary directory and renames it only when complete, so the earlier
    checkpoints stay whole and loadable."""
    try:
        yield
    except OSError as err:
        raise CheckpointError(
            f"could not save checkpoint {step} in {directory} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); the earlier checkpoints there "
            "are intact: free space or fix the disk, then --resume"
        ) from err


def latest_state(directory: Path) -> dict | None:
    """Metadata of the newest complete state checkpoint in `directory`, or None."""
    directory = Path(directory)
    if not directory.exists():
        return None
    checkpointer = _checkpointer(directory)
    latest = checkpointer.latest
    if latest is None:
        return None
    meta = dict(checkpointer.metadata(latest.step).custom_metadata or {})
    meta["path"] = str(directory / str(latest.step))
    return meta


def restore_state(model: keras.Model, directory: Path) -> dict:
    """Load the newest state checkpoint in `directory` into a compiled model, on the devices in
    use; returns its metadata."""
    meta = latest_state(directory)
    if meta is None:
        raise ResumeError(f"no training state to resume in {directory}")
    model.optimizer.build(model.trainable_variables)
    distribution.restore_checkpoint(model, directory)
    return meta


def saved_device_count(directory: Path) -> int | None:
    """How many devices the newest checkpoint in `directory` was saved from (the largest mesh
    among its arrays), or None when there is none."""
    import jax
    import orbax.checkpoint as oc

    meta = latest_state(directory)
    if meta is None:
        return None
    tree = oc.v1.metadata(meta["path"], checkpointable_name=distribution.CHECKPOINTABLE).metadata
    meshes = [getattr(leaf.sharding_metadata, "shape", None) for leaf in jax.tree.leaves(tree)]
    return max((int(np.prod(mesh)) for mesh in meshes if mesh is not None), default=1)


def check_resume_devices(directory: Path, devices: DeviceConfig, batch_size: int) -> None:
    """Refuse, in one line naming both device counts, to resume on `devices` when they cannot
    hold the run's layout: its model axis must divide them and its global batch split evenly
    over the (devices / model axis) groups. Any other count resumes: the state is restored onto
    the new layout, and the data order does not depend on the devices.

    Example:
        check_resume_devices(RunDir(run_dir).state_checkpoints, cfg.devices, 8)  # on 3: refused
    """
    count = len(distribution.select_devices(devices.devices, devices.num_devices))
    axis = devices.model_parallel
    if count % axis == 0 and batch_size % (count // axis) == 0:
        return
    saved = saved_device_count(directory)
    if saved is None:
        return  # nothing to resume: restore_state says so
    fitting = [axis * groups for groups in range(1, batch_size + 1) if batch_size % groups == 0]
    layout = f"--batch-size {batch_size}" + (f" with --model-parallel {axis}" if axis > 1 else "")
    *most, last = fitting
    choices = f"{', '.join(map(str, most))} or {last}" if most else str(last)
    raise ResumeError(
        f"--resume on {count} devices: the run's state was saved on {saved}, and its {layout} "
        f"does not split over {count}; resume on {choices} devices (--num-devices)"
    )
