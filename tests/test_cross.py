"""Cross-encoders: one sequence per pair, for encoders (DeBERTa) and decoder LLMs."""

import jax
import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from jaxpref.config import ConfigError, ModelConfig
from jaxpref.data import arena
from jaxpref.inputs import batching, packers
from jaxpref.inputs.featurize import FeaturizedRows, tokenize
from jaxpref.inputs.packers import CONVERSATION, FIRST, SECOND
from jaxpref.models import families, lora, presets
from jaxpref.models import preference as model_lib
from jaxpref.parallel import sharding
from jaxpref.serve import predict

LENGTH = 48
DECODER_LENGTH = 128  # the tiny decoders' tokenizers spend ~70 tokens on the tags


def rows(n: int = 6):
    return arena.read_arena_csv(arena.DEFAULT_TRAIN_CSV, labelled=True).head(n)


def rows_of(model, preset, frame, length=LENGTH) -> FeaturizedRows:
    packer = model.build_packer(str(preset), length)
    return FeaturizedRows(packer, tokenize(packer.texts(frame), packer, progress=False))


def test_truncate_parts_shares_the_budget_and_keeps_the_conversation_end():
    lengths = [(10, 20, 30), (2, 40, 5), (1, 1, 1), (0, 50, 50)]
    parts = [tf.ragged.constant([list(range(n[i])) for n in lengths]) for i in range(3)]
    kept = packers.truncate_parts(parts, 30, (True, False, False))
    sizes = np.stack([p.row_lengths().numpy() for p in kept], axis=1)
    np.testing.assert_array_equal(sizes, [(10, 10, 10), (2, 23, 5), (1, 1, 1), (0, 15, 15)])
    uneven = packers.truncate_parts(
        [tf.ragged.constant([list(range(40))])] * 3, 31, (True, False, False)
    )
    assert [int(p.row_lengths()[0]) for p in uneven] == [11, 10, 10]  # the budget used whole
    assert kept[0][0].numpy().tolist() == list(range(10))  # fits: all of it
    assert kept[1][1].numpy().tolist() == list(range(23))  # a response keeps its start
    long = packers.truncate_parts(
        [tf.ragged.constant([list(range(40))])] * 3, 30, (True, False, False)
    )
    assert long[0][0].numpy().tolist() == list(range(30, 40))  # the conversation its end


@pytest.fixture(scope="module")
def cross(tiny_preset):
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(
        preset=str(tiny_preset), architecture="cross", dropout=0.0, precision="float32",
        side_features=False,
    )  # fmt: skip
    return model_lib.build_model(cfg, LENGTH)


def test_encoder_sequences_hold_both_orders_of_the_same_parts(cross, tiny_preset):
    featurized = rows_of(cross, tiny_preset, rows())
    packer, tokens = featurized.packer, featurized.tokens
    cls, sep = packer.pieces[0][0], packer.pieces[1][0]
    assert tokens.token_ids.shape == (6, 2, LENGTH)
    for i in range(6):
        for order in (0, 1):
            n = tokens.lengths[i, order]
            ids, parts = tokens.token_ids[i, order, :n], tokens.part_ids[i, order, :n]
            assert ids[0] == cls and ids[-1] == sep
            assert (tokens.part_ids[i, order, n:] == 0).all()
            assert (np.diff(parts) >= 0).all() and set(parts) <= {CONVERSATION, FIRST, SECOND}
        first = tokens.token_ids[i, 0][tokens.part_ids[i, 0] == FIRST]
        swapped = tokens.token_ids[i, 1][tokens.part_ids[i, 1] == SECOND]
        np.testing.assert_array_equal(swapped[1:-1], first)  # B-first order: A second
    assert tokens.lengths.max() >= LENGTH - 1  # long rows fill the budget (one may stay unused)


def test_cross_model_predicts_swap_tta_mirrors_and_config_round_trips(cross, tiny_preset):
    featurized = rows_of(cross, tiny_preset, rows())
    assert isinstance(featurized.packer, packers.CrossPacker) and cross.pooling == "mean"
    assert featurized.packer.input_keys == (*cross.backbone_input_keys, packers.PART_IDS)
    plan = batching.plan_batches(featurized.tokens.row_lengths(), 2, (LENGTH,))
    probs = predict.predict_rows(cross, featurized, plan)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    tta = predict.predict_rows(cross, featurized, plan, tta=True)
    swapped = predict.predict_rows(cross, featurized.swapped(), plan, tta=True)
    np.testing.assert_allclose(swapped, tta[:, list(arena.MIRROR)], atol=1e-9)
    config = cross.get_config()
    rebuilt = model_lib.CrossEncoderModel.from_config(config)
    assert rebuilt.get_config() == config
    assert [w.path for w in rebuilt.weights] == [w.path for w in cross.weights]


@pytest.mark.parametrize("name", ["gemma", "llama3", "qwen2"])
def test_decoder_cross_models_pool_the_last_token_with_lora_on_attention_and_mlp(
    decoder_presets, name
):
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(
        preset=str(decoder_presets[name]), architecture="cross", lora_rank=2, precision="float32",
        side_features=False,
    )  # fmt: skip
    model = model_lib.build_model(cfg, DECODER_LENGTH)
    assert model.pooling == "last"
    factors = [w.path for w in model.trainable_weights if "lora_kernel" in w.path]
    family = families.family_of(model.backbone)
    assert len(factors) == 2 * len(lora.target_layers("", family)) == 2 * 7
    featurized = rows_of(model, decoder_presets[name], rows(4), DECODER_LENGTH)
    packer = featurized.packer
    assert packer.decoder and packer.pieces[0]  # the tagged format's opening tokens
    plan = batching.plan_batches(featurized.tokens.row_lengths(), 2, (DECODER_LENGTH,))
    probs = predict.predict_rows(model, featurized, plan)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(ConfigError, match="--architecture cross"):
        model_lib.build_model(ModelConfig(preset=cfg.preset, precision="float32"), DECODER_LENGTH)


def test_decoder_cross_model_on_a_2x2_mesh_predicts_as_on_one_device(decoder_presets):
    preset = str(decoder_presets["llama3"])
    cfg = ModelConfig(
        preset=preset, architecture="cross", lora_rank=2, precision="float32", side_features=False
    )
    keras.utils.set_random_seed(0)
    reference = model_lib.build_model(cfg, DECODER_LENGTH)
    weights = [np.random.default_rng(i).normal(0, 0.05, w.shape) for i, w in enumerate(
        reference.weights)]  # fmt: skip
    weights = [w.astype(v.dtype) for w, v in zip(weights, reference.weights, strict=True)]
    featurized = rows_of(reference, preset, rows(4), DECODER_LENGTH)
    plan = batching.plan_batches(featurized.tokens.row_lengths(), 4, (DECODER_LENGTH,))
    reference.set_weights(weights)
    expected = predict.predict_rows(reference, featurized, plan)
    config = presets.probe(preset).backbone_config
    with sharding.model_parallel(jax.devices(), 2, config).scope():
        model = model_lib.build_model(cfg, DECODER_LENGTH)
        model.set_weights(weights)
        sharded = predict.predict_rows(model, featurized, plan)
    np.testing.assert_allclose(sharded, expected, atol=1e-5)
    specs = {w.path: tuple(w.value.sharding.spec) for w in model.weights}
    factors = {p: s for p, s in specs.items() if "lora_kernel" in p}
    assert factors and not any("model" in s for s in factors.values())  # LoRA replicated
    backbone = {w.path for w in model.backbone.weights}
    kernels = [s for p, s in specs.items() if p in backbone and p.endswith("/kernel")]
    assert kernels and all("model" in s for s in kernels)  # base kernels sharded


def test_a_sequence_too_short_for_the_texts_is_refused(decoder_presets, tiny_preset):
    """At 64 tokens a tiny decoder's tags leave no room for the texts: every row would be the
    same tags (nothing to learn), so the packer refuses and names the length that works."""
    for preset, decoder in ((decoder_presets["llama3"], True), (tiny_preset, False)):
        tokenizer = keras_hub.models.Tokenizer.from_preset(str(preset))
        tags = sum(len(p) for p in packers.CrossPacker(tokenizer, 512, (), decoder).pieces)
        enough = tags + packers.MIN_TEXT_TOKENS
        assert packers.CrossPacker(tokenizer, enough, (), decoder).budget == 16
        with pytest.raises(ConfigError, match=f"use --sequence-length {enough} or more"):
            packers.CrossPacker(tokenizer, enough - 1, (), decoder)
    assert tags == 4  # DeBERTa: [CLS] and three [SEP]; the decoder's tags are longer
    with pytest.raises(ConfigError, match="--sequence-length 64 leaves -"):
        tokenizer = keras_hub.models.Tokenizer.from_preset(str(decoder_presets["llama3"]))
        packers.CrossPacker(tokenizer, 64, (), True)
