import os

import pytest

from jaxpref.parallel import distribution


def test_four_simulated_cpu_devices_are_visible():
    assert len(distribution.select_devices("cpu", None)) == 4
    assert len(distribution.select_devices("cpu", 2)) == 2


def test_too_many_devices_is_a_clear_error():
    with pytest.raises(distribution.DeviceError, match="--num-devices 9"):
        distribution.select_devices("cpu", 9)


def test_missing_platform_is_a_clear_error():
    """The tests' JAX sees the CPU only (conftest: JAX_PLATFORMS=cpu), whatever the machine."""
    with pytest.raises(distribution.DeviceError, match="no gpu devices"):
        distribution.select_devices("gpu", None)


def test_batch_must_split_evenly():
    distribution.check_batch_size(8, 4)
    with pytest.raises(distribution.DeviceError, match="multiple of 4"):
        distribution.check_batch_size(6, 4)


def test_environment_simulates_cpu_devices(monkeypatch):
    """What configure_environment itself sets: conftest's own values are removed first."""
    for name in ("KERAS_BACKEND", "JAX_PLATFORMS"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("XLA_FLAGS", "--xla_foo=1 --xla_force_host_platform_device_count=2")
    distribution.configure_environment("cpu", 8)
    assert os.environ["KERAS_BACKEND"] == "jax"
    assert os.environ["JAX_PLATFORMS"] == "cpu"
    assert os.environ["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=8"


def test_environment_leaves_the_platform_to_jax_on_auto(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.setenv("XLA_FLAGS", "--xla_foo=1")
    distribution.configure_environment("auto", 8)
    assert "JAX_PLATFORMS" not in os.environ
    assert os.environ["XLA_FLAGS"] == "--xla_foo=1"  # devices are simulated on cpu only
    with pytest.raises(distribution.DeviceError, match="--devices must be one of"):
        distribution.configure_environment("cuda", None)
