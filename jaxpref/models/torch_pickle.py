"""Read PyTorch zip checkpoints (`torch.save`, torch >= 1.6) as numpy arrays, without torch.

A `.bin` checkpoint is a zip archive: `<name>/data.pkl` pickles the state dict and each tensor
storage lies raw in `<name>/data/<key>`. Unpickling runs whatever callables the pickle names, so
`load_state_dict` uses an unpickler that admits only the globals that rebuild tensors and
refuses every other one (`os.system`, `builtins.eval`, ...) before anything is called.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from dataclasses import dataclass

import ml_dtypes
import numpy as np

STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class TorchPickleError(ValueError):
    """A checkpoint is not a PyTorch zip checkpoint of plain tensors, or names a refused global."""


@dataclass(frozen=True)
class StorageType:
    """Stands for a `torch.<Name>Storage` class inside the pickle."""

    name: str
    dtype: np.dtype


def rebuild_tensor(storage, storage_offset, size, stride, *_grad_hooks_metadata) -> np.ndarray:
    """`torch._utils._rebuild_tensor_v2`: a strided view of `storage`, copied, bounds-checked."""
    dims = (storage_offset, *size, *stride)
    if not isinstance(storage, np.ndarray) or not all(isinstance(d, int) and d >= 0 for d in dims):
        raise TorchPickleError(
            f"malformed tensor record (offset {storage_offset}, size {size}, stride {stride})"
        )
    if len(size) != len(stride):
        raise TorchPickleError(f"tensor size {size} and stride {stride} differ in rank")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:
        raise TorchPickleError(
            f"tensor (offset {storage_offset}, size {size}, stride {stride}) reads past its "
            f"storage of {storage.size} elements"
        )
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:],
        shape=size,
        strides=[s * storage.itemsize for s in stride],
        writeable=False,
    )
    return np.array(view)


def rebuild_parameter(data, _requires_grad, _backward_hooks) -> np.ndarray:
    """`torch._utils._rebuild_parameter`: a Parameter is its data."""
    return data


ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles `data.pkl` of one archive; storages are read from the archive as numpy arrays."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, source: str):
        super().__init__(archive.open(f"{prefix}data.pkl"))
        self.archive = archive
        self.prefix = prefix
        self.source = source
        self.storages: dict[str, np.ndarray] = {}
        byteorder_file = f"{prefix}byteorder"
        names = set(archive.namelist())
        big = byteorder_file in names and archive.read(byteorder_file).strip() == b"big"
        self.byteorder = ">" if big else "<"

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise TorchPickleError(
                f"{self.source}: refused to load global {module}.{name}; a weights file may "
                "only rebuild tensors (it could run arbitrary code)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise TorchPickleError(f"{self.source}: unsupported persistent record {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, StorageType) or not isinstance(numel, int):
            raise TorchPickleError(f"{self.source}: malformed storage record {pid!r:.80}")
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.prefix}data/{key}")
            except KeyError:
                raise TorchPickleError(f"{self.source}: storage data/{key} is missing") from None
            dtype = storage_type.dtype.newbyteorder(self.byteorder)
            if len(raw) < numel * dtype.itemsize:
                raise TorchPickleError(f"{self.source}: storage data/{key} is truncated")
            self.storages[key] = np.frombuffer(raw, dtype, count=numel).astype(
                storage_type.dtype, copy=False
            )
        return self.storages[key]


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The name -> array mapping pickled in a PyTorch zip checkpoint, loaded without torch."""
    source = str(path)
    if not zipfile.is_zipfile(path):
        raise TorchPickleError(
            f"{source}: not a PyTorch zip checkpoint (the legacy pre-1.6 torch.save format is "
            "not read); re-save it with a current torch or as model.safetensors"
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise TorchPickleError(f"{source}: expected one <name>/data.pkl, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        try:
            state = RestrictedUnpickler(archive, prefix, source).load()
        except TorchPickleError:
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError) as err:
            raise TorchPickleError(f"{source}: unreadable pickle ({err})") from err
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()
    ):
        raise TorchPickleError(f"{source}: expected a state dict of named tensors")
    return dict(state)
