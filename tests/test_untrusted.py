"""Presets, run directories and bundles made by someone else: nothing in them runs.

Crafted copies of the tiny preset carry (a) a Lambda layer, (b) a class of an unknown module
`evil`, (c) file names leaving their directory; each is refused with one error naming the file
and the entry, before keras imports or executes anything.
"""

import importlib.util
import json
import shutil
import sys

import keras
import numpy as np
import pytest
from conftest import REPO, run_script

from jaxpref import safety
from jaxpref.config import TrainConfig
from jaxpref.data import arena
from jaxpref.models import backbones
from jaxpref.models import preference as model_lib
from jaxpref.serve import bundle, predict

EVIL = {"module": "evil", "class_name": "Module", "config": {}, "registered_name": "evil>Module"}


def edit_json(path, change) -> None:
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def copy_preset(tiny_preset, path, file: str | None = None, **changes):
    """A copy of the tiny preset at `path`, with `changes` made to the object config in `file`."""
    preset = shutil.copytree(tiny_preset, path)
    if file:
        edit_json(preset / file, lambda c: c["config"].update(changes))
    return preset


def refusal(load, *args) -> str:
    """The message of the UnsafeFileError that `load(*args)` raises."""
    with pytest.raises(safety.UnsafeFileError) as info:
        load(*args)
    return str(info.value)


def lambda_config(marker) -> dict:
    """A serialized Lambda layer whose code creates `marker` when it runs."""
    layer = keras.layers.Lambda(lambda x, path=str(marker): (open(path, "w").close(), x)[1])
    return keras.saving.serialize_keras_object(layer)


@pytest.fixture
def evil_module(tmp_path, monkeypatch):
    """An importable module `evil` that creates a marker file when imported."""
    marker = tmp_path / "evil-was-imported"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\nModule = object\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert importlib.util.find_spec("evil") is not None
    return marker


def test_the_real_tiny_preset_passes(tiny_preset):
    safety.check_preset(tiny_preset)
    assert backbones.load_tokenizer(str(tiny_preset)).vocabulary_size() == 600


def test_a_lambda_layer_is_refused_and_its_code_never_runs(tiny_preset, tmp_path):
    marker = tmp_path / "lambda-ran"
    config = lambda_config(marker)
    preset = copy_preset(tiny_preset, tmp_path / "preset", "config.json", dtype=config)
    assert refusal(backbones.load_backbone, str(preset)) == (
        f"{preset / 'config.json'}: config.dtype is a Lambda object, which carries code; "
        "refusing to load it"
    )
    assert not marker.exists()
    # The same config, loaded unsafely and called, does run its code: the marker is real.
    keras.saving.deserialize_keras_object(config, safe_mode=False)(np.zeros(1))
    assert marker.exists()


def test_a_backbone_with_a_lambda_layer_in_a_model_config_is_refused(tmp_path):
    marker = tmp_path / "lambda-ran"
    layer = keras.saving.deserialize_keras_object(lambda_config(marker), safe_mode=False)
    backbone = keras.saving.serialize_keras_object(keras.Sequential([keras.Input((1,)), layer]))
    assert marker.exists()  # building the graph ran the code: rebuilding it would, too
    marker.unlink()
    assert refusal(model_lib.SiameseModel.from_config, {"backbone": backbone}) == (
        "SiameseModel config: backbone.config.layers[1] is a Lambda object, which carries code; "
        "refusing to load it"
    )
    assert not marker.exists()


def test_an_unknown_module_is_refused_and_never_imported(tiny_preset, tmp_path, evil_module):
    preset = copy_preset(tiny_preset, tmp_path / "preset", "tokenizer.json", dtype=EVIL)
    assert refusal(backbones.load_tokenizer, str(preset)) == (
        f"{preset / 'tokenizer.json'}: config.dtype names class Module of 'evil', which is not "
        "keras, keras_hub or jaxpref; refusing to load it"
    )
    assert "evil" not in sys.modules and not evil_module.exists()


def test_a_code_class_is_refused_whatever_module_it_claims(tmp_path):
    config = tmp_path / "config.json"
    torch = {"module": "keras.layers", "class_name": "TorchModuleWrapper", "config": {}}
    config.write_text(json.dumps({"class_name": "X", "module": "keras", "config": {"a": [torch]}}))
    with pytest.raises(safety.UnsafeFileError, match=r"config\.a\[0\] is a TorchModuleWrapper"):
        safety.check_preset(tmp_path)


def test_an_absolute_asset_path_is_refused_though_keras_hub_would_read_it(tiny_preset, tmp_path):
    """keras-hub joins a tokenizer's `config_file` to the preset directory unchecked."""
    import keras_hub

    outside = tmp_path / "outside" / "tokenizer"
    outside.mkdir(parents=True)
    shutil.copy(tiny_preset / "assets" / "tokenizer" / "vocabulary.spm", outside)
    preset = copy_preset(tiny_preset, tmp_path / "preset")
    (preset / "assets" / "tokenizer" / "vocabulary.spm").unlink()
    escaping = str(outside) + ".json"
    edit_json(preset / "tokenizer.json", lambda c: c["config"].update(config_file=escaping))
    assert keras_hub.models.Tokenizer.from_preset(str(preset)).vocabulary_size() == 600
    assert refusal(backbones.load_tokenizer, str(preset)) == (
        f"{preset / 'tokenizer.json'}: config.config_file = {escaping!r} is a path leaving its "
        "directory; refusing to load it"
    )


def test_a_hub_preset_is_checked_in_keras_hubs_cache(tiny_preset, tmp_path, monkeypatch):
    (tmp_path / "keras_home").mkdir()
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    preset = copy_preset(tiny_preset, tmp_path / "preset", "preprocessor.json", config_file="/x")
    message = refusal(backbones.load_preprocessor, f"file://{preset}", 32)
    assert message.startswith(str(tmp_path / "keras_home" / "models"))
    assert "preprocessor.json: config.config_file = '/x' is a path leaving" in message


@pytest.mark.parametrize("name", ["../model_00001.weights.h5", "/etc/model.weights.h5"])
def test_sharded_weight_files_must_stay_in_the_preset(tiny_preset, tmp_path, name):
    preset = copy_preset(tiny_preset, tmp_path / "preset")
    (preset / "model.weights.json").write_text(json.dumps({"weight_map": {"layer/0": name}}))
    with pytest.raises(safety.UnsafeFileError, match=r"weight_map\['layer/0'\] = .* leaving"):
        backbones.load_backbone(str(preset))


def fake_run(tiny_preset, root, file=None, **changes):
    """A run directory as inference reads it (no weights: refusals come before them)."""
    root.mkdir()
    TrainConfig().replace(preset=str(tiny_preset), precision="float32").to_json(
        root / "config.json"
    )
    (root / "checkpoints" / "best").mkdir(parents=True)
    copy_preset(tiny_preset, root / "preset", file, **changes)
    return root


def fake_bundle(tiny_preset, root, file=None, contents=("backbone", "config.json"), **changes):
    root.mkdir()
    manifest = {"format": bundle.FORMAT, "version": bundle.FORMAT_VERSION, "contents": contents}
    (root / "bundle.json").write_text(json.dumps(manifest))
    TrainConfig().replace(precision="float32").to_json(root / "config.json")
    np.savez(root / "head.npz", nothing=np.zeros(1))
    copy_preset(tiny_preset, root / "backbone", file, **changes)
    return root


def test_a_run_directory_with_a_lambda_in_its_preset_is_refused(tiny_preset, tmp_path):
    marker = tmp_path / "lambda-ran"
    run = fake_run(tiny_preset, tmp_path / "run", "config.json", dtype=lambda_config(marker))
    assert refusal(predict.load_run, run).startswith(
        f"{run / 'preset' / 'config.json'}: config.dtype is a Lambda object"
    )
    assert not marker.exists()


def test_a_run_directory_whose_preset_leads_elsewhere_is_refused(tiny_preset, tmp_path):
    run = fake_run(tiny_preset, tmp_path / "run")
    shutil.rmtree(run / "preset")
    (run / "preset").symlink_to(tiny_preset)
    assert refusal(predict.load_run, run) == (
        f"{run / 'preset'}: the run directory entry leads outside {run} (to {tiny_preset}); "
        "refusing to load it"
    )


@pytest.mark.parametrize("entry", ["../secrets", "/etc/passwd"])
def test_a_bundle_manifest_naming_files_outside_is_refused(tiny_preset, tmp_path, entry):
    root = fake_bundle(tiny_preset, tmp_path / "bundle", contents=["config.json", entry])
    assert refusal(predict.load_run, root) == (
        f"{root / 'bundle.json'}: contents[1] = {entry!r} is a path leaving its directory; "
        "refusing to load it"
    )


def test_infer_refuses_a_bundle_with_an_unknown_class_in_one_error_line(
    tiny_preset, tmp_path, evil_module, monkeypatch
):
    monkeypatch.setenv("PYTHONPATH", f"{REPO}:{tmp_path}")  # this jaxpref; `evil` importable
    root = fake_bundle(tiny_preset, tmp_path / "bundle", "config.json", dtype=EVIL)
    result = run_script(
        "infer.py", "--devices", "cpu", "--run-dir", str(root), "--test-csv",
        str(arena.DEFAULT_TRAIN_CSV.parent / "arena_test.csv"), "--output", str(tmp_path / "s.csv"),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {root / 'backbone' / 'config.json'}: config.dtype names class Module of 'evil', "
        "which is not keras, keras_hub or jaxpref; refusing to load it"
    ]
    assert "Traceback" not in result.stderr and not evil_module.exists()
    assert not (tmp_path / "s.csv").exists()
