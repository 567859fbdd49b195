import keras
import numpy as np
import pytest

from jaxpref.config import ModelConfig
from jaxpref.data import text
from jaxpref.inputs import batching, feeding, packers
from jaxpref.inputs.featurize import FeaturizedRows, tokenize
from jaxpref.models import backbones
from jaxpref.models import preference as model_lib
from jaxpref.training import optimization


@pytest.fixture(scope="module")
def tiny(tiny_preset):
    keras.utils.set_random_seed(0)
    backbone = backbones.load_backbone(str(tiny_preset))
    preprocessor = backbones.load_preprocessor(str(tiny_preset), 24)
    packer = packers.PairPacker(preprocessor, tuple(backbone.input.keys()))
    return backbone, packer


def _texts(responses_b):
    n = len(responses_b)
    texts = {
        "context_a": np.asarray(["what is two plus two"] * n, dtype=object),
        "response_a": np.asarray(["it is four"] * n, dtype=object),
        "context_b": np.asarray(["what is two plus two"] * n, dtype=object),
        "response_b": np.asarray(responses_b, dtype=object),
    }
    assert set(texts) == set(text.FEATURE_KEYS)
    return texts


def _batch(packer, responses_b):
    n = len(responses_b)
    rows = FeaturizedRows(packer, tokenize(_texts(responses_b), packer, progress=False))
    plan = [batching.Batch(np.arange(n), np.ones(n, np.float32), 24)]
    (x,) = next(iter(feeding.make_dataset(rows, [plan])))
    return {k: v.numpy() for k, v in x.items()}


def test_outputs_are_probabilities_over_three_classes(tiny):
    backbone, packer = tiny
    model = model_lib.SiameseModel(backbone, dropout=0.0, head="concat")
    probs = model.predict(_batch(packer, ["five", "it is four", "no idea", "4"]), verbose=0)
    assert probs.shape == (4, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_one_backbone_shared_by_both_sides(tiny):
    backbone, _ = tiny
    model = model_lib.SiameseModel(backbone, dropout=0.0, head="concat")
    hidden = backbone.get_config()["hidden_dim"]
    head = 4 * hidden * 3 + 3
    assert model.count_params() == backbone.count_params() + head


def test_identical_sides_give_identical_embeddings(tiny):
    backbone, packer = tiny
    model = model_lib.SiameseModel(backbone, dropout=0.0, head="concat")
    x = _batch(packer, ["it is four"])
    pooled = keras.Model(model.inputs, model.get_layer("unfold").output)(x)
    np.testing.assert_allclose(np.asarray(pooled[0]), np.asarray(pooled[1]), atol=1e-6)


def test_masked_mean_pool_ignores_padding():
    pool = model_lib.MaskedMeanPool()
    hidden = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]], dtype="float32")
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(np.asarray(pool(hidden, mask)), [[2.0, 3.0]])
    empty = np.asarray(pool(hidden, np.zeros((1, 3), "int32")))
    assert np.isfinite(empty).all()


def test_lora_freezes_the_backbone_but_the_head_trains(tiny_preset):
    backbone = backbones.load_backbone(str(tiny_preset))
    model = model_lib.SiameseModel(backbone, lora_rank=4)
    names = [w.path for w in model.trainable_weights]
    assert any("lora" in n for n in names) and any("logits" in n for n in names)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) < model.count_params() / 4


def _swapped(x):
    return {k: v[:, ::-1] for k, v in x.items()}


def test_symmetric_head_mirrors_exactly_when_sides_swap(tiny):
    backbone, packer = tiny
    model = model_lib.SiameseModel(backbone, dropout=0.0, head="symmetric")
    x = _batch(packer, ["five", "it is four", "no idea", "4"])
    direct = model.predict(x, verbose=0)
    swapped = model.predict(_swapped(x), verbose=0)
    np.testing.assert_allclose(swapped, direct[:, [1, 0, 2]], atol=1e-6)
    assert not np.allclose(direct[:, 0], direct[:, 1])  # not trivially uniform


def test_swap_tta_makes_any_head_mirror_exactly(tiny):
    from jaxpref.serve import predict

    backbone, packer = tiny
    model = model_lib.SiameseModel(backbone, dropout=0.0, head="concat")
    texts = {
        "context_a": np.asarray(["q1", "q2"], dtype=object),
        "response_a": np.asarray(["an answer", "yes"], dtype=object),
        "context_b": np.asarray(["q1", "q2"], dtype=object),
        "response_b": np.asarray(["another answer entirely", "no"], dtype=object),
    }
    rows = FeaturizedRows(packer, tokenize(texts, packer, progress=False))
    plan = batching.plan_batches(rows.tokens.row_lengths(), 2, (24,))
    plain = predict.predict_rows(model, rows, plan)
    plain_swapped = predict.predict_rows(model, rows.swapped(), plan)
    assert not np.allclose(plain_swapped, plain[:, [1, 0, 2]], atol=1e-4)  # the head is not
    tta = predict.predict_rows(model, rows, plan, tta=True)
    tta_swapped = predict.predict_rows(model, rows.swapped(), plan, tta=True)
    np.testing.assert_allclose(tta_swapped, tta[:, [1, 0, 2]], atol=1e-9)


def test_predict_rows_gives_each_row_its_prediction_and_drops_the_filler_copies(tiny):
    """3 rows in batches of 2: the last batch holds one filler copy, which no row receives."""
    from jaxpref.serve import predict

    backbone, packer = tiny
    model = model_lib.SiameseModel(backbone, dropout=0.0, head="concat")
    responses = ["five", "it is four at length, as anyone can check", "no idea"]
    rows = FeaturizedRows(packer, tokenize(_texts(responses), packer, progress=False))
    plan = batching.plan_batches(rows.tokens.row_lengths(), 2, (24,))
    assert [len(b.rows) for b in plan] == [2, 2] and (plan[-1].weights == 0).sum() == 1
    probs = predict.predict_rows(model, rows, plan)
    expected = model.predict(_batch(packer, responses), verbose=0)
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    schedule = optimization.learning_rate_schedule(1e-3, "cosine", total_steps=100)
    rates = [float(schedule(step)) for step in (0, 5, 10, 55, 100)]
    assert rates[0] == pytest.approx(0.0, abs=1e-9)
    assert rates[1] == pytest.approx(5e-4, rel=1e-3)
    assert rates[2] == pytest.approx(1e-3, rel=1e-3)
    assert rates[3] == pytest.approx(5e-4, rel=1e-2)
    assert rates[4] == pytest.approx(0.0, abs=1e-9)
    assert optimization.learning_rate_schedule(1e-3) == 1e-3
    with pytest.raises(ValueError):
        optimization.learning_rate_schedule(1e-3, "linear")


def test_side_features_are_standardized_with_training_statistics():
    layer = model_lib.Standardize(dtype="float32")
    features = np.random.default_rng(0).normal(7.0, 3.0, size=(50, 2, 4)).astype(np.float32)
    layer.build(features.shape)
    layer.fit(features)
    out = np.asarray(layer(features)).reshape(-1, 4)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=0), 1.0, atol=1e-4)
    assert not layer.trainable_weights and len(layer.non_trainable_weights) == 2


def test_factory_builds_from_config_and_the_config_round_trips(tiny_preset):
    cfg = ModelConfig(preset=str(tiny_preset), lora_rank=2, dropout=0.2, precision="float32")
    model = model_lib.build_model(cfg, sequence_length=64)
    assert isinstance(model, model_lib.SiameseModel)
    assert (model.head, model.lora_rank, model.side_features) == ("symmetric", 2, 10)
    config = model.get_config()
    rebuilt = model_lib.SiameseModel.from_config(config)
    assert rebuilt.get_config() == config
    assert [w.path for w in rebuilt.weights] == [w.path for w in model.weights]
    shapes = [w.shape for w in model.trainable_weights]
    assert [w.shape for w in rebuilt.trainable_weights] == shapes
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert type(again) is model_lib.SiameseModel and again.get_config() == config


def test_factory_refuses_an_unknown_head(tiny_preset):
    backbone = backbones.load_backbone(str(tiny_preset))
    with pytest.raises(ValueError, match="head must be one of"):
        model_lib.SiameseModel(backbone, head="bilinear")


def test_efficient_attention_is_a_setting_of_the_factory(tiny_preset):
    from jaxpref.models import deberta_attention

    models = {}
    for attention in ("keras_hub", "efficient", "efficient_dropout", None):
        keras.utils.set_random_seed(0)
        chosen = {"attention": attention} if attention else {}  # None: the default
        cfg = ModelConfig(
            preset=str(tiny_preset), dropout=0.0, precision="float32", side_features=False,
            **chosen,
        )  # fmt: skip
        models[attention] = model_lib.build_model(cfg, 24)
    # The default keeps keras-hub's attention-probability dropout (the seed model's training).
    for attention, dropout in (("efficient", False), ("efficient_dropout", True), (None, True)):
        layers = [e._self_attention_layer for e in models[attention].backbone.transformer_layers]
        assert all(isinstance(a, deberta_attention.EfficientDisentangledSelfAttention)
                   for a in layers)  # fmt: skip
        assert all(a.attention_dropout == dropout for a in layers)
    packer = models["keras_hub"].build_packer(str(tiny_preset), 24)
    x = _batch(packer, ["five", "it is four", "no idea", "4"])
    for attention in ("efficient", "efficient_dropout"):
        np.testing.assert_allclose(
            models[attention].predict(x, verbose=0), models["keras_hub"].predict(x, verbose=0),
            atol=1e-5,
        )  # fmt: skip
