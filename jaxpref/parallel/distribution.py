"""Device selection and Keras data parallelism over every local (and global) accelerator;
checkpoints restored onto the devices and layout in use.

Order matters: `configure_environment` runs before JAX or Keras is imported, and
`setup` runs before any Keras object is built, or variables stay on one device.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from pathlib import Path

from jaxpref import monitoring
from jaxpref.config import PLATFORMS, ConfigError
from jaxpref.models import presets

log = logging.getLogger("jaxpref")

# The name of the one checkpointable (a pytree of the model's state parts) in every checkpoint.
CHECKPOINTABLE = "pytree"


class DeviceError(RuntimeError):
    """The requested devices are not available or do not fit the batch."""


def configure_environment(devices: str, num_devices: int | None) -> None:
    """Select the JAX backend and platform through the environment, before JAX starts.

    With `--devices cpu --num-devices N` the host CPU is split into N XLA devices, which is how
    several accelerators are simulated on a laptop or CI machine.
    """
    if devices not in PLATFORMS:
        raise DeviceError(f"--devices must be one of {', '.join(PLATFORMS)}, got {devices!r}")
    os.environ["KERAS_BACKEND"] = "jax"
    # TensorFlow (tf.data only) logs C++ errors such as oneDNN's DT_INT64 notice while it
    # tokenizes; they concern its kernels, never jaxpref's results: shown with --verbose only.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if monitoring.verbose() else "3")
    if devices != "auto":
        os.environ["JAX_PLATFORMS"] = devices
    if devices == "cpu" and num_devices and num_devices > 1:
        flag = f"--xla_force_host_platform_device_count={num_devices}"
        flags = [
            f
            for f in os.environ.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")
        ]
        os.environ["XLA_FLAGS"] = " ".join([*flags, flag])


CLUSTER_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "OMPI_MCA_orte_hnp_uri", "TPU_WORKER_HOSTNAMES")


def cluster_detected() -> bool:
    """Whether a launcher JAX auto-detects started several processes (SLURM, MPI, TPU pods...)."""
    if any(os.environ.get(v) for v in CLUSTER_VARIABLES):
        return True
    return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize_processes(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout: int = 300,
    heartbeat_timeout: int = 100,
) -> None:
    """Join the other processes through JAX's own runtime (NCCL on GPU, gloo on CPU).

    Explicit flags win; then `JAX_COORDINATOR_ADDRESS`/`JAX_NUM_PROCESSES`/`JAX_PROCESS_ID`;
    then the launchers JAX detects (SLURM, Open MPI, Cloud TPU, GKE). One process and no
    launcher: nothing to do. A process that dies is noticed within `heartbeat_timeout` seconds
    and every other process then exits with an error instead of waiting forever.
    """
    import jax

    num_processes = num_processes or _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    explicit = coordinator_address is not None or (num_processes or 1) > 1
    if not explicit and not cluster_detected():
        return
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if coordinator_address and process_id:
        wait_for_coordinator(coordinator_address, timeout)
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=timeout,
            heartbeat_timeout_seconds=heartbeat_timeout,
        )
    except Exception as err:  # JAX raises several types here; all mean the same to a user.
        raise DeviceError(
            f"could not join the other processes (coordinator {coordinator_address or 'auto'}, "
            f"{num_processes or 'auto'} processes, this is {process_id}): {err}"
        ) from err


def wait_for_coordinator(address: str, timeout: float) -> None:
    """Fail with a clear message, not JAX's abort, when process 0 cannot be reached."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return
        except OSError as err:
            if time.monotonic() > deadline:
                raise DeviceError(
                    f"could not join the other processes: coordinator {address} unreachable "
                    f"for {timeout:.0f} s ({err}). Is process 0 running, and is the port open "
                    "between the hosts?"
                ) from None
            time.sleep(0.5)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def load_frameworks() -> None:
    """Import TensorFlow (tf.data only, kept off the accelerators), Keras and keras-hub once, so
    their start-up output can be held back (`monitoring.native_stderr_captured`)."""
    hide_accelerators_from_tensorflow()
    import keras  # noqa: F401
    import keras_hub  # noqa: F401


def start_frameworks(devices: str, num_devices: int | None) -> None:
    """Set JAX's environment for `devices` (`configure_environment`; a JAX that already
    started in this process, in a notebook's earlier cell say, keeps the platform and device
    count it started with), then load the frameworks with their start-up output held back.
    ConfigError when something imported Keras with another backend first."""
    configure_environment(devices, num_devices)
    with monitoring.native_stderr_captured():
        load_frameworks()
    import keras

    if keras.backend.backend() != "jax":
        raise ConfigError(
            f"Keras runs on its {keras.backend.backend()} backend in this process, but jaxpref "
            "needs JAX: set KERAS_BACKEND=jax before anything imports Keras"
        )


def hide_accelerators_from_tensorflow() -> None:
    """TensorFlow only runs tf.data here; keep it off the GPUs that JAX owns."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # TensorFlow already initialised its devices; nothing left to hide.


def select_devices(devices: str, num_devices: int | None) -> list:
    """The global device list for data parallelism (all processes' devices)."""
    import jax

    platform = None if devices == "auto" else devices
    try:
        found = jax.devices(platform)
    except RuntimeError as err:
        raise DeviceError(
            f"no {devices} devices found ({err}). Install the matching jax build "
            "(e.g. pip install 'jax[cuda12]') or pass --devices cpu."
        ) from None
    if num_devices is None:
        return list(found)
    if jax.process_count() > 1:
        if devices == "cpu":
            return list(found)  # --num-devices set each process's simulated CPU devices
        raise DeviceError("--num-devices cannot be combined with several processes")
    if num_devices < 1 or num_devices > len(found):
        raise DeviceError(
            f"--num-devices {num_devices} requested but {len(found)} {found[0].platform} "
            "device(s) are available"
        )
    return list(found[:num_devices])


def fitting_model_axis(model_parallel: int, devices: str, num_devices: int | None) -> int:
    """The model axis a run trained with `model_parallel` predicts with on the devices
    `select_devices` picks: the greatest common divisor of both, so a run sharded over 4
    devices loads on 2 (a model axis of 2) or on 1 (`restore_checkpoint` places its weights
    on any layout). Said in one log line when it is not `model_parallel`."""
    count = len(select_devices(devices, num_devices))
    fitting = math.gcd(model_parallel, count)
    if fitting != model_parallel:
        log.info(
            "the run's --model-parallel %d does not divide the %d devices: a model axis of %d",
            model_parallel, count, fitting,
        )  # fmt: skip
    return fitting


def check_batch_size(batch_size: int, num_devices: int, num_processes: int = 1) -> None:
    """The global batch must split evenly over devices (and therefore over processes)."""
    if batch_size < 1 or batch_size % num_devices:
        raise DeviceError(
            f"--batch-size {batch_size} does not split evenly over {num_devices} devices; "
            f"use a multiple of {num_devices}"
        )
    if batch_size % num_processes:
        raise DeviceError(f"--batch-size {batch_size} is not a multiple of {num_processes} hosts")


def platform_of(devices: list) -> str:
    return devices[0].platform


def setup(
    devices: str,
    num_devices: int | None,
    batch_size: int | None,
    model_parallel: int = 1,
    preset: str | None = None,
) -> list:
    """Everything before the first Keras object: TensorFlow kept off the accelerators, the
    devices selected, the global batch (when given) checked against them, and the distribution
    set: data parallel, or with `model_parallel > 1` a (data x model) mesh whose layout is made
    for the decoder backbone of `preset`. Returns the selected devices."""
    import jax
    import keras

    hide_accelerators_from_tensorflow()
    selected = select_devices(devices, num_devices)
    if model_parallel > 1:
        from jaxpref.parallel import sharding

        decoder = presets.probe(preset)
        decoder.check_decoder()  # one line naming the families that work, before any layout
        distribution = sharding.model_parallel(selected, model_parallel, decoder.backbone_config)
        groups = len(selected) // model_parallel
    else:
        # Each process feeds only its own share of every global batch (the pipeline shards
        # rows), so Keras' own dataset auto-sharding is off.
        distribution = keras.distribution.DataParallel(devices=selected, auto_shard_dataset=False)
        groups = len(selected)
    if batch_size is not None:
        check_batch_size(batch_size, groups, jax.process_count())
    keras.distribution.set_distribution(distribution)
    return selected


def seed_keras(seed: int) -> None:
    """Seed Keras (initializers, dropout: the same initial values on every process), Python and
    NumPy as `keras.utils.set_random_seed` does, but not TensorFlow: its `set_seed` clears the
    eager kernel cache and with it the tokenizer resources of every model built earlier in the
    process (tensorflow/text#570), which could then no longer tokenize. jaxpref draws no random
    numbers from TensorFlow: tf.data only tokenizes and batches, in a fixed order."""
    import random

    import numpy as np
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)


def place_on_mesh(variables) -> int:
    """Give every variable the layout of the current distribution; returns how many moved.

    Keras skips re-placing a value whose layout is merely equivalent, so on one device loaded
    weights and reset metrics stay single-device arrays while the train step returns its state
    on the mesh: the state's type changes after a step, and XLA compiled the first batch shape
    twice and again at every epoch start (metrics are reset there).
    """
    import jax
    import keras

    distribution = keras.distribution.distribution()
    if distribution is None:
        return 0
    moved = 0
    for variable in variables:
        if not isinstance(variable.value.sharding, jax.sharding.NamedSharding):
            layout = distribution.get_variable_layout(variable).backend_layout
            variable.assign(jax.device_put(variable.value, layout))
            moved += 1
    return moved


def restore_checkpoint(model, directory: str | os.PathLike) -> Path:
    """Load the newest checkpoint in the Orbax `directory` (`training.checkpoints` writes them)
    into `model`, each array straight into the layout its variable has now: that of the
    distribution set (`setup`), whatever devices and mesh wrote it. Returns the step directory.

    Keras' `load_weights` asks Orbax for the current layouts only while a distribution is set,
    and only for the variables whose paths match; otherwise Orbax rebuilds the saved layouts,
    which fails on fewer devices than were saved from ("the available devices are different
    from the devices used to save the checkpoint"): a second `jaxpref.load` in a notebook with
    fewer devices than the run trained on failed so, on the seed states below. Here every part
    of the checkpoint must match the model's (compiled, its optimizer built, for a training
    state): a variable on one side only, or a shape that differs, is a ValueError naming it.
    The exception are dropout seed states, whose generators Keras names by how many the process
    made before ("seed_generator_5"): one on the checkpoint's side only is not loaded, one on
    the model's side only keeps its value.

    Example:
        setup("cpu", 1, None)  # a run trained on 8 devices, loaded on 1
        restore_checkpoint(model, "runs/v1/checkpoints/best")
    """
    import orbax.checkpoint as oc

    with oc.v1.training.Checkpointer(directory=str(directory)) as checkpointer:
        latest = checkpointer.latest
    if latest is None:
        raise FileNotFoundError(f"{directory} holds no complete checkpoint")
    path = Path(directory) / str(latest.step)
    saved = oc.v1.metadata(path, checkpointable_name=CHECKPOINTABLE).metadata
    target = _layout_target(saved, model.get_state_tree(), "")
    context = oc.v1.Context()
    context.pytree.loading.partial_load = True  # the seed states left out of `target`
    with context:
        loaded = oc.v1.load_checkpointables(path, {CHECKPOINTABLE: target})[CHECKPOINTABLE]
    model.set_state_tree(loaded)
    return path


SEED_STATE = "seed_generator_state"  # the one variable of a keras.random.SeedGenerator


def _is_seed_generator(node) -> bool:
    return isinstance(node, dict) and set(node) == {SEED_STATE}


def _layout_target(saved, current, path: str):
    """The abstract tree Orbax restores `saved` (checkpoint metadata) as: per array, its saved
    shape and dtype in the sharding of the `current` variable at the same path."""
    import jax

    if isinstance(saved, dict):
        if not isinstance(current, dict):
            raise ValueError(f"{path or 'the checkpoint'} is not a part of this model")
        extra = [k for k, v in current.items() if k not in saved and not _is_seed_generator(v)]
        if path and extra:  # the top level: parts a checkpoint need not hold (optimizer...)
            raise ValueError(f"{path}/{extra[0]}: in the model, but not in the checkpoint")
        target = {}
        for key, value in saved.items():
            if key in current or not _is_seed_generator(value):
                part = _layout_target(value, current.get(key), f"{path}/{key}" if path else key)
                if part != {} or value == {}:  # {} when all it held were seed states
                    target[key] = part
        return target
    if current is None:
        raise ValueError(f"{path}: in the checkpoint, but not in the model")
    if tuple(saved.shape) != tuple(current.shape):
        raise ValueError(
            f"{path}: shape {tuple(saved.shape)} in the checkpoint, {tuple(current.shape)} in "
            "the model"
        )
    return jax.ShapeDtypeStruct(saved.shape, saved.dtype, sharding=current.sharding)


def sync_processes(name: str) -> None:
    """Wait until every process reaches this point (no-op with one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
