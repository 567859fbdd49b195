"""Load a keras-hub backbone, tokenizer or text preprocessor from any `--preset`.

`presets.probe` says what the preset is and where keras-hub loads it from (converting a
Hugging Face DeBERTa-v3 directory first). Every preset's configs pass `safety` before keras-hub
deserializes them: no code, no class outside keras / keras_hub / jaxpref, no file name leaving
the preset directory.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from jaxpref import safety
from jaxpref.models import hf_deberta, presets


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
    raise presets.PresetError(
        f"--preset {preset}: not a keras-hub preset name{hint} (keras_hub.models.Backbone."
        "presets lists them; a local directory or a hf:// or kaggle:// handle works too)"
    )


def _load(what: str, preset: str, loader):
    """`loader(location)`, where keras-hub finds `preset`, once its name and configs pass;
    what keras-hub raises becomes a one-line PresetError."""
    location = presets.probe(preset).location
    try:
        check_preset_name(location)
        check_untrusted(location)
        return loader(location)
    except (presets.PresetError, safety.UnsafeFileError):
        raise
    except Exception as err:
        if Path(location).is_dir():
            raise presets.PresetError(
                f"could not load the {what} from {location}: {hf_deberta.first_line(err)}"
            ) from err
        raise presets.PresetError(
            f"could not load the {what} for preset {location!r} "
            f"({type(err).__name__}: {hf_deberta.first_line(err)}). "
            "Downloading needs access to Kaggle/Hugging Face. Without network, save the preset "
            "to a directory on a machine that has it (keras_hub.models.Backbone.from_preset("
            f"{location!r}).save_to_preset(DIR), same for the preprocessor) and pass --preset DIR."
        ) from err


def load_backbone(preset: str, dtype: str | None = None, load_weights: bool = True):
    """The backbone for `preset`, pretrained unless `load_weights=False` (architecture only)."""
    import keras_hub

    return _load(
        "backbone",
        preset,
        lambda location: keras_hub.models.Backbone.from_preset(
            location, dtype=dtype, load_weights=load_weights
        ),
    )


def load_preprocessor(preset: str, sequence_length: int):
    """The preset's text-pair classifier preprocessor (tokenizer + segment packer)."""
    import keras_hub

    return _load(
        "preprocessor",
        preset,
        lambda location: keras_hub.models.TextClassifierPreprocessor.from_preset(
            location, sequence_length=sequence_length
        ),
    )


def load_tokenizer(preset: str):
    """The preset's own tokenizer (what a cross-encoder packs itself)."""
    import keras_hub

    return _load("tokenizer", preset, keras_hub.models.Tokenizer.from_preset)


def check_sequence_length(backbone, sequence_length: int) -> None:
    """Absolute-position encoders (BERT family) cannot read past their position table."""
    limit = backbone.get_config().get("max_sequence_length")
    relative = type(backbone).__name__.startswith("DebertaV3")
    if limit and not relative and sequence_length > limit:
        raise presets.PresetError(
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
