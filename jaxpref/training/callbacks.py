"""Keras callbacks of a training run: validation, progress lines, scalars, history.csv."""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np

from jaxpref.monitoring import (
    Progress,
    compile_counter,
    duration,
    tensorboard_name,
)
from jaxpref.parallel.distribution import place_on_mesh
from jaxpref.rundir import Diverged, epoch_at, period_name
from jaxpref.scoring.metrics import accuracy, log_loss, smoothed_log_loss
from jaxpref.training.optimization import batches_done

log = logging.getLogger("jaxpref")


class MeshPlacement(keras.callbacks.Callback):
    """Keeps the training state on the distribution's mesh where Keras leaves it on one device
    (the optimizer is built, and the metrics reset, inside `fit`), so that no batch shape
    compiles twice (`distribution.place_on_mesh`)."""

    def on_train_begin(self, logs=None):
        self.place()

    def on_epoch_begin(self, epoch, logs=None):
        self.place()

    def place(self) -> None:
        model = self.model
        place_on_mesh([*model.variables, *model.optimizer.variables, *model.metrics_variables])


class RunMonitor(keras.callbacks.Callback):
    """Watches `model.fit` over `batches` (the global batches it feeds, in order).

    Keras' epochs are validation periods, `per_epoch` to an epoch of the run's `epochs`.
    `rate_at(step)` gives the learning rate (`optimization.rate_at`). Every `log_every` seconds
    (None: never; the Keras bar shows progress in a terminal) it logs step, epoch, pairs/s,
    computed tokens/s, loss, learning rate and ETA (of the period, and of the run's
    `total_steps` training steps at the same speed); after each epoch one line with the epoch's
    metrics and XLA compilations (every padded length compiles the train step once; later
    epochs should compile nothing). The same figures, the validation metrics and the padding
    efficiency go to each of `writers` (`monitoring.scalar_writers`: TensorBoard, W&B).
    """

    def __init__(
        self,
        batches: Sequence,
        rate_at: Callable[[int], float],
        log_every: float | None = None,
        writers: Sequence = (),
        padding_efficiency: float | None = None,
        sequences_per_pair: int = 2,
        epochs: int | None = None,
        per_epoch: int = 1,
        total_steps: int | None = None,
    ):
        super().__init__()
        self.batches = batches
        self.total_steps = total_steps  # of the whole run, for its ETA
        self.epochs, self.per_epoch = epochs, per_epoch
        self.rate_at = rate_at
        self.log_every = log_every
        self.writers = writers
        self.padding_efficiency = padding_efficiency
        self.sequences_per_pair = sequences_per_pair  # siamese: 2; cross-encoder: 1

    def on_train_begin(self, logs=None):
        self.compiles = compile_counter()
        self.position = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.started = epoch, time.monotonic()
        self.progress = Progress(self.params["steps"])
        self.last_line = self.started

    def on_train_batch_end(self, step, logs=None):
        batch = self.batches[self.position]
        self.position += 1
        computed = self.sequences_per_pair * len(batch.rows) * batch.length
        self.progress.add(int((batch.weights > 0).sum()), computed)
        if self.log_every is not None and time.monotonic() - self.last_line >= self.log_every:
            self.last_line = time.monotonic()
            self.report(step + 1, (logs or {}).get("loss"))

    def report(self, step: int, loss: float | None) -> None:
        rates, rate = self.progress.rates(), self.learning_rate()
        eta = duration(rates["eta_s"])
        if self.total_steps:  # the run's training steps left, at this period's speed
            left = self.total_steps - batches_done(self.model.optimizer)
            eta += f" (run {duration(left * rates['s_per_step'])})"
        log.info(
            "%s step %d/%d: loss %s, lr %.3g, %.1f pairs/s, %.0f tokens/s, ETA %s",
            period_name(self.epoch, self.per_epoch, self.epochs or self.params["epochs"]),
            step, self.params["steps"],
            "?" if loss is None else f"{float(loss):.4f}", rate, rates["pairs_per_s"],
            rates["tokens_per_s"], eta,
        )  # fmt: skip
        self.write({"train/learning_rate": rate, "train/pairs_per_s": rates["pairs_per_s"]})

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        items = " ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items()))
        seconds = time.monotonic() - self.started
        log.info(
            "epoch %s: %s (%.0f s, %d XLA compilations)", epoch_at(epoch + 1, self.per_epoch),
            items, seconds, self.compiles(),
        )  # fmt: skip
        scalars = {tensorboard_name(k): v for k, v in logs.items()}
        scalars["train/pairs_per_s"] = self.progress.rates()["pairs_per_s"]
        scalars["train/learning_rate"] = self.learning_rate()
        if self.padding_efficiency is not None:
            scalars["train/padding_efficiency"] = self.padding_efficiency
        self.write(scalars)

    def learning_rate(self) -> float:
        return self.rate_at(batches_done(self.model.optimizer))

    def write(self, scalars: dict[str, float]) -> None:
        step = batches_done(self.model.optimizer)
        for writer in self.writers:
            writer.write(step, scalars)


class HistoryWriter(keras.callbacks.Callback):
    """Appends one row per validation period (`per_epoch` to an epoch) to history.csv: `epoch`
    (`rundir.epoch_at`: 1, 2.. or 0.5, 1.., as the log lines count) and each metric Keras
    reports."""

    def __init__(self, path: Path, per_epoch: int = 1):
        super().__init__()
        self.path = Path(path)
        self.per_epoch = per_epoch

    def on_epoch_end(self, epoch, logs=None):
        metrics = {k: float(v) for k, v in sorted((logs or {}).items())}
        row = {"epoch": epoch_at(epoch + 1, self.per_epoch), **metrics}
        new = not self.path.exists() or not self.path.stat().st_size
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow({k: "nan" if math.isnan(v) else v for k, v in row.items()})


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training at the first step whose loss is NaN or infinite, before anything is saved
    from the diverged weights: the best weights and the last state checkpoint stay as they were.
    """

    def __init__(self, best_directory: Path, per_epoch: int = 1):
        super().__init__()
        self.best_directory = best_directory
        self.per_epoch = per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, step, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise Diverged(
                f"the training loss became {float(loss)} at "
                f"{period_name(self.epoch, self.per_epoch)}, step "
                f"{step + 1}; stopped without saving it. The best weights so far stay in "
                f"{self.best_directory}. Try a lower --learning-rate."
            )


class Validation(keras.callbacks.Callback):
    """Scores the validation rows at every epoch end and adds val_loss, val_log_loss and
    val_accuracy to the epoch's logs, for the callbacks after it.

    `predict()` gives their probabilities (n, 3) through the model's predict function, compiled
    once per padded length for the whole run; Keras' `validation_data` would compile a test
    function for each length as well, and the end of the run would predict them again. The best
    epoch's probabilities are kept for calibrating the run without a second pass, and every
    epoch's go to `keep(epoch, probs)` (1-based epoch) when given.
    """

    def __init__(
        self,
        predict: Callable[[], np.ndarray],
        labels: np.ndarray,
        label_smoothing: float,
        keep: Callable[[int, np.ndarray], None] | None = None,
    ):
        super().__init__()
        self.predict_rows = predict
        self.labels = labels
        self.label_smoothing = label_smoothing
        self.keep = keep
        self.best, self.best_epoch, self.best_probs = math.inf, 0, None

    def on_epoch_end(self, epoch, logs=None):
        probs = self.predict_rows()
        scores = dict.fromkeys(("val_loss", "val_log_loss", "val_accuracy"), math.nan)
        if np.isfinite(probs).all():
            scores = {
                "val_loss": smoothed_log_loss(probs, self.labels, self.label_smoothing),
                "val_log_loss": log_loss(probs, self.labels),
                "val_accuracy": accuracy(probs, self.labels),
            }
        logs.update(scores)  # the dict every later callback of this epoch receives
        if self.keep is not None:
            self.keep(epoch + 1, probs)
        if scores["val_log_loss"] < self.best:
            self.best, self.best_epoch, self.best_probs = scores["val_log_loss"], epoch + 1, probs
