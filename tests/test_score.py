"""`jaxpref score` and `Predictor.rewards`/`score`: a reward model's rewards of pairs and of
single responses. A response packed on its own (two a row) scores exactly as it does as a side
of a pair; the rewards are the model's (its probabilities are Davidson's of them); files come
back one row per row, chosen sides named; a 3-class model is refused in one line."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REWARD_RUNS
from test_responses import CONVERSATION

import jaxpref
from jaxpref import cli
from jaxpref.config import ConfigError, TrainConfig
from jaxpref.data import arena, sources
from jaxpref.serve import predict

LENGTH = 64


@pytest.fixture(scope="module")
def reward_bundle(tiny_preset, tmp_path_factory) -> Path:
    """A bundle of an untrained reward model on the tiny preset: random weights give every text
    its own reward, which is all that exactness needs (no training)."""
    import keras

    from jaxpref.models import preference as model_lib
    from jaxpref.serve import bundle

    keras.utils.set_random_seed(0)
    cfg = TrainConfig().replace(
        preset=str(tiny_preset), objective="reward", precision="float32",
        sequence_length=LENGTH, batch_size=8, lora_rank=0,
    )  # fmt: skip
    model = model_lib.build_model(cfg.model, LENGTH)
    packer = model.build_packer(str(tiny_preset), LENGTH)
    out = tmp_path_factory.mktemp("reward_bundle") / "bundle"
    path = bundle.write_bundle(model, packer, cfg, out)
    keras.backend.clear_session()
    return path


@pytest.fixture(scope="module")
def predictor(reward_bundle):
    import keras

    try:
        yield jaxpref.load(reward_bundle, devices="cpu")
    finally:
        keras.distribution.set_distribution(None)
        keras.backend.clear_session()


def some_rows() -> pd.DataFrame:
    """Seven arena rows: three multi-turn conversations and four single turns."""
    frame = arena.read_arena_csv(arena.DEFAULT_TRAIN_CSV, labelled=False)
    turns = frame["prompt"].map(len)
    rows = [*frame.index[turns > 1][:3], *frame.index[turns == 1][:4]]
    return frame.loc[rows].reset_index(drop=True)


def test_a_response_scores_as_it_does_as_a_side_of_a_pair(predictor):
    """13 responses (an odd count, packed two a row) score as sides A and B of their pairs."""
    frame = some_rows()
    rewards = predictor.rewards(frame)
    assert rewards.shape == (7, 2) and rewards.dtype == np.float64
    prompts = [*frame["prompt"], *frame["prompt"][:6]]
    responses = [*frame["response_a"], *frame["response_b"][:6]]
    scores = predictor.score(prompts, responses)
    expected = np.concatenate([rewards[:, 0], rewards[:6, 1]])
    assert scores.shape == (13,)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert np.ptp(expected) > 100 * 1e-5  # texts differ in reward: the comparison can fail
    question = "What is the capital of France?"
    one = predictor.score(question, "Paris.")
    pair = predictor.rewards(arena.pairs_frame(question, "Paris.", "Lyon.", "pairs"))
    np.testing.assert_allclose(one, pair[:, 0], atol=1e-5)


def test_the_probabilities_are_davidsons_of_the_rewards(predictor):
    """P(A) / P(B) = exp(rA - rB) (a bundle without calibration: T = 1)."""
    frame = some_rows()
    rewards = predictor.rewards(frame)
    probs = predictor.predict(frame)[list(arena.LABEL_COLUMNS)].to_numpy()
    np.testing.assert_allclose(
        np.log(probs[:, 0] / probs[:, 1]), rewards[:, 0] - rewards[:, 1], atol=1e-5
    )


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_score_writes_every_pair_and_names_the_chosen_side(predictor, reward_bundle, tmp_path):
    records = [
        {"prompt": f"Question {i}?", "chosen": f"A good answer {i}.", "rejected": f"No {i}."}
        for i in range(9)
    ]
    pairs = write_jsonl(tmp_path / "prefs.jsonl", records)
    out = tmp_path / "out" / "rewards.csv"
    argv = ["score", "--devices", "cpu", "--run-dir", str(reward_bundle), "--pairs", str(pairs)]
    assert cli.main([*argv, "--output", str(out)]) == 0
    table = pd.read_csv(out, dtype={"id": str})
    frame = sources.read_rows(pairs)
    assert table.columns.tolist() == ["id", "reward_a", "reward_b", "chosen"]
    assert table["id"].tolist() == frame["id"].tolist() == [f"prefs-{i}" for i in range(1, 10)]
    assert table["chosen"].tolist() == ["a" if label == 0 else "b" for label in frame["label"]]
    assert set(table["chosen"]) == {"a", "b"}  # the fixed draw puts the chosen one on both sides
    rewards = table[["reward_a", "reward_b"]].to_numpy()
    np.testing.assert_allclose(rewards, predictor.rewards(frame), atol=1e-6)
    # The chosen response's reward, whichever side it is on: its reward on its own.
    chosen = np.where(table["chosen"] == "a", rewards[:, 0], rewards[:, 1])
    alone = predictor.score([r["prompt"] for r in records], [r["chosen"] for r in records])
    np.testing.assert_allclose(chosen, alone, atol=1e-5)


def test_score_writes_every_response_of_a_file(predictor, reward_bundle, tmp_path):
    csv_path = tmp_path / "candidates.csv"
    pd.DataFrame({
        "id": ["q1-a", "q1-b", "q2-a"],
        "prompt": ["Name a prime.", "Name a prime.", "Say hi,\nplease."],
        "response": ["7", "9, I think", "Hi!"],
    }).to_csv(csv_path, index=False)  # fmt: skip
    out = tmp_path / "rewards.csv"
    argv = ["score", "--devices", "cpu", "--run-dir", str(reward_bundle), "--responses"]
    assert cli.main([*argv, str(csv_path), "--output", str(out)]) == 0
    table = pd.read_csv(out, dtype={"id": str})
    assert table.columns.tolist() == ["id", "reward"]
    assert table["id"].tolist() == ["q1-a", "q1-b", "q2-a"]
    expected = predictor.score(
        ["Name a prime.", "Name a prime.", "Say hi,\nplease."], ["7", "9, I think", "Hi!"]
    )
    np.testing.assert_allclose(table["reward"], expected, atol=1e-6)


def test_conversational_records_score_as_their_turns(predictor, tmp_path):
    """System and user messages are the prompt's turns, the earlier replies that side's own."""
    records = [
        {"prompt": CONVERSATION, "response": [{"role": "assistant", "content": "No."}]},
        {"prompt": "Name a prime.", "response": "7"},
    ]
    frame = sources.read_responses(write_jsonl(tmp_path / "chats.jsonl", records))
    assert frame["id"].tolist() == ["chats-1", "chats-2"]
    expected = predictor.score(
        [["Be brief.\n\nHi!", "A joke?"], "Name a prime."], [["Hello.", "No."], "7"]
    )
    np.testing.assert_allclose(predictor.loaded.score(frame), expected, atol=1e-6)


def test_a_three_class_model_is_refused_in_one_line():
    """Before any featurizing: the message names the run and says what to train."""
    classes = predict.LoadedRun(None, None, TrainConfig(), 8, 1.0, "runs/deberta")
    message = (
        "runs/deberta: trained with --objective classes, which compares two responses but gives "
        "neither a reward; train with --objective reward to score responses"
    )
    with pytest.raises(ConfigError, match=message):
        classes.rewards(some_rows())
    with pytest.raises(ConfigError, match="train with --objective reward"):
        classes.score(pd.DataFrame({"prompt": [["Hi"]], "response": [["Hello"]]}))


@pytest.mark.slow
def test_a_trained_reward_model_ranks_pairs_as_it_predicts_them(reward_runs, tmp_path):
    """The trained run's rewards give infer's calibrated probabilities, P(A) / P(B) =
    exp((rA - rB) / T), rank the winner of the learnable rows higher, and are what its
    transformers export computes (its files read back: the encoder converted to keras-hub, the
    identity pooler, the classifier)."""
    import keras

    root = reward_runs("deberta")
    frame = sources.read_rows(root / "rows.csv")
    try:
        predictor = jaxpref.load(root / "run", devices="cpu")
        rewards = predictor.rewards(frame)
        exported = exported_rewards(root / "hf", predictor.loaded.packer, frame.head(16), tmp_path)
    finally:
        keras.distribution.set_distribution(None)
        keras.backend.clear_session()
    np.testing.assert_allclose(exported, rewards[:16], atol=1e-4)
    temperature = json.loads((root / "run" / "calibration.json").read_text())["temperature"]
    inferred = pd.read_csv(root / "run.csv", dtype={"id": str}).set_index("id").loc[frame["id"]]
    log_ratio = np.log(inferred["winner_model_a"] / inferred["winner_model_b"]).to_numpy()
    np.testing.assert_allclose(log_ratio, (rewards[:, 0] - rewards[:, 1]) / temperature, atol=1e-4)
    decided = frame["label"].to_numpy() < 2
    winner_higher = (rewards[:, 0] > rewards[:, 1]) == (frame["label"].to_numpy() == 0)
    print(f"pairwise accuracy {winner_higher[decided].mean():.3f} ({REWARD_RUNS['deberta']})")
    assert winner_higher[decided].mean() > 0.8


def exported_rewards(hf_dir, packer, frame: pd.DataFrame, tmp_path) -> np.ndarray:
    """(n, 2) rewards of `frame`'s sides computed from a DeBERTa export's files alone, as
    DebertaV2ForSequenceClassification does: classifier(pooler(h[:, 0]))."""
    import keras_hub

    from jaxpref.inputs.featurize import featurize
    from jaxpref.models import hf_deberta

    weights = hf_deberta.read_safetensors(hf_dir / "model.safetensors")
    backbone = keras_hub.models.Backbone.from_preset(str(hf_deberta.convert(hf_dir, tmp_path)))
    tokens = featurize(frame, packer, progress=False).tokens
    pooler = weights["pooler.dense.weight"], weights["pooler.dense.bias"]
    classifier = weights["classifier.weight"], weights["classifier.bias"]
    sides = []
    for side in (0, 1):
        ids = tokens.token_ids[:, side]
        inputs = {
            "token_ids": ids,
            "padding_mask": (np.arange(ids.shape[1]) < tokens.lengths[:, side, None]).astype(int),
        }
        first = np.asarray(backbone(inputs))[:, 0].astype(np.float64)
        pooled = first @ pooler[0].T + pooler[1]  # "linear" activation
        sides.append((pooled @ classifier[0].T + classifier[1])[:, 0])
    return np.stack(sides, axis=1)
