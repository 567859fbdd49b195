"""Export a trained run as a self-contained inference bundle (`jaxpref.serve.bundle`), or a
reward model as a Hugging Face transformers directory (`jaxpref.models.hf_export`).

The bundle holds what inference needs and nothing else (no optimizer state, no resumable
checkpoints, no logs), with the LoRA adapters merged into the backbone, so it is the thing to
upload, e.g. as a Kaggle dataset for an offline submission (docs/kaggle.md). `average_runs`
writes one bundle whose weights are the mean of several runs' (e.g. a cross-validation's folds).
`export_transformers` writes what `AutoModelForSequenceClassification.from_pretrained` loads.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxpref.config import ConfigError
from jaxpref.models import hf_export, lora
from jaxpref.parallel import distribution
from jaxpref.rundir import RunDir, expand_runs, new_directory
from jaxpref.serve import bundle, predict

log = logging.getLogger("jaxpref")


@dataclasses.dataclass(frozen=True)
class Export:
    """Where the bundle went, its size beside the run directories' (bytes), and how many runs
    it holds the mean of."""

    path: Path
    bundle_bytes: int
    run_bytes: int
    runs: int = 1


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
    model, packer, cfg = predict.load_run(run_dir)
    paths = RunDir(run_dir)
    calibration = paths.calibration if paths.calibration.exists() else None
    path = bundle.write_bundle(model, packer, cfg, out, calibration, source=paths.root.name)
    return Export(path, directory_size(path), directory_size(paths.root))


def export_runs(
    run_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    devices: str = "auto",
    num_devices: int | None = None,
) -> Export:
    """The bundle of one run (`export_run`), or of the mean of several (`average_runs`; a
    cross-validation's directory stands for its folds, as `rundir.expand_runs` reads it)."""
    runs = expand_runs(run_dirs)
    if len(runs) == 1:
        return export_run(runs[0], out, devices, num_devices)
    return average_runs(runs, out, devices, num_devices)


def averaged_variables(model) -> list:
    """The variables a weight average covers: every float variable but the LoRA factors
    (merged into their kernels first); integer state such as a dropout seed is kept as is."""
    import keras

    return [
        v
        for v in model.weights
        if keras.backend.is_float_dtype(v.dtype)
        and not v.path.rsplit("/", 1)[-1].startswith("lora_kernel")
    ]


def average_runs(
    run_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    devices: str = "auto",
    num_devices: int | None = None,
) -> Export:
    """Write one bundle whose weights are the mean of the runs' best weights (runs, bundles or
    a cross-validation's directory, as `rundir.expand_runs` reads them).

    The 1st place of the LMSYS competition averaged its folds' LoRA weights: one model's
    inference cost instead of one per fold. Each LoRA layer's factors are merged into its
    kernel first (`lora.merge_into_kernel`), so every kernel is the mean of the fine-tuned
    kernels. The runs must have the same variables; fine-tunes of one preset from one seed (a
    cross-validation's folds) are what averages well. The bundle holds no calibration: each
    run's temperature was fitted to its own weights, not to their mean.
    """
    import keras

    runs = expand_runs(run_dirs)
    if len(runs) < 2:
        raise ConfigError(f"averaging needs two runs or more, got {len(runs)}: {runs[0]}")
    bundle.check_target(out)
    total, shapes = None, None
    for number, run in enumerate(runs, start=1):
        log.info("reading run %d of %d: %s", number, len(runs), run)
        keras.backend.clear_session()  # one model in memory at a time, with the same paths
        distribution.setup(devices, num_devices, None)
        model, packer, cfg = predict.load_run(run)
        for layer in lora.lora_layers(model.backbone):
            lora.merge_into_kernel(layer)
        variables = averaged_variables(model)
        found = [(v.path, tuple(v.shape)) for v in variables]
        if total is None:
            total, shapes = [np.zeros(shape) for _, shape in found], found
        elif found != shapes:
            differ = [f"{a} vs {b}" for a, b in zip(shapes, found, strict=False) if a != b]
            raise ConfigError(
                f"{run}: its variables differ from {runs[0]}'s "
                f"({(differ or [f'{len(shapes)} vs {len(found)} variables'])[0]}); only runs "
                "of one architecture and model size can be averaged"
            )
        for sum_, variable in zip(total, variables, strict=True):
            sum_ += np.asarray(variable.numpy(), "float64")
    for sum_, variable in zip(total, variables, strict=True):
        variable.assign((sum_ / len(runs)).astype(variable.dtype))
    source = f"mean of {len(runs)} runs: " + ", ".join(run.name for run in runs)
    path = bundle.write_bundle(model, packer, cfg, out, None, source=source)
    run_bytes = sum(directory_size(run) for run in runs)
    return Export(path, directory_size(path), run_bytes, len(runs))


REWARD_LAYER = "reward"  # the name of a reward model's Dense(1) on the pooled state
EXPORTS_TO_TRANSFORMERS = "only reward models (--objective reward, no --side-features) export"


def reward_layer(model, run_dir: str | os.PathLike):
    """The model's layer named `REWARD_LAYER`; ConfigError in one line for models without one
    (the 3-class head) or with side features, which no transformers class computes."""
    found = [
        layer for layer in model._flatten_layers(include_self=False) if layer.name == REWARD_LAYER
    ]
    if not found:
        raise ConfigError(
            f"{run_dir}: no layer named {REWARD_LAYER!r} (a 3-class preference head); "
            f"{EXPORTS_TO_TRANSFORMERS} to transformers"
        )
    if getattr(model, "side_features", 0):
        raise ConfigError(
            f"{run_dir}: trained with --side-features, which transformers' sequence "
            f"classifiers do not compute; {EXPORTS_TO_TRANSFORMERS} to transformers"
        )
    return found[0]


def export_transformers(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    devices: str = "auto",
    num_devices: int | None = None,
) -> Export:
    """Write the transformers directory of a reward-model run (or its bundle) to `out`: the
    backbone with the LoRA adapters merged and the reward layer as the classifier head, in the
    precision it was trained in, with the tokenizer files (`hf_export.export_reward_model`)."""
    out = new_directory(out, "--out")
    distribution.setup(devices, num_devices, None)
    model, _, _ = predict.load_run(run_dir)
    reward = reward_layer(model, run_dir)
    if bundle.is_bundle(run_dir):
        preset, root = bundle.Bundle(run_dir).backbone, bundle.Bundle(run_dir).root
    else:
        preset, root = RunDir(run_dir).preset, RunDir(run_dir).root
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        hf_export.export_reward_model(model.backbone, reward, preset, tmp)
        bundle.replace_directory(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Export(out, directory_size(out), directory_size(root))
