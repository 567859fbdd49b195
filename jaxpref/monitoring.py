"""Watching a run: the log, XLA compilations, one line per epoch, and a weight fingerprint."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger("jaxpref")

_COMPILES = [0]


def setup_logging(log_file: Path | None = None) -> None:
    """Log to stderr, and to `log_file` when given (the primary process's train.log)."""
    log.setLevel(logging.INFO)
    log.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(fmt)
        log.addHandler(handler)
    log.propagate = False


def _count_compiles(event: str, duration: float, **kwargs) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


@functools.cache
def _listen_for_compiles() -> None:
    import jax

    jax.monitoring.register_event_duration_secs_listener(_count_compiles)


def compile_counter() -> Callable[[], int]:
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
        seconds = time.time() - started[0]
        log.info(
            "epoch %d: %s (%.0f s, %d XLA compilations)", epoch + 1, items, seconds, compiles()
        )

    return keras.callbacks.LambdaCallback(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end)


def weights_fingerprint(model) -> str:
    """Sum and sum of squares of every weight: a cheap check that replicas agree."""
    values = [np.asarray(v.value, dtype=np.float32).ravel() for v in model.weights]
    total = sum(float(np.sum(v, dtype=np.float64)) for v in values)
    squares = sum(float(np.einsum("i,i->", v, v, dtype=np.float64)) for v in values)
    return f"{total:.10e}/{squares:.10e}"
