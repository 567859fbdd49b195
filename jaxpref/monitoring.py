"""Watching a run: the log, progress lines, XLA compilations, TensorBoard and W&B scalars."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from jaxpref.config import ConfigError, RunConfig

log = logging.getLogger("jaxpref")

_COMPILES = [0]
_LINE_EVERY = [RunConfig.log_every]


def verbose() -> bool:
    """`--verbose` (JAXPREF_VERBOSE=1): debug lines and the native libraries' start-up output."""
    return os.environ.get("JAXPREF_VERBOSE") == "1"


def setup_logging(log_file: Path | None = None, log_every: float | None = None) -> None:
    """Log to stderr, and to `log_file` when given (the primary process's train.log).

    `log_every` (`--log-every`) spaces the progress lines of `Ticker`s outside a terminal.
    """
    if log_every is not None:
        _LINE_EVERY[0] = log_every
    log.setLevel(logging.DEBUG if verbose() else logging.INFO)
    log.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(fmt)
        log.addHandler(handler)
    log.propagate = False


def log_to_files(message: str) -> None:
    """Write one line to the log files only (train.log), not to stderr: for what the CLI prints
    there itself (its `error:` line), so that the log ends as the terminal did."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


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


def tensorboard_name(metric: str) -> str:
    """Keras' `val_log_loss` -> `validation/log_loss`, `loss` -> `train/loss`."""
    if metric.startswith("val_"):
        return f"validation/{metric[4:]}"
    return f"train/{metric}"


class TensorBoardWriter:
    """Scalars to TensorBoard event files in `directory`."""

    def __init__(self, directory: Path):
        import tensorflow as tf

        self.summary = tf.summary
        self.writer = tf.summary.create_file_writer(str(directory))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        with self.writer.as_default(step=step):
            for name, value in scalars.items():
                self.summary.scalar(name, float(value))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def require_wandb():
    """The wandb module, or a ConfigError saying how to install it (an optional extra)."""
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            "--wandb needs the wandb package: pip install 'jaxpref[wandb]' (or pip install wandb)"
        ) from None
    return wandb


class WandbWriter:
    """Scalars to a Weights & Biases run in `project`; its id and W&B's files in `directory`.

    The kept id makes a resumed jaxpref run continue the same W&B run.
    """

    def __init__(self, project: str, directory: Path, config: dict):
        wandb = require_wandb()
        directory.mkdir(parents=True, exist_ok=True)  # W&B's own folder is <dir>/wandb
        id_file = directory / "run-id"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=project, id=run_id, resume="allow", dir=str(directory.parent), config=config,
            name=directory.parent.name,
        )  # fmt: skip

    def write(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log({name: float(value) for name, value in scalars.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


@contextlib.contextmanager
def scalar_writers(
    tensorboard_dir: Path | None, wandb_project: str, wandb_dir: Path, config: dict
) -> Iterator[list]:
    """The run's scalar sinks (TensorBoard, W&B: those asked for), closed when training ends."""
    writers: list = []
    try:
        if tensorboard_dir is not None:
            writers.append(TensorBoardWriter(tensorboard_dir))
        if wandb_project:
            writers.append(WandbWriter(wandb_project, wandb_dir, config))
        yield writers
    finally:
        for writer in writers:
            writer.close()


def weights_fingerprint(model) -> str:
    """Sum and sum of squares of every weight: a cheap check that replicas agree."""
    values = [np.asarray(v.value, dtype=np.float32).ravel() for v in model.weights]
    total = sum(float(np.sum(v, dtype=np.float64)) for v in values)
    squares = sum(float(np.einsum("i,i->", v, v, dtype=np.float64)) for v in values)
    return f"{total:.10e}/{squares:.10e}"


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Hold what C++ libraries write to file descriptor 2 while the block runs (TensorFlow's and
    absl's start-up lines, CUDA probes) and log it at debug level; `verbose()` lets it through."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            held = sink.read().decode("utf-8", "replace").strip()
            if held:
                log.debug("start-up output of native libraries:\n%s", held)


class Progress:
    """Throughput and ETA of a run of steps: pairs/s, tokens/s, time left."""

    def __init__(self, total_steps: int):
        self.total_steps = total_steps
        self.started = time.monotonic()
        self.steps = self.pairs = self.tokens = 0

    def add(self, pairs: int, tokens: int) -> None:
        self.steps += 1
        self.pairs += pairs
        self.tokens += tokens

    def rates(self) -> dict[str, float]:
        seconds = max(time.monotonic() - self.started, 1e-9)
        per_step = seconds / max(self.steps, 1)
        return {
            "pairs_per_s": self.pairs / seconds,
            "tokens_per_s": self.tokens / seconds,
            "eta_s": (self.total_steps - self.steps) * per_step,
            "s_per_step": per_step,
        }


class Ticker:
    """Progress of long work other than training steps: tokenizing, predicting.

    A Keras bar in a terminal; elsewhere (nohup, SLURM, Kaggle logs) a line every `--log-every`
    seconds with the count, rate and time left, so a long stage never leaves the log silent.
    """

    def __init__(self, label: str, total: int, unit: str = "rows"):
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.started = self.last_line = time.monotonic()
        self.bar = None
        if sys.stdout.isatty():
            import keras

            self.bar = keras.utils.Progbar(total, unit_name=unit.rstrip("s"))

    def add(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.add(count)
            return
        now = time.monotonic()
        if now - self.last_line < _LINE_EVERY[0] or self.done >= self.total:
            return
        self.last_line = now
        rate = self.done / max(now - self.started, 1e-9)
        log.info(
            "%s: %d/%d %s (%.0f%%), %.1f %s/s, ETA %s", self.label, self.done, self.total,
            self.unit, 100 * self.done / self.total, rate, self.unit,
            duration((self.total - self.done) / max(rate, 1e-9)),
        )  # fmt: skip


def duration(seconds: float) -> str:
    """H:MM:SS."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def environment_record(devices: Sequence | None = None) -> dict:
    """What a bug report or a repeated run needs: versions, devices, git commit, command line."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    record = {
        "jaxpref": installed("jaxpref"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: installed(name) for name in RECORDED_PACKAGES},
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "variables": {name: os.environ[name] for name in RECORDED_VARIABLES if name in os.environ},
        "cpus": os.cpu_count(),
    }
    if devices is not None:
        import jax

        record["devices"] = {
            "platform": devices[0].platform,
            "kind": devices[0].device_kind,
            "count": len(devices),
            "processes": jax.process_count(),
        }
    return record


RECORDED_PACKAGES = (
    "jax", "jaxlib", "keras", "keras-hub", "tensorflow", "tensorflow-text", "orbax-checkpoint",
    "numpy", "pandas", "scikit-learn", "wandb",
)  # fmt: skip
RECORDED_VARIABLES = (
    "KERAS_BACKEND", "JAX_PLATFORMS", "XLA_FLAGS", "CUDA_VISIBLE_DEVICES", "TPU_VISIBLE_CHIPS",
    "XLA_PYTHON_CLIENT_MEM_FRACTION", "JAXPREF_CACHE",
)  # fmt: skip


def git_commit(directory: Path) -> str | None:
    """The commit checked out where jaxpref's code lives, `+modified` when tracked files differ
    from it (None outside a git checkout)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip

    try:
        commit = git("rev-parse", "HEAD")
        modified = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+modified" if commit and modified else commit or None
