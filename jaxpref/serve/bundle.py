"""The inference bundle: a trained model as a plain keras-hub preset plus a few small files.

```
BUNDLE/
  bundle.json       format name and version, what is inside, the run it came from
  config.json       the run's TrainConfig with lora_rank 0: the adapters are merged
  backbone/         keras-hub preset: backbone config and weights with the LoRA deltas merged
                    into the kernels (kernel + A @ B * alpha / rank), tokenizer, preprocessor;
                    `keras_hub.models.Backbone.from_preset(BUNDLE/backbone)` loads it
  head.npz          every other variable of the model (head, side-feature statistics), by path
  calibration.json  the temperature fitted at training (when the run has one)
```

No optimizer state and no Orbax checkpoint: `prediction.load_run` reads a bundle like a run
directory, offline, on any number of devices.
A bundle from elsewhere is checked before use (`safety`): manifest entries and files stay
inside it, the backbone preset holds no code and no class outside keras / keras_hub / jaxpref,
and head.npz loads without pickle.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

from jaxpref import safety
from jaxpref.config import TrainConfig
from jaxpref.parallel import distribution
from jaxpref.rundir import RunDirError

FORMAT = "jaxpref-bundle"
FORMAT_VERSION = 1


class BundleError(RunDirError):
    """A bundle is missing, malformed, or cannot be written where asked."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    """Paths inside one bundle directory."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root).expanduser().resolve())

    manifest = property(lambda self: self.root / "bundle.json")
    config = property(lambda self: self.root / "config.json")
    backbone = property(lambda self: self.root / "backbone")
    head = property(lambda self: self.root / "head.npz")
    calibration = property(lambda self: self.root / "calibration.json")


def is_bundle(path: str | os.PathLike) -> bool:
    return Bundle(path).manifest.is_file()


def head_variables(model) -> dict:
    """Every variable of `model` outside its backbone, by path (unique: the layers are named)."""
    backbone = {id(v) for v in model.backbone.weights}
    return {v.path: v for v in model.weights if id(v) not in backbone}


def write_contents(model, packer, cfg: TrainConfig, root: Path, calibration: Path | None) -> None:
    """Fill the empty directory `root` with the bundle of a loaded model (all but bundle.json)."""
    paths = Bundle(root)
    # Keras layers save their kernels with the LoRA deltas merged; the backbone's config
    # never mentions LoRA, so the preset loads as a plain backbone holding the merged weights.
    model.backbone.save_to_preset(str(paths.backbone))
    packer.save(str(paths.backbone))
    head = {path: np.asarray(v.numpy(), "float32") for path, v in head_variables(model).items()}
    np.savez(paths.head, **head)
    shareable_config(cfg).to_json(paths.config)
    if calibration is not None:
        shutil.copyfile(calibration, paths.calibration)


PATH_SETTINGS = ("run_dir", "train_file", "valid_file", "extra_train", "soft_labels", "preset")


def shareable_config(cfg: TrainConfig) -> TrainConfig:
    """The config a bundle holds: adapters merged (LoRA rank 0), and of each path setting only
    its last part. Bundles travel (Kaggle datasets, model hubs): they keep no paths of the
    machine that trained them, and loading one reads none of them."""
    flat = cfg.flat()
    names = {key: Path(flat[key]).name for key in PATH_SETTINGS if os.sep in flat[key]}
    return cfg.replace(lora_rank=0, **names)


def check_target(out: str | os.PathLike) -> Path:
    """`out` as an absolute path; BundleError if it holds anything but an earlier bundle."""
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not is_bundle(out):
        raise BundleError(f"{out} exists and is not a jaxpref bundle; choose another directory")
    return out


def write_bundle(
    model,
    packer,
    cfg: TrainConfig,
    out: str | os.PathLike,
    calibration: Path | None = None,
    source: str = "",
) -> Path:
    """Write the bundle of a loaded model to `out` atomically (temp dir + rename).

    An earlier bundle at `out` is replaced; any other non-empty directory there is refused.
    """
    out = check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()  # not mkdtemp: the bundle gets the umask's permissions, not 0700
    try:
        write_contents(model, packer, cfg, tmp, calibration)
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "source_run": source,
            "merged_lora_rank": cfg.model.lora_rank,
            "trained_precision": cfg.model.precision,
            "contents": sorted(p.name for p in tmp.iterdir()),
        }
        Bundle(tmp).manifest.write_text(json.dumps(manifest, indent=2) + "\n")
        replace_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def replace_directory(new: Path, target: Path) -> None:
    """Rename `new` to `target`; an existing `target` is moved aside first, then deleted."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(paths: Bundle) -> dict:
    """bundle.json, checked to be a bundle this version of jaxpref reads."""
    try:
        manifest = json.loads(paths.manifest.read_text())
    except (OSError, ValueError) as err:
        raise BundleError(f"{paths.manifest}: cannot read the bundle manifest ({err})") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{paths.manifest}: format is {manifest.get('format')!r}, not {FORMAT}")
    if not isinstance(manifest.get("version"), int) or manifest["version"] > FORMAT_VERSION:
        raise BundleError(
            f"{paths.manifest}: bundle version {manifest.get('version')!r}; this jaxpref reads "
            f"versions up to {FORMAT_VERSION}, upgrade jaxpref"
        )
    contents = manifest.get("contents", [])
    if not isinstance(contents, list) or not all(isinstance(n, str) for n in contents):
        raise BundleError(f"{paths.manifest}: contents must be a list of file names")
    for i, name in enumerate(contents):
        safety.check_relative(name, paths.manifest, f"contents[{i}]")
    return manifest


def load_head(model, path: Path) -> None:
    """Assign the saved head variables; BundleError naming any that do not match the model."""
    variables = head_variables(model)
    with np.load(path, allow_pickle=False) as saved:
        missing, extra = sorted(set(variables) - set(saved)), sorted(set(saved) - set(variables))
        if missing or extra:
            raise BundleError(f"{path}: variables do not match the model ({missing=}, {extra=})")
        for name, variable in variables.items():
            if saved[name].shape != tuple(variable.shape):
                raise BundleError(f"{path}: {name} has shape {saved[name].shape}")
            variable.assign(saved[name])


def load_bundle(path: str | os.PathLike, precision: str | None = None):
    """(model, its packer, TrainConfig) from a bundle, in `precision` (None: as trained).

    The distribution must already be set (`distribution.setup`).
    """
    paths = Bundle(path)
    read_manifest(paths)
    for required in (paths.config, paths.backbone, paths.head):
        if not required.exists():
            raise BundleError(f"{required} is missing; the bundle is incomplete")
        safety.check_inside(required, paths.root, "bundle file")
    cfg = TrainConfig.from_json(paths.config)
    if precision is not None:
        cfg = cfg.replace(precision=precision)
    distribution.seed_keras(cfg.run.seed)
    from jaxpref.models import (
        preference as model_lib,  # keras: checking a bundle's paths needs none
    )

    preset = str(paths.backbone)
    model = model_lib.build_model(cfg.model, cfg.data.sequence_length, preset=preset)
    load_head(model, paths.head)
    return model, model.build_packer(preset, cfg.data.sequence_length), cfg
