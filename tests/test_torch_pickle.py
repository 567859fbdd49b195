import collections
import io
import os
import pickle
import sys
import types
import zipfile

import ml_dtypes
import numpy as np
import pytest

from jaxpref.models import torch_pickle

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "hf_deberta_v3_tiny")


def test_reads_shared_storages_offsets_strides_and_dtypes_as_torch_wrote_them():
    state = torch_pickle.load_state_dict(os.path.join(FIXTURE, "views.bin"))
    with np.load(os.path.join(FIXTURE, "reference.npz")) as reference:
        expected = {k.removeprefix("views/"): reference[k] for k in reference if "views/" in k}
    assert sorted(state) == sorted(expected)
    for name, want in expected.items():
        np.testing.assert_array_equal(state[name].astype(want.dtype), want, err_msg=name)
    assert state["bfloat16"].dtype == ml_dtypes.bfloat16
    assert state["half_row"].dtype == np.float16
    assert state["transposed"].flags.writeable  # a copy, not a view of the archive bytes


def write_zip(path, pickled: bytes, storages=None, byteorder: bytes = b"little"):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", byteorder)
        for key, raw in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", raw)
    return path


class Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_malicious_pickle_runs_under_pickle_and_is_refused_by_name_here(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weight": Evil(f"touch {marker}")}, protocol=2)
    pickle.loads(payload)  # the payload is real: plain pickle runs the command
    assert marker.exists()
    marker.unlink()
    path = write_zip(tmp_path / "pytorch_model.bin", payload)
    with pytest.raises(torch_pickle.TorchPickleError, match=r"refused to load global \w+\.system"):
        torch_pickle.load_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "module, name",
    [
        ("os", "system"),
        ("builtins", "eval"),
        ("subprocess", "check_call"),
        ("torch", "load"),
        ("torch._utils", "_rebuild_device_tensor_from_numpy"),
    ],
)
def test_any_global_outside_the_tensor_rebuilders_is_refused(tmp_path, module, name):
    marker = tmp_path / "pwned"
    argument = f"__import__('os').system('touch {marker}')".encode()
    payload = (
        b"\x80\x02c" + f"{module}\n{name}\n".encode()
        + b"X" + len(argument).to_bytes(4, "little") + argument + b"\x85R."
    )  # fmt: skip
    path = write_zip(tmp_path / "pytorch_model.bin", payload)
    with pytest.raises(torch_pickle.TorchPickleError) as err:
        torch_pickle.load_state_dict(path)
    assert f"refused to load global {module}.{name}" in str(err.value)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


@pytest.fixture
def fake_torch(monkeypatch):
    """Importable stand-ins for the torch names a checkpoint pickles, so tests can write one."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def pickle_tensor(fake_torch, key: str, numel: int, offset: int, size, stride) -> bytes:
    """The pickle torch.save writes for one float32 tensor over storage `key`."""

    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
            return rebuild, (Storage(), offset, size, stride, False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", fake_torch.FloatStorage, key, "cpu", numel)
            return None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"w": Tensor()})
    return buffer.getvalue()


def test_big_endian_storages_are_byte_swapped(tmp_path, fake_torch):
    values = np.arange(6, dtype=">f4")
    payload = pickle_tensor(fake_torch, "0", 6, 0, (2, 3), (3, 1))
    path = write_zip(tmp_path / "m.bin", payload, {"0": values.tobytes()}, byteorder=b"big")
    np.testing.assert_array_equal(torch_pickle.load_state_dict(path)["w"], values.reshape(2, 3))


def test_a_tensor_reading_past_its_storage_is_refused(tmp_path, fake_torch):
    payload = pickle_tensor(fake_torch, "0", 6, 2, (2, 3), (3, 1))  # needs elements 2..7 of 6
    path = write_zip(tmp_path / "m.bin", payload, {"0": np.zeros(6, "<f4").tobytes()})
    with pytest.raises(torch_pickle.TorchPickleError, match="reads past its storage of 6"):
        torch_pickle.load_state_dict(path)


def test_legacy_non_zip_checkpoints_are_refused_clearly(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(pickle.dumps({"w": [1.0]}))
    with pytest.raises(torch_pickle.TorchPickleError, match="not a PyTorch zip checkpoint"):
        torch_pickle.load_state_dict(path)
