"""The efficient DeBERTa-v3 attention against keras-hub's, on the same weights.

A tiny backbone with bucket_size 8 and max_sequence_length 32 buckets relative positions
logarithmically from |i - j| > 4 and clips them from 31, so lengths 16, 64 and 200 cover
exact, log-bucketed and clipped positions.
"""

import jax
import jax.numpy as jnp
import keras
import keras_hub
import numpy as np
import pytest
from keras_hub.src.models.deberta_v3.disentangled_self_attention import (
    DisentangledSelfAttention,
)

from jaxpref.models.deberta_attention import (
    AttentionError,
    EfficientDisentangledSelfAttention,
    efficient_deberta,
    relative_index,
)

TINY = {
    "vocabulary_size": 50,
    "num_layers": 2,
    "num_heads": 2,
    "hidden_dim": 16,
    "intermediate_dim": 32,
    "dropout": 0.0,
    "max_sequence_length": 32,
    "bucket_size": 8,
}
TOLERANCE = 1e-5


def twin_backbones(lora_rank: int = 0, dtype: str | None = None):
    """keras-hub's backbone and an efficient one with the same weights (LoRA B made non-zero)."""
    keras.utils.set_random_seed(0)
    reference = keras_hub.models.DebertaV3Backbone(**TINY, dtype=dtype)
    efficient = keras_hub.models.DebertaV3Backbone(**TINY, dtype=dtype)
    if lora_rank:
        reference.enable_lora(lora_rank)
        efficient.enable_lora(lora_rank)
        for variable in reference.weights:
            if "lora_kernel_b" in variable.path:
                variable.assign(np.random.default_rng(1).normal(size=variable.shape) * 0.1)
    efficient.set_weights(reference.get_weights())
    return reference, efficient_deberta(efficient)


def batch(length: int, size: int = 3) -> dict:
    """Token ids with padding: one full row, one half padded, one with 3 real tokens."""
    rng = np.random.default_rng(length)
    mask = np.ones((size, length), "int32")
    mask[1, length // 2 :] = 0
    mask[2, 3:] = 0
    ids = rng.integers(1, TINY["vocabulary_size"], (size, length)).astype("int32") * mask
    return {"token_ids": ids, "padding_mask": mask}


def train_step(backbone, inputs: dict):
    """The compiled step: (sum(hidden * w), hidden), d/d trainable weights; inputs as arguments."""
    weights = np.random.default_rng(2).normal(size=(*inputs["token_ids"].shape, 16))
    non_trainable = [v.value for v in backbone.non_trainable_variables]

    def loss(trainable, inputs):
        hidden, _ = backbone.stateless_call(trainable, non_trainable, inputs, training=True)
        return jnp.sum(hidden.astype("float32") * weights), hidden

    trainable = [v.value for v in backbone.trainable_variables]
    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    return step.lower(trainable, inputs).compile(), (trainable, inputs)


def output_and_grads(backbone, inputs: dict):
    """Hidden states and the gradients of sum(hidden * w) over the trainable weights."""
    step, args = train_step(backbone, inputs)
    (_, hidden), grads = step(*args)
    return np.asarray(hidden, "float32"), [np.asarray(g) for g in grads]


def largest_difference(left: list, right: list) -> float:
    return max(float(np.max(np.abs(a - b))) for a, b in zip(left, right, strict=True))


def max_differences(reference, efficient, inputs):
    """Largest |difference| of the outputs and of the gradients."""
    ref_out, ref_grads = output_and_grads(reference, inputs)
    eff_out, eff_grads = output_and_grads(efficient, inputs)
    return largest_difference([ref_out], [eff_out]), largest_difference(ref_grads, eff_grads)


@pytest.mark.parametrize("length", [16, 64, 200])
def test_same_outputs_and_gradients_with_lora(length):
    reference, efficient = twin_backbones(lora_rank=2)
    out_diff, grad_diff = max_differences(reference, efficient, batch(length))
    assert out_diff < TOLERANCE
    assert grad_diff < TOLERANCE


def test_lora_before_or_after_the_switch_is_the_same():
    reference, _ = twin_backbones(lora_rank=2)
    keras.utils.set_random_seed(0)
    late = efficient_deberta(keras_hub.models.DebertaV3Backbone(**TINY))
    late.enable_lora(2)
    late.set_weights(reference.get_weights())
    assert [v.path for v in late.trainable_variables] == [
        v.path for v in reference.trainable_variables
    ]
    out_diff, grad_diff = max_differences(reference, late, batch(64))
    assert out_diff < TOLERANCE and grad_diff < TOLERANCE


@pytest.mark.parametrize("length", [16, 200, 1100])
@pytest.mark.parametrize("bucket_size, max_position", [(8, 32), (256, 512)])
def test_relative_index_is_keras_hubs(length, bucket_size, max_position):
    layer = DisentangledSelfAttention(
        num_heads=1, hidden_dim=4, max_position_embeddings=max_position, bucket_size=bucket_size
    )
    bucket = np.asarray(layer._get_rel_pos(length))[0, 0]
    expected = np.clip(bucket + bucket_size, 0, 2 * bucket_size - 1)
    np.testing.assert_array_equal(relative_index(length, bucket_size, max_position), expected)


def test_variables_unchanged_and_preset_loads_with_plain_keras_hub(tmp_path):
    reference, efficient = twin_backbones()
    assert [(v.path, v.shape) for v in efficient.weights] == [
        (v.path, v.shape) for v in reference.weights
    ]
    efficient.save_to_preset(str(tmp_path))
    loaded = keras_hub.models.Backbone.from_preset(str(tmp_path))
    assert type(loaded) is keras_hub.models.DebertaV3Backbone
    attention = loaded.transformer_layers[0]._self_attention_layer
    assert type(attention) is DisentangledSelfAttention
    inputs = batch(64)
    out = np.asarray(loaded(inputs))
    assert np.max(np.abs(out - np.asarray(efficient(inputs)))) < TOLERANCE


def test_mixed_bfloat16_matches_keras_hub():
    reference, efficient = twin_backbones(dtype="mixed_bfloat16")
    inputs = batch(64)
    ref_out, eff_out = reference(inputs), efficient(inputs)
    assert eff_out.dtype == ref_out.dtype
    diff = np.abs(np.asarray(ref_out, "float32") - np.asarray(eff_out, "float32"))
    assert np.max(diff) < 0.02  # a few bf16 roundings (outputs ~3); float32 tests check exactness


def test_data_parallel_matches_single_device():
    reference, _ = twin_backbones(lora_rank=2)
    inputs = batch(64, size=4)
    expected_out, expected_grads = output_and_grads(reference, inputs)
    distribution = keras.distribution.DataParallel(devices=jax.devices())
    assert len(jax.devices()) == 4
    with distribution.scope():
        keras.utils.set_random_seed(0)
        backbone = efficient_deberta(keras_hub.models.DebertaV3Backbone(**TINY))
        backbone.enable_lora(2)
        backbone.set_weights(reference.get_weights())
        sharded = {
            key: keras.distribution.distribute_tensor(
                value, distribution.get_data_layout(value.shape)
            )
            for key, value in inputs.items()
        }
        step, args = train_step(backbone, sharded)
        (_, out), grads = step(*args)
    # The attention stays split along the batch: only the gradients are all-reduced.
    assert "all-gather(" not in step.as_text() and "all-reduce(" in step.as_text()
    assert largest_difference([np.asarray(out)], [expected_out]) < TOLERANCE
    assert largest_difference([np.asarray(g) for g in grads], expected_grads) < TOLERANCE


def attention_probabilities(attention_dropout: bool) -> np.ndarray:
    layer = DisentangledSelfAttention(
        num_heads=2, hidden_dim=8, max_position_embeddings=32, bucket_size=8, dropout=0.5
    )
    layer.build((1, 40, 8))
    layer.__class__ = EfficientDisentangledSelfAttention
    layer.attention_dropout = attention_dropout
    rng = np.random.default_rng(3)
    query, key, value = (rng.normal(size=(1, 40, 2, 4)).astype("float32") for _ in range(3))
    table = rng.normal(size=(1, 16, 8)).astype("float32")
    mask = np.ones((1, 1, 40), "int32")
    _, probs = layer._compute_attention(query, key, value, table, mask, training=True)
    return np.asarray(probs)


def test_attention_dropout_is_a_choice():
    np.testing.assert_allclose(attention_probabilities(False).sum(-1), 1.0, rtol=1e-5)
    dropped = attention_probabilities(True)
    assert 0.4 < np.mean(dropped == 0) < 0.6


def test_other_backbones_are_refused():
    with pytest.raises(AttentionError, match="DebertaV3Backbone, got Sequential"):
        efficient_deberta(keras.Sequential())
