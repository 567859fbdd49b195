"""int8 weight-only quantization (`models.quantize`) of tiny models of every decoder family and of
the DeBERTa encoder, on a 2 x 2 (batch x model) mesh of simulated CPU devices and on one device,
against the inference memory estimate (`parallel.sharding.inference_memory_estimate`).

The predictions of trained runs, through `jaxpref infer --quantize int8`, are compared with
float32 in tests/test_llm.py; here the models are untrained (random head, LoRA B set non-zero so
that merging the factors changes every adapted kernel).
"""

import jax
import keras
import numpy as np
import pytest

from jaxpref.config import ConfigError, ModelConfig
from jaxpref.inputs.featurize import NUM_SIDE_FEATURES, SIDE_FEATURES
from jaxpref.inputs.packers import FIRST, PART_IDS, SECOND
from jaxpref.models import families, lora, preference, presets, quantize
from jaxpref.parallel import sharding

RANK, ROWS, TOKENS = 4, 4, 24
# Max abs probability difference, int8 vs float32, of these untrained models: measured 0.0040
# (Llama-3) to 0.0069 (Gemma); trained runs: tests/test_llm.py's INT8_TOLERANCE.
UNTRAINED_TOLERANCE = 0.01


def lora_model(preset, **options):
    """The float32 cross-encoder of `preset` with rank-RANK LoRA, its B factors non-zero."""
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(
        preset=str(preset), architecture="cross", precision="float32", lora_rank=RANK, **options
    )
    model = preference.build_model(cfg, TOKENS)
    rng = np.random.default_rng(1)
    for variable in model.backbone.weights:
        if variable.path.endswith("lora_kernel_b"):
            variable.assign(0.1 * rng.standard_normal(variable.shape).astype("float32"))
    return model


def model_inputs(model, vocabulary_size: int) -> dict:
    """ROWS cross-encoded rows: conversation, first and second response, then padding."""
    rng = np.random.default_rng(0)
    mask = np.ones((ROWS, TOKENS), "int32")
    mask[1, 18:] = 0
    parts = np.zeros((ROWS, TOKENS), "int32")
    parts[:, 6:12], parts[:, 12:18] = FIRST, SECOND
    inputs = {
        "token_ids": rng.integers(1, vocabulary_size, (ROWS, TOKENS), dtype="int32"),
        "padding_mask": mask,
        PART_IDS: parts,
        SIDE_FEATURES: rng.standard_normal((ROWS, 2, NUM_SIDE_FEATURES)).astype("float32"),
    }
    return {key: inputs[key] for key in (*model.input_keys, SIDE_FEATURES)}


def bytes_on(device, variables) -> int:
    return sum(
        shard.data.nbytes
        for v in variables
        for shard in v.value.addressable_shards
        if shard.device == device
    )


@pytest.mark.parametrize("name", list(families.FAMILIES))
def test_quantized_decoder_holds_what_the_estimate_counts(decoder_presets, name):
    """On the 2 x 2 mesh: int8 kernels sharded as the float ones were, scales replicated;
    bytes per device and in all equal the estimate; LoRA merged and gone; predictions near."""
    preset = presets.probe(decoder_presets[name])
    config, family = preset.backbone_config, preset.family
    with sharding.model_parallel(jax.devices(), 2, config).scope():
        model = lora_model(decoder_presets[name])
        x = model_inputs(model, config["config"]["vocabulary_size"])
        before = np.asarray(model(x))
        sizes = quantize.quantize_backbone(model)
        after = np.asarray(model(x))
    difference = np.abs(after - before).max()
    print(f"{name}: {sizes.describe()}, max abs probability difference {difference:.5f}")
    assert 0 < difference < UNTRAINED_TOLERANCE

    targets = lora.target_layers("", family)
    floats = sharding.inference_memory_estimate(config, ROWS, TOKENS, RANK, targets)
    int8 = sharding.inference_memory_estimate(config, ROWS, TOKENS, RANK, targets, quantize="int8")
    assert sizes.before == floats.weights + floats.lora == int8.loading
    assert sizes.after == int8.weights < sizes.before / 2
    on_mesh = sharding.inference_memory_estimate(
        config, ROWS, TOKENS, RANK, targets, mesh=(2, 2), quantize="int8"
    )
    backbone = model.backbone
    assert bytes_on(jax.devices()[0], backbone.weights) == on_mesh.weights < int8.weights
    assert on_mesh.lora == int8.lora == 0
    assert not any("lora" in v.path for v in backbone.weights)
    kernels = [v for v in backbone.weights if v.path.endswith(("/kernel", "embeddings"))]
    assert {str(v.dtype) for v in kernels} == {"int8"}
    layers = family.dims(config["config"])["layers"]
    split = {
        path
        for weight in family.weights(config["config"])
        if sharding.weight_spec(weight, 2)
        for path in weight.paths(layers)
    }
    assert {v.path for v in kernels if "model" in tuple(v.value.sharding.spec)} == split & {
        v.path for v in kernels
    }
    scales = [v for v in backbone.weights if v.path.endswith("_scale")]
    assert len(scales) == len(kernels)
    assert all("model" not in tuple(v.value.sharding.spec) for v in scales)


def test_encoder_with_lora_dropout_quantizes_too(tiny_preset):
    """DeBERTa (jaxpref's attention, `lora.add_dropout`'s call on each LoRA layer): the LoRA
    layers get their own call back, the model predicts near its float32 self."""
    model = lora_model(tiny_preset, lora_dropout=0.1)
    adapted = [
        v.path.rsplit("/", 1)[0] for v in model.backbone.weights if "lora_kernel_a" in v.path
    ]
    assert adapted
    x = model_inputs(model, model.backbone.vocabulary_size)
    before = np.asarray(model(x))
    sizes = quantize.quantize_backbone(model)
    after = np.asarray(model(x))
    assert 0 < np.abs(after - before).max() < UNTRAINED_TOLERANCE
    assert sizes.after < sizes.before / 2
    layers = {layer.path: layer for layer in model.backbone._flatten_layers()}
    assert all("call" not in vars(layers[path]) for path in adapted)
    assert all(layers[path].quantization_mode == "int8" for path in adapted)


@pytest.mark.parametrize("precision", ["mixed_float16", "float16"])
def test_float16_compute_is_refused_in_one_line(precision):
    with pytest.raises(ConfigError) as err:
        quantize.check_quantizable("int8", precision)
    assert str(err.value) == (
        f"--quantize int8 with --precision {precision}: Keras quantizes to int8 only with "
        "bfloat16 or float32 compute (float16 overflows); pass --precision bfloat16, "
        "mixed_bfloat16 or float32"
    )
    for fine in ("bfloat16", "mixed_bfloat16", "float32"):
        quantize.check_quantizable("int8", fine)
    with pytest.raises(ConfigError, match="--quantize int4: expected one of int8"):
        quantize.check_quantizable("int4", "float32")
