"""Export a trained run as a self-contained inference bundle (`jaxpref.bundle`).

The bundle holds what inference needs and nothing else (no optimizer state, no resumable
checkpoints, no logs), with the LoRA adapters merged into the backbone, so it is the thing to
upload, e.g. as a Kaggle dataset for an offline submission (docs/kaggle.md).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from jaxpref import bundle, distribution, prediction
from jaxpref.rundir import RunDir


@dataclasses.dataclass(frozen=True)
class Export:
    """Where the bundle went, and its size beside the run directory's (bytes)."""

    path: Path
    bundle_bytes: int
    run_bytes: int


def directory_size(path: str | os.PathLike) -> int:
    """Bytes of every file under `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def export_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    devices: str = "auto",
    num_devices: int | None = None,
) -> Export:
    """Write the bundle of a run's best weights to `out`, in the precision it was trained in."""
    if bundle.is_bundle(run_dir):
        raise bundle.BundleError(f"{run_dir} is already a bundle; pass a run directory")
    bundle.check_target(out)
    distribution.setup(devices, num_devices, None)
    model, encoder, cfg = prediction.load_run(run_dir)
    paths = RunDir(run_dir)
    calibration = paths.calibration if paths.calibration.exists() else None
    path = bundle.write_bundle(model, encoder, cfg, out, calibration, source=str(paths.root))
    return Export(path, directory_size(path), directory_size(paths.root))
