"""Reward models (--objective reward): one scalar per side, ties through Davidson's model.

The layout is the Hugging Face reward model's (first token for encoders, last real token for
decoders, then one linear unit `reward`); the tie model's closed form, exact swap symmetry,
reward centering, the options' refusals, a 2 x 2 mesh, and one run end to end (it learns,
and the bundle predicts as the run).
"""

import json

import jax
import keras
import keras_hub
import numpy as np
import pandas as pd
import pytest
from conftest import REWARD_RUNS

from jaxpref.config import ConfigError, ModelConfig, TrainConfig
from jaxpref.data import arena
from jaxpref.inputs import batching, feeding, packers
from jaxpref.inputs.featurize import featurize
from jaxpref.models import preference as model_lib
from jaxpref.models import presets
from jaxpref.models.objective import MarginCrossentropy, compile_model, with_margins
from jaxpref.parallel import sharding
from jaxpref.serve import predict
from jaxpref.training import trainer

LENGTH = 32
DECODER_LENGTH = 64


def reward_model(preset, **options):
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(preset=str(preset), objective="reward", precision="float32", **options)
    return model_lib.build_model(cfg, LENGTH)


def batch_of(model, preset, frame, length=LENGTH) -> dict[str, np.ndarray]:
    """The inputs of `frame`'s rows as one batch padded to `length`."""
    featurized = featurize(frame, model.build_packer(str(preset), length), progress=False)
    plan = [batching.Batch(np.arange(len(frame)), np.ones(len(frame), np.float32), length)]
    (x,) = next(iter(feeding.make_dataset(featurized, [plan])))
    return {k: np.asarray(v) for k, v in x.items()}


def rows(n: int = 4) -> pd.DataFrame:
    return arena.read_arena_csv(arena.DEFAULT_TRAIN_CSV, labelled=True).head(n)


def short_rows() -> pd.DataFrame:
    """Four rows whose sides have different lengths, all well under `DECODER_LENGTH`."""
    answers = ["four", "it is four, of course", "no idea at all, sorry", "4", "five", "yes"]
    return pd.DataFrame({
        "prompt": [["two plus two?"], ["hi"], ["what is the sum of two and two"], ["sum"]],
        "response_a": [[answers[i]] for i in range(4)],
        "response_b": [[answers[-1 - i]] for i in range(4)],
    })  # fmt: skip


def davidson(r_a, r_b, theta):
    """Davidson's P(A), P(B), P(tie) in closed form."""
    a, b, tie = np.exp(r_a), np.exp(r_b), np.exp(theta) * np.exp((r_a + r_b) / 2)
    return np.stack([a, b, tie], axis=-1) / (a + b + tie)[..., None]


@pytest.fixture(scope="module")
def encoder_model(tiny_preset):
    model = reward_model(tiny_preset)
    return model, batch_of(model, tiny_preset, rows())


def test_davidson_probabilities_sum_to_one_and_equal_the_closed_form():
    layer = model_lib.DavidsonTies(dtype="float32")
    rewards = np.array([[0.0, 0.0], [2.0, -1.0], [-3.0, 0.5], [40.0, 39.0]], "float32")
    layer.build(rewards.shape)
    for theta in (0.0, 0.7, -2.0):
        layer.log_nu.assign(theta)
        probs = np.asarray(keras.ops.softmax(layer(rewards)))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(probs, davidson(rewards[:, 0], rewards[:, 1], theta), rtol=1e-5)
        nu = np.exp(theta)
        np.testing.assert_allclose(probs[0], [1 / (2 + nu), 1 / (2 + nu), nu / (2 + nu)], rtol=1e-6)


def test_token_pool_reads_the_first_or_the_last_real_token():
    hidden = np.arange(2 * 5 * 3, dtype="float32").reshape(2, 5, 3)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    first = model_lib.TokenPool("first")(hidden, mask)
    np.testing.assert_array_equal(np.asarray(first), hidden[:, 0])
    last = model_lib.TokenPool("last")(hidden, mask)
    np.testing.assert_array_equal(np.asarray(last), [hidden[0, 2], hidden[1, 4]])
    # The rightmost real position, as Hugging Face finds it, whatever lies before it.
    gap = model_lib.TokenPool("last")(hidden, np.array([[1, 0, 1, 0, 0], [0, 0, 0, 1, 0]]))
    np.testing.assert_array_equal(np.asarray(gap), [hidden[0, 2], hidden[1, 3]])


def test_encoder_reward_is_one_linear_unit_of_the_first_token(encoder_model):
    model, x = encoder_model
    layer = model.get_layer("reward")
    assert layer.use_bias and layer.kernel.shape == (model.backbone.hidden_dim, 1)
    assert model.pooling == "first" and not model.side_features
    rewards = model.reward_scorer().predict(x, verbose=0)
    kernel, bias = (np.asarray(w) for w in layer.weights)
    for side in (0, 1):
        hidden = model.backbone({k: v[:, side] for k, v in x.items()})
        expected = np.asarray(hidden)[:, 0] @ kernel + bias
        np.testing.assert_allclose(rewards[:, side], expected[:, 0], atol=1e-5)
    # The model's probabilities are Davidson's of these rewards and its one tie parameter.
    probs = model.predict(x, verbose=0)
    theta = float(model.get_layer("logits").log_nu.numpy())
    np.testing.assert_allclose(probs, davidson(rewards[:, 0], rewards[:, 1], theta), atol=1e-6)


def test_swapping_the_sides_swaps_the_rewards_and_their_probabilities(encoder_model):
    model, x = encoder_model
    swapped = {k: v[:, ::-1] for k, v in x.items()}
    direct = model.predict(x, verbose=0)
    np.testing.assert_allclose(model.predict(swapped, verbose=0), direct[:, [1, 0, 2]], atol=1e-7)
    scorer = model.reward_scorer()
    rewards = scorer.predict(x, verbose=0)
    np.testing.assert_allclose(scorer.predict(swapped, verbose=0), rewards[:, ::-1], atol=1e-7)
    assert np.abs(rewards[:, 0] - rewards[:, 1]).max() > 1e-4  # not trivially equal


def test_reward_model_config_round_trips(tiny_preset):
    model = reward_model(tiny_preset, lora_rank=2, center_rewards=0.01)
    config = model.get_config()
    assert {k: config[k] for k in ("objective", "pooling", "reward_bias", "center_rewards")} == {
        "objective": "reward", "pooling": "first", "reward_bias": True, "center_rewards": 0.01,
    }  # fmt: skip
    rebuilt = model_lib.SiameseModel.from_config(config)
    assert rebuilt.get_config() == config
    assert [w.path for w in rebuilt.weights] == [w.path for w in model.weights]
    trained = {w.path for w in model.trainable_weights}
    assert {"reward/kernel", "reward/bias", "logits/log_nu"} <= trained


def test_options_a_reward_model_cannot_take_are_refused(tiny_preset, decoder_presets):
    preset = str(tiny_preset)
    cases = [
        (dict(architecture="cross"), "--objective reward scores each side on its own"),
        (dict(side_features=True), "--side-features does not apply to --objective reward"),
    ]
    for options, message in cases:
        cfg = ModelConfig(preset=preset, objective="reward", precision="float32", **options)
        with pytest.raises(ConfigError, match=message):
            model_lib.build_model(cfg, LENGTH)
    with pytest.raises(ConfigError, match="--center-rewards applies to --objective reward"):
        model_lib.build_model(
            ModelConfig(preset=preset, center_rewards=0.1, precision="float32"), LENGTH
        )
    decoder = ModelConfig(preset=str(decoder_presets["llama3"]), precision="float32")
    with pytest.raises(ConfigError, match="use --architecture cross, or --objective reward"):
        model_lib.build_model(decoder, DECODER_LENGTH)
    backbone = model_lib.build_model(
        ModelConfig(preset=preset, precision="float32"), LENGTH
    ).backbone
    with pytest.raises(ValueError, match="no reward per side"):
        model_lib.CrossEncoderModel(backbone, objective="reward")


def test_centering_adds_its_coefficient_times_the_mean_squared_reward_sum(decoder_presets):
    """The training loss (a step at learning rate 0; the tiny decoders have no dropout) is the
    cross-entropy of the predictions plus center x mean((rA + rB)^2); validation's is not."""
    preset = decoder_presets["llama3"]
    center = 0.25
    model = reward_model(preset, center_rewards=center)
    x = batch_of(model, preset, rows(), DECODER_LENGTH)
    targets = np.eye(3, dtype="float32")[[0, 1, 2, 0]]
    compile_model(model, learning_rate=0.0, label_smoothing=0.0)
    rewards = model.reward_scorer().predict(x, verbose=0)
    probs = model.predict(x, verbose=0)
    cross_entropy = -np.mean(np.log((probs * targets).sum(axis=1)))
    penalty = center * np.mean((rewards[:, 0] + rewards[:, 1]) ** 2)
    assert penalty > 1e-3
    trained = model.train_on_batch(x, targets, return_dict=True)
    np.testing.assert_allclose(trained["loss"], cross_entropy + penalty, rtol=1e-5)
    evaluated = model.evaluate(x, targets, verbose=0, return_dict=True)
    np.testing.assert_allclose(evaluated["loss"], cross_entropy, rtol=1e-5)


def margin_loss(probs, classes, margins, smoothing=0.0):
    """`MarginCrossentropy` per row in closed form: smoothed targets against the softmax of the
    log-probabilities with the winner's (A or B, whichever the targets favour) lowered by the
    margin."""
    winner = np.eye(3)[classes[:, :2].argmax(1)]
    shifted = np.log(probs) - margins[:, None] * winner
    log_softmax = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return -((classes * (1 - smoothing) + smoothing / 3) * log_softmax).sum(1)


def test_margin_loss_asks_the_winner_to_win_by_its_margin():
    probs = davidson(np.array([0.3, -1.0, 2.0, 0.0, 1.0, -0.5]), np.array([0.1, 0.5, -1.0, 0.0,
                     1.2, 0.4]), 0.2).astype("float32")  # fmt: skip
    labels = np.array([0, 1, 2, 1, 0, 1])
    classes = np.eye(3, dtype="float32")[labels]
    weights = np.array([1, 1, 1, 1, 0.5, 0], "float32")
    options = {"label_smoothing": 0.02, "reduction": "mean_with_sample_weight"}
    plain = keras.losses.CategoricalCrossentropy(**options)(classes, probs, weights)
    margin = MarginCrossentropy(**options)
    zero = float(margin(with_margins(labels, np.zeros(6)), probs, weights))
    np.testing.assert_allclose(zero, float(plain), atol=1e-6)
    margins = np.array([1.5, 0.5, 0.0, 3.0, 0.2, 9.0])  # the tie (row 2) has none
    per_row = MarginCrossentropy(0.02, reduction=None)(with_margins(labels, margins), probs)
    np.testing.assert_allclose(per_row, margin_loss(probs, classes, margins, 0.02), atol=1e-6)
    unshifted = MarginCrossentropy(0.02, reduction=None)(with_margins(labels, 0 * margins), probs)
    assert (np.asarray(per_row - unshifted)[[0, 1, 3, 4, 5]] > 0.1).all()


def test_without_ties_the_margin_loss_is_trls():
    """TRL's reward loss -log sigmoid(r_chosen - r_rejected - margin), the chosen on A or B."""
    r_a, r_b = np.array([0.5, -1.0, 2.0, 0.0, 1.0]), np.array([0.0, 1.5, -1.0, 0.0, 3.0])
    probs = davidson(r_a, r_b, -40.0).astype("float32")  # P(tie) ~ 1e-17
    labels, margins = np.array([0, 1, 0, 1, 0]), np.array([0.0, 1.0, 2.5, 0.7, 3.0])
    chosen, rejected = np.where(labels == 0, r_a, r_b), np.where(labels == 0, r_b, r_a)
    trl = np.log1p(np.exp(-(chosen - rejected - margins)))
    loss = MarginCrossentropy(reduction=None)(with_margins(labels, margins), probs)
    np.testing.assert_allclose(loss, trl, atol=1e-5)


def test_a_reward_model_fits_margin_targets_fed_swapped(tiny_preset):
    """Compiled for margins: the loss of a batch (rows 1 and 3 swapped, their targets
    mirrored) is the closed form of the model's probabilities, log_loss reads the classes
    alone, and a training step's loss grows with the margin."""
    model = reward_model(tiny_preset)
    compile_model(model, learning_rate=0.0, label_smoothing=0.0, margins=True)
    featurized = featurize(rows(), model.build_packer(str(tiny_preset), LENGTH), progress=False)
    swap = np.array([False, True, False, True])
    plan = [batching.Batch(np.arange(4), np.ones(4, np.float32), LENGTH, swap)]
    labels = np.array([0, 1, 1, 0])
    fed = np.eye(3)[np.where(swap, 1 - labels, labels)]
    losses = {}
    for margin in (0.0, 2.0):
        targets = with_margins(labels, np.full(4, margin))
        batch = next(iter(feeding.make_dataset(featurized, [plan], targets)))
        x = {k: np.asarray(v) for k, v in batch[0].items()}
        y, weights = np.asarray(batch[1]), np.asarray(batch[2])
        probs = model.predict(x, verbose=0)
        evaluated = model.evaluate(x, y, sample_weight=weights, verbose=0, return_dict=True)
        expected = margin_loss(probs, fed, np.full(4, margin)).mean()
        np.testing.assert_allclose(evaluated["loss"], expected, rtol=1e-5)
        log_loss = -np.log((probs * fed).sum(1)).mean()
        np.testing.assert_allclose(evaluated["log_loss"], log_loss, rtol=1e-5)
        losses[margin] = model.train_on_batch(x, y, sample_weight=weights, return_dict=True)
    assert losses[2.0]["loss"] > losses[0.0]["loss"] + 1.0, losses


def test_margins_train_the_reward_objective_only(caplog):
    pairs = pd.DataFrame({"id": ["p-1", "p-2"], "margin": [1.5, 0.0]})
    frames = [("train.csv", pd.DataFrame({"id": ["1"]})), ("prefs.jsonl", pairs)]
    with caplog.at_level("WARNING", logger="jaxpref"):
        assert trainer.training_margins(TrainConfig(), frames) is None
    assert "prefs.jsonl: its rows have a margin" in caplog.text
    assert "--objective classes does not use it" in caplog.text
    reward = TrainConfig().replace(objective="reward")
    np.testing.assert_array_equal(trainer.training_margins(reward, frames), [0.0, 1.5, 0.0])
    assert trainer.training_margins(reward, frames[:1]) is None
    with pytest.raises(ConfigError, match="does not combine with --soft-labels"):
        trainer.training_margins(reward.replace(soft_labels="teacher.csv"), frames)


@pytest.mark.parametrize("name", ["gemma", "llama3", "qwen2"])
def test_decoder_reward_is_the_last_real_token_without_a_bias(decoder_presets, name):
    """Rows of unequal lengths in one batch, and the same batch padded further: each side's
    reward is the linear unit of its own last real token, and padding changes nothing."""
    preset = decoder_presets[name]
    model = reward_model(preset)
    assert model.pooling == "last" and not model.get_layer("reward").use_bias
    x = batch_of(model, preset, short_rows(), DECODER_LENGTH)
    assert set(x) == {"token_ids", "padding_mask"}
    lengths = x["padding_mask"].sum(axis=-1)
    assert len(set(lengths.ravel())) > 1 and lengths.max() < DECODER_LENGTH
    scorer = model.reward_scorer()
    rewards = scorer.predict(x, verbose=0)
    (kernel,) = (np.asarray(w) for w in model.get_layer("reward").weights)
    for side in (0, 1):
        hidden = np.asarray(model.backbone({k: v[:, side] for k, v in x.items()}))
        last = hidden[np.arange(len(hidden)), lengths[:, side] - 1]
        np.testing.assert_allclose(rewards[:, side], (last @ kernel)[:, 0], atol=1e-5)
    longer = {k: np.pad(v, [(0, 0), (0, 0), (0, 16)]) for k, v in x.items()}
    np.testing.assert_allclose(scorer.predict(longer, verbose=0), rewards, atol=1e-5)


def test_decoder_sides_are_packed_right_padded_ending_with_the_response(decoder_presets):
    tokenizer = keras_hub.models.Tokenizer.from_preset(str(decoder_presets["llama3"]))
    packer = packers.DecoderPairPacker(tokenizer, DECODER_LENGTH, ("token_ids", "padding_mask"))
    texts = {"context_a": ["a question"], "response_a": ["an answer"],
             "context_b": ["a question " * 40], "response_b": ["a long answer " * 40]}  # fmt: skip
    tokens = packer.pack_rows({k: np.array(v, object) for k, v in texts.items()}, progress=False)
    ids, parts, lengths = tokens.token_ids[0], tokens.part_ids[0], tokens.lengths[0]
    piece = lambda text: np.asarray(tokenizer(text)).tolist()  # noqa: E731
    expected = [tokenizer.start_token_id, *piece("a question"), *piece(packers.RESPONSE_SEPARATOR),
                *piece("an answer")]  # fmt: skip
    assert lengths[0] == len(expected) and ids[0, : lengths[0]].tolist() == expected
    assert (ids[0, lengths[0] :] == packer.pad_id).all() and (parts[0, lengths[0] :] == 0).all()
    assert (parts[0, : lengths[0]] > 0).all()
    # Truncated to the length: the context keeps its end, the response its start.
    response = piece("a long answer " * 40)
    assert lengths[1] == DECODER_LENGTH and parts[1, -1] == packers.FIRST
    kept = (parts[1] == packers.FIRST).sum()
    assert ids[1, -kept:].tolist() == response[:kept] and kept >= DECODER_LENGTH // 3
    with pytest.raises(ConfigError, match="use --sequence-length"):
        packers.DecoderPairPacker(tokenizer, 8, ())


def test_decoder_reward_model_on_a_2x2_mesh_predicts_as_on_one_device(decoder_presets):
    preset = decoder_presets["qwen2"]
    reference = reward_model(preset, lora_rank=2)
    weights = [np.random.default_rng(i).normal(0, 0.05, w.shape).astype(w.dtype)
               for i, w in enumerate(reference.weights)]  # fmt: skip
    reference.set_weights(weights)
    packer = reference.build_packer(str(preset), DECODER_LENGTH)
    featurized = featurize(rows(), packer, progress=False)
    plan = batching.plan_batches(featurized.tokens.row_lengths(), 4, (DECODER_LENGTH,))
    expected = predict.predict_rows(reference, featurized, plan)
    config = presets.probe(str(preset)).backbone_config
    with sharding.model_parallel(jax.devices(), 2, config).scope():
        model = reward_model(preset, lora_rank=2)
        model.set_weights(weights)
        sharded = predict.predict_rows(model, featurized, plan)
    np.testing.assert_allclose(sharded, expected, atol=1e-5)
    specs = {w.path: tuple(w.value.sharding.spec) for w in model.weights}
    assert not any("model" in specs[p] for p in ("reward/kernel", "logits/log_nu"))
    backbone = {w.path for w in model.backbone.weights}
    kernels = [s for p, s in specs.items() if p in backbone and p.endswith("/kernel")]
    assert kernels and all("model" in s for s in kernels)  # the backbone's are sharded


# Per preset: the transformers class its export loads as.
HF_CLASSES = {
    "deberta": "DebertaV2ForSequenceClassification",
    "llama3": "LlamaForSequenceClassification",
}


def read_submission(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str}).set_index("id").sort_index()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REWARD_RUNS))
def test_reward_model_learns_and_its_bundle_predicts_as_the_run(reward_runs, name):
    root = reward_runs(name)
    run_dir = root / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    history = pd.read_csv(run_dir / "history.csv")
    print(f"{name}: val log loss {history['val_log_loss'].round(4).tolist()}, "
          f"prior {summary['prior_val_log_loss']:.4f}")  # fmt: skip
    assert summary["prior_val_log_loss"] > 1.09
    assert summary["best_val_log_loss"] < summary["prior_val_log_loss"] - 0.2, summary
    config = json.loads((run_dir / "config.json").read_text())["model"]
    assert config["objective"] == "reward"
    during = read_submission(run_dir / "valid_predictions.csv")
    from_run = read_submission(root / "run.csv")
    np.testing.assert_allclose(from_run.loc[during.index], during, atol=1e-5)
    np.testing.assert_allclose(read_submission(root / "bundle.csv"), from_run, atol=1e-5)
    hf_config = json.loads((root / "hf" / "config.json").read_text())
    assert hf_config["architectures"] == [HF_CLASSES[name]]
    assert hf_config["id2label"] == {"0": "reward"}
