"""Checks on files someone else made (presets, run directories, bundles) before anything loads them.

A Keras config names classes by `module`, `class_name` and `registered_name`; deserializing it
can import modules and, for a few classes (`Lambda`, wrapped TF/JAX/torch models), run code the
file carries. A keras-hub preset also names files (`config_file`, sharded weight maps) that
keras-hub joins to the preset directory without checking where they lead. Here, before keras
sees a config: every class must come from keras, keras_hub or jaxpref, no class may carry
code, and every file reference must stay inside its directory. Each refusal is one
`UnsafeFileError` naming the file and the entry. Nothing is imported to decide.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path, PurePosixPath

from jaxpref.rundir import RunDirError

ALLOWED_PACKAGES = ("keras", "keras_hub", "jaxpref")
# Classes whose config carries code or a foreign model: a Python function, a TF SavedModel,
# a pickled torch module, a JAX/Flax function.
CODE_CLASSES = frozenset(
    {"Lambda", "__lambda__", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer"}
)
# Config keys whose string value keras / keras-hub read as a file path.
FILE_KEYS = frozenset({"config_file", "proto", "vocabulary", "merges", "filepath"})
# Serialized Keras objects a keras-hub preset may hold, and its files listing other files.
PRESET_CONFIGS = (
    "config.json",
    "tokenizer.json",
    "preprocessor.json",
    "task.json",
    "audio_converter.json",
    "image_converter.json",
    "video_converter.json",
)
WEIGHT_MAPS = ("model.weights.json", "model.safetensors.index.json")
INLINE_DATA = 2048  # keras-hub reads longer base64 strings as inline data, not as paths


class UnsafeFileError(RunDirError):
    """A preset, run directory or bundle holds code, a foreign class, or a path leaving it."""


def refuse(source: str | os.PathLike, where: str, problem: str) -> UnsafeFileError:
    return UnsafeFileError(f"{source}: {where} {problem}; refusing to load it")


def allowed_package(name: str) -> bool:
    return name.split(".", 1)[0] in ALLOWED_PACKAGES


def check_class(entry: dict, source: str | os.PathLike, where: str) -> None:
    """One serialized object: no code-carrying class, and a module/package keras, keras_hub
    or jaxpref (a function of module `builtins` is a Keras built-in looked up by name)."""
    name, module = entry.get("class_name"), entry.get("module")
    registered = entry.get("registered_name")
    registered = registered if isinstance(registered, str) else ""
    package = registered.split(">", 1)[0] if ">" in registered else None
    short = registered.rsplit(">", 1)[-1]
    if name in CODE_CLASSES or short in CODE_CLASSES:
        raise refuse(source, where, f"is a {name} object, which carries code")
    if not isinstance(name, str) or not isinstance(module, str | None):
        raise refuse(source, where, "is not a serialized Keras object")
    if name == "function" and module == "builtins":
        return
    for owner in (module, package):
        if owner is not None and not allowed_package(owner):
            raise refuse(
                source,
                where,
                f"names class {name} of {owner!r}, which is not keras, keras_hub or jaxpref",
            )


def is_inline_data(value: str) -> bool:
    if len(value) <= INLINE_DATA:
        return False
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error:
        return False
    return True


def check_relative(value: str, source: str | os.PathLike, where: str) -> None:
    """A file reference must be relative and must not climb out with `..`."""
    path = PurePosixPath(value.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or value.startswith("~"):
        raise refuse(source, where, f"= {value!r} is a path leaving its directory")


def check_serialized(value, source: str | os.PathLike, where: str = "") -> None:
    """Every object nested in a serialized Keras config (`check_class`) and every file
    reference in it (`FILE_KEYS`, `check_relative`)."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_serialized(item, source, f"{where}[{i}]")
    elif isinstance(value, dict):
        if "class_name" in value:
            check_class(value, source, where or "the top-level object")
        for key, item in value.items():
            at = f"{where}.{key}" if where else str(key)
            if key in FILE_KEYS and isinstance(item, str) and not is_inline_data(item):
                check_relative(item, source, at)
            check_serialized(item, source, at)


def check_weight_map(index: dict, source: str | os.PathLike) -> None:
    """The shard files named by a sharded-weights index stay in its directory."""
    weight_map = index.get("weight_map", {}) if isinstance(index, dict) else {}
    for key, files in weight_map.items() if isinstance(weight_map, dict) else ():
        for name in files if isinstance(files, list) else [files]:
            if not isinstance(name, str):
                raise refuse(source, f"weight_map[{key!r}]", "is not a file name")
            check_relative(name, source, f"weight_map[{key!r}]")


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UnsafeFileError(f"{path}: cannot read this JSON file ({err})") from None


def is_hugging_face(config) -> bool:
    return isinstance(config, dict) and "model_type" in config and "class_name" not in config


def check_preset_files(files: dict[str, Path]) -> None:
    """The preset files present, by name (`PRESET_CONFIGS`, `WEIGHT_MAPS`), checked.

    In a Hugging Face directory (config.json has a `model_type`) no file is a Keras object:
    keras-hub converts the configs field by field, so only its weight index is checked.
    """
    contents = {name: read_json(path) for name, path in files.items()}
    hugging_face = is_hugging_face(contents.get("config.json"))
    for name, content in contents.items():
        if name in WEIGHT_MAPS:
            check_weight_map(content, files[name])
        elif not hugging_face:
            check_serialized(content, files[name])


def check_preset(directory: str | os.PathLike) -> None:
    """Refuse a local preset (keras-hub or Hugging Face) whose configs carry code, name a
    class outside keras, keras_hub and jaxpref, or name a file outside the directory."""
    directory = Path(directory)
    names = (*PRESET_CONFIGS, *WEIGHT_MAPS)
    check_preset_files({n: directory / n for n in names if (directory / n).is_file()})


def check_inside(path: Path, root: Path, what: str) -> None:
    """`path` (symlinks followed) lies inside `root`: a run's preset/, a bundle's backbone/."""
    if not path.resolve().is_relative_to(root.resolve()):
        raise UnsafeFileError(
            f"{path}: the {what} leads outside {root} (to {path.resolve()}); refusing to load it"
        )
