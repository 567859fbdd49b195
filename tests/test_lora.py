"""LoRA dropout (the factored adapter path, dropout only in training, masks that change) and
merging the factors into the kernel."""

import dataclasses

import keras
import numpy as np
import pytest

from jaxpref.config import ConfigError, ModelConfig
from jaxpref.models import backbones, lora
from jaxpref.models import preference as model_lib


def _lora_backbone(tiny_preset, rank=4):
    keras.utils.set_random_seed(0)
    backbone = backbones.load_backbone(str(tiny_preset))
    backbone.enable_lora(rank)
    for layer in lora.lora_layers(backbone):  # non-zero B: the adapters change the output
        layer.lora_kernel_b.assign(np.random.default_rng(0).normal(size=layer.lora_kernel_b.shape))
    return backbone


def _inputs(backbone, batch=3, length=16):
    rng = np.random.default_rng(1)
    x = {k: np.ones((batch, length), "int32") for k in backbone.input}
    x["token_ids"] = rng.integers(5, 100, size=(batch, length)).astype("int32")
    return x


def test_factored_call_equals_the_merged_kernel_and_drops_out_only_in_training(tiny_preset):
    backbone = _lora_backbone(tiny_preset)
    layer = lora.lora_layers(backbone)[0]
    x = np.random.default_rng(2).normal(size=(2, 5, layer._kernel.shape[0])).astype("float32")
    merged = np.asarray(layer(x))  # Keras: x (W + s A B)
    seed = keras.random.SeedGenerator(0)
    assert lora.add_dropout(backbone, 0.5, seed) == len(lora.lora_layers(backbone)) == 2
    np.testing.assert_allclose(np.asarray(layer(x)), merged, rtol=1e-5, atol=1e-5)
    first, second = (np.asarray(layer(x, training=True)) for _ in range(2))
    assert not np.allclose(first, merged) and not np.allclose(first, second)
    frozen_only = np.einsum(layer.equation, x, np.asarray(layer._kernel)) + np.asarray(layer.bias)
    assert not np.allclose(first, frozen_only)  # the adapters still contribute


def test_einsum_factoring_needs_the_kernels_last_axis_last():
    assert lora.factored_einsum("abc,cde->abde")
    assert lora.factored_einsum("btnh,nhd->btd")
    assert not lora.factored_einsum("abc,cde->abed")


def test_merging_the_factors_keeps_the_backbones_outputs(tiny_preset):
    backbone = _lora_backbone(tiny_preset)
    x = _inputs(backbone)
    before = np.asarray(backbone(x))
    kernels = [np.asarray(layer._kernel) for layer in lora.lora_layers(backbone)]
    for layer in lora.lora_layers(backbone):
        lora.merge_into_kernel(layer)
    np.testing.assert_allclose(np.asarray(backbone(x)), before, rtol=1e-4, atol=1e-5)
    for layer, kernel in zip(lora.lora_layers(backbone), kernels, strict=True):
        assert not np.asarray(layer.lora_kernel_b).any()
        assert not np.allclose(np.asarray(layer._kernel), kernel)  # the kernel holds the delta


def test_model_with_lora_dropout_round_trips_and_predicts_as_without(tiny_preset):
    cfg = ModelConfig(preset=str(tiny_preset), lora_rank=2, precision="float32")
    keras.utils.set_random_seed(0)
    plain = model_lib.build_model(cfg, sequence_length=64)
    keras.utils.set_random_seed(0)
    dropped = model_lib.build_model(dataclasses.replace(cfg, lora_dropout=0.2), sequence_length=64)
    assert dropped.get_config()["lora_dropout"] == 0.2
    rebuilt = model_lib.SiameseModel.from_config(dropped.get_config())
    assert [w.path for w in rebuilt.weights] == [w.path for w in dropped.weights]
    # the mask seed is state like any dropout layer's (in variables, not weights)
    assert [v.path for v in dropped.variables if "lora_dropout_seed" in v.path]
    for w, same in zip(dropped.weights, plain.weights, strict=True):
        shift = 0.01 if "lora_kernel_b" in w.path else 0.0  # adapters that change the output
        value = np.asarray(same) + shift
        w.assign(value)
        same.assign(value)
    x = {k: np.stack([v, v[::-1]], axis=1) for k, v in _inputs(dropped.backbone).items()}
    x["side_features"] = np.zeros((3, 2, 10), "float32")
    np.testing.assert_allclose(
        dropped.predict(x, verbose=0), plain.predict(x, verbose=0), atol=1e-5
    )


def test_lora_dropout_without_adapters_is_a_config_error(tiny_preset):
    cfg = ModelConfig(preset=str(tiny_preset), lora_rank=0, lora_dropout=0.1, precision="float32")
    with pytest.raises(ConfigError, match="--lora-dropout applies to LoRA adapters"):
        model_lib.build_model(cfg, sequence_length=64)
