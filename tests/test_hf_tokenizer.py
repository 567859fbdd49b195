"""SentencePiece models rebuilt from the tokenizer.json transformers >= 5 saves (no torch).

tests/fixtures/hf_deberta_v3_tf5 is hf_deberta_v3_tiny/spm.model and a tiny DeBERTa-v3 saved by
transformers 5 (make_hf_deberta_tf5_fixture.py): tokenizer.json, no spm.model.
"""

import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
from sentencepiece import sentencepiece_model_pb2

from jaxpref.data.arena import DEFAULT_TRAIN_CSV
from jaxpref.models import hf_deberta, hf_tokenizer, presets
from jaxpref.models.tiny_preset import arena_texts

FIXTURES = Path(__file__).parent / "fixtures"
TF5_DIR = FIXTURES / "hf_deberta_v3_tf5"
ORIGINAL_SPM = FIXTURES / "hf_deberta_v3_tiny" / "spm.model"
PIECE = sentencepiece_model_pb2.ModelProto.SentencePiece
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads((TF5_DIR / "reference.json").read_text())


@pytest.fixture(scope="module")
def converted():
    """The transformers 5 directory through --preset's path: (backbone, tokenizer)."""
    import keras_hub

    assert not (TF5_DIR / "spm.model").exists()
    preset = presets.probe(str(TF5_DIR)).location
    return (
        keras_hub.models.Backbone.from_preset(preset),
        keras_hub.models.Tokenizer.from_preset(preset),
    )


def rebuilt() -> bytes:
    return hf_tokenizer.sentencepiece_model(
        TF5_DIR / "tokenizer.json", hf_deberta.SENTENCEPIECE_ROLES
    )


def parsed(proto: bytes) -> sentencepiece_model_pb2.ModelProto:
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto)
    return model


def test_token_ids_match_transformers_5(converted, reference):
    import keras_hub

    _, tokenizer = converted
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    mismatched = [
        name
        for name, ids in reference["token_ids"].items()
        if [cls_id, *np.asarray(tokenizer(reference["texts"][name])).tolist(), sep_id] != ids
    ]
    tokens = sum(len(ids) for ids in reference["token_ids"].values())
    print(f"{len(reference['token_ids'])} texts, {tokens} tokens, {len(mismatched)} mismatched")
    assert mismatched == [] and len(reference["token_ids"]) >= 50
    pair, texts = reference["pair"], reference["texts"]
    preprocessor = keras_hub.models.DebertaV3TextClassifierPreprocessor(
        tokenizer, sequence_length=len(pair["token_ids"]) + 8
    )
    out = preprocessor(x=([texts[pair["first"]]], [texts[pair["second"]]]))
    ours = np.asarray(out["token_ids"])[0][np.asarray(out["padding_mask"])[0].astype(bool)]
    assert ours.tolist() == pair["token_ids"]


def test_weights_saved_by_transformers_5_give_its_hidden_states(converted, reference):
    backbone, _ = converted
    rows = [reference["token_ids"][name] for name in reference["hidden"]]
    mask = np.array([[i < len(ids) for i in range(max(map(len, rows)))] for ids in rows])
    token_ids = np.zeros(mask.shape, np.int32)
    token_ids[mask] = np.concatenate(rows)
    hidden = np.asarray(backbone({"token_ids": token_ids, "padding_mask": mask.astype(np.int32)}))
    for row, (name, want) in enumerate(reference["hidden"].items()):
        assert np.abs(hidden[row, : len(want)] - np.array(want)).max() < TOLERANCE, name


def test_literal_special_tokens_in_user_text_stay_text(converted):
    _, tokenizer = converted
    text = "[CLS] a [SEP] b [PAD] c [MASK]"
    ids = np.asarray(tokenizer(text)).tolist()
    specials = {tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]")}
    assert not specials & set(ids)
    assert tokenizer.detokenize(ids) == text


def test_rebuilt_model_tokenizes_the_arena_like_the_original_spm_model():
    texts = arena_texts(DEFAULT_TRAIN_CSV)
    original = sentencepiece.SentencePieceProcessor(model_file=str(ORIGINAL_SPM))
    ours = sentencepiece.SentencePieceProcessor(model_proto=rebuilt())
    want, got = original.encode(texts), ours.encode(texts)
    mismatched = sum(a != b for a, b in zip(want, got, strict=True))
    print(f"{len(texts)} texts, {sum(map(len, want))} tokens, {mismatched} mismatched")
    assert mismatched == 0 and len(texts) > 3000


def test_rebuilt_model_holds_the_original_pieces_and_settings():
    original, ours = parsed(ORIGINAL_SPM.read_bytes()), parsed(rebuilt())

    def pieces(model):
        return [(p.piece, p.score, p.type) for p in model.pieces]

    # [MASK] was user-defined in the original; a special token of transformers becomes control
    mask = 4
    assert pieces(original)[mask] == ("[MASK]", 0.0, PIECE.USER_DEFINED)
    assert pieces(ours)[mask] == ("[MASK]", 0.0, PIECE.CONTROL)
    assert pieces(ours)[:mask] + pieces(ours)[mask + 1 :] == (
        pieces(original)[:mask] + pieces(original)[mask + 1 :]
    )
    for field in ("precompiled_charsmap", "add_dummy_prefix", "remove_extra_whitespaces"):
        assert getattr(ours.normalizer_spec, field) == getattr(original.normalizer_spec, field)
    for field in ("model_type", "byte_fallback", "unk_id", "bos_id", "eos_id", "pad_id"):
        assert getattr(ours.trainer_spec, field) == getattr(original.trainer_spec, field), field


def as_tokenizer_json(proto: bytes) -> dict:
    """The tokenizer.json transformers 5 writes for a SentencePiece Unigram model `proto`: its
    pieces and scores, control pieces as special added tokens, user-defined ones only in the
    vocabulary; normalizer and pre-tokenizer those of the fixture (DebertaV2Tokenizer's)."""
    model = parsed(proto)
    saved = json.loads((TF5_DIR / "tokenizer.json").read_text())
    control = [(i, p.piece) for i, p in enumerate(model.pieces) if p.type == PIECE.CONTROL]
    return saved | {
        "added_tokens": [{"id": i, "content": piece, "special": True} for i, piece in control],
        "model": {
            "type": "Unigram",
            "unk_id": model.trainer_spec.unk_id,
            "vocab": [[p.piece, p.score] for p in model.pieces],
            "byte_fallback": model.trainer_spec.byte_fallback,
        },
    }


def test_byte_fallback_and_user_defined_pieces_come_back(tmp_path):
    texts = arena_texts(DEFAULT_TRAIN_CSV, limit=60)
    trained = io.BytesIO()
    sentencepiece.set_random_generator_seed(0)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(line for t in texts for line in t.splitlines() if line.strip()),
        model_writer=trained,
        model_type="unigram",
        vocab_size=500,
        byte_fallback=True,
        user_defined_symbols=["<url>", "[MASK]"],
        control_symbols=["[CLS]", "[SEP]"],
        pad_id=3,
        unk_piece="[UNK]",
        minloglevel=2,
        num_threads=1,
    )
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(as_tokenizer_json(trained.getvalue())))
    original, ours = parsed(trained.getvalue()), parsed(hf_tokenizer.sentencepiece_model(path))
    assert [(p.piece, p.score, p.type) for p in ours.pieces] == [
        (p.piece, p.score, p.type) for p in original.pieces
    ]
    assert sum(p.type == PIECE.BYTE for p in ours.pieces) == 256 and ours.trainer_spec.byte_fallback
    texts = [*texts, "see <url> or [MASK] ☃ 𝔘"]
    want = sentencepiece.SentencePieceProcessor(model_proto=trained.getvalue()).encode(texts)
    got = sentencepiece.SentencePieceProcessor(model_proto=ours.SerializeToString()).encode(texts)
    assert got == want
    byte_ids = {i for i, p in enumerate(ours.pieces) if p.type == PIECE.BYTE}
    assert byte_ids & {i for ids in want for i in ids}  # some characters fell back to bytes
    assert {ours.pieces[i].piece for i in want[-1]} >= {"<url>", "[MASK]"}


TRANSFORMERS_5_24_NORMALIZERS = [
    {"type": "Replace", "pattern": {"Regex": "\\s{2,}|[\\n\\r\\t]"}, "content": " "},
    {"type": "NFC"},
    {"type": "Strip", "strip_left": False, "strip_right": True},
]


def broken(tokenizer: dict, change: str) -> dict:
    """`tokenizer` with one thing wrong, as `change` names it."""
    tokenizer = copy.deepcopy(tokenizer)
    model = tokenizer["model"]
    if change == "bpe":
        model["type"] = "BPE"
    elif change == "no_vocab":
        del model["vocab"]
    elif change == "bad_entry":
        model["vocab"][7] = ["e"]
    elif change == "repeated_piece":
        model["vocab"][8] = ["e", -1.0]
    elif change == "no_unk":
        model["unk_id"] = None
    elif change == "renamed_added_token":
        tokenizer["added_tokens"][1]["content"] = "[BOS]"
    elif change == "lowercase":
        tokenizer["normalizer"]["normalizers"].insert(0, {"type": "Lowercase"})
    elif change == "punctuation":
        tokenizer["pre_tokenizer"]["pretokenizers"].insert(0, {"type": "Punctuation"})
    elif change == "no_metaspace":
        tokenizer["pre_tokenizer"] = None
    elif change == "transformers_5_24":  # what 5.0 to 5.24 write for DeBERTa: no charsmap
        tokenizer["normalizer"]["normalizers"] = TRANSFORMERS_5_24_NORMALIZERS
    return tokenizer


@pytest.mark.parametrize(
    "change, message",
    [
        ("bpe", "model.type is 'BPE'; SentencePiece models are Unigram"),
        ("no_vocab", "model.vocab is missing; expected a list of [piece, score]"),
        ("bad_entry", "model.vocab[7] is ['e']; expected [piece, score]"),
        ("repeated_piece", "model.vocab[8] is ['e', -1.0]; repeats model.vocab[7]"),
        ("no_unk", "model.unk_id is missing; SentencePiece needs an unknown piece"),
        ("renamed_added_token", "added_tokens[1].content is '[BOS]'; model.vocab[1] is '[CLS]'"),
        ("lowercase", "normalizer[0] is 'Lowercase'; SentencePiece does not lowercase"),
        ("punctuation", "pre_tokenizer[0] is 'Punctuation'; SentencePiece does not split"),
        ("no_metaspace", "pre_tokenizer is missing; SentencePiece needs a Metaspace"),
        ("transformers_5_24", "normalizer[1] is 'NFC'; SentencePiece normalizes with the table"),
    ],
)
def test_malformed_tokenizer_json_is_refused_in_one_line(tmp_path, change, message):
    path = tmp_path / "tokenizer.json"
    path.write_text(
        json.dumps(broken(json.loads((TF5_DIR / "tokenizer.json").read_text()), change))
    )
    with pytest.raises(hf_tokenizer.TokenizerFileError) as err:
        hf_tokenizer.sentencepiece_model(path)
    assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value)


def test_a_refused_tokenizer_json_reaches_the_cli_with_the_spm_model_hint(tmp_path):
    src = tmp_path / "fine-tune"
    src.mkdir()
    for name in ("config.json", "model.safetensors"):
        (src / name).write_bytes((TF5_DIR / name).read_bytes())
    (src / "tokenizer.json").write_text('{"model": {"type": "WordPiece"')
    with pytest.raises(presets.PresetError, match=r"tokenizer.json: unreadable JSON \(") as err:
        _ = presets.probe(str(src)).location  # converting the directory reads its tokenizer
    assert "\n" not in str(err.value)
    saved = json.loads((TF5_DIR / "tokenizer.json").read_text())
    (src / "tokenizer.json").write_text(json.dumps(broken(saved, "transformers_5_24")))
    with pytest.raises(presets.PresetError) as err:
        _ = presets.probe(str(src)).location  # converting the directory reads its tokenizer
    assert str(err.value).startswith(f"{src / 'tokenizer.json'}: normalizer[1] is 'NFC';")
    assert str(err.value).endswith("; the base model's spm.model beside it would be read instead")
    (src / "spm.model").write_bytes(ORIGINAL_SPM.read_bytes())
    assert hf_deberta.sentencepiece_proto(hf_deberta.vocabulary_file(src)) == str(src / "spm.model")
