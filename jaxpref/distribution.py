"""Device selection and Keras data parallelism over every local (and global) accelerator.

Order matters: `configure_environment` runs before JAX or Keras is imported, and
`set_data_parallel` runs before any Keras object is built, or variables stay on one device.
"""

from __future__ import annotations

import os

PLATFORMS = ("auto", "cpu", "gpu", "tpu")


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
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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
        raise DeviceError("--num-devices cannot be combined with several processes")
    if num_devices < 1 or num_devices > len(found):
        raise DeviceError(
            f"--num-devices {num_devices} requested but {len(found)} {found[0].platform} "
            "device(s) are available"
        )
    return list(found[:num_devices])


def check_batch_size(batch_size: int, num_devices: int, num_processes: int = 1) -> None:
    """The global batch must split evenly over devices (and therefore over processes)."""
    if batch_size < 1 or batch_size % num_devices:
        raise DeviceError(
            f"--batch-size {batch_size} does not split evenly over {num_devices} devices; "
            f"use a multiple of {num_devices}"
        )
    if batch_size % num_processes:
        raise DeviceError(f"--batch-size {batch_size} is not a multiple of {num_processes} hosts")


def set_data_parallel(devices: list) -> None:
    """Replicate weights on every device and split each global batch across them.

    Each process feeds only its own share of the global batch (the input pipeline shards rows
    before tokenizing), so Keras' own dataset auto-sharding is turned off.
    """
    import keras

    distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    keras.distribution.set_distribution(distribution)


def platform_of(devices: list) -> str:
    return devices[0].platform
