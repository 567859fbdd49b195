"""Rebuild a SentencePiece model from a Hugging Face `tokenizer.json` that holds a Unigram model.

transformers >= 5 saves SentencePiece tokenizers (DeBERTa-v3's among them) as `tokenizer.json`
and `tokenizer_config.json`, without the `spm.model` keras-hub's tokenizers read. From 5.25 on
the file keeps all SentencePiece needs: the pieces in id order with their scores (`model.vocab`),
the unknown piece (`model.unk_id`), byte fallback, the normalization table SentencePiece compiled
(`Precompiled.precompiled_charsmap`), and the whitespace rules (a `Metaspace` pre-tokenizer, a
`Strip` and a `Replace` of space runs). `sentencepiece_model` turns them back into a model proto
that tokenizes like the original. Pieces listed as special added tokens become control pieces
(never produced from text, so typed "[CLS]" stays text), other added tokens user-defined ones.
transformers 5.0 to 5.24 leave the table out of DeBERTa's tokenizer (Unicode NFC stands in for
it): such a file is refused, like what SentencePiece cannot do (lowercasing, punctuation
splitting, other normalizers, BPE or WordPiece models), by file and field, never approximated.

    proto = sentencepiece_model(Path("fine-tune/tokenizer.json"), {"bos": "[CLS]", "eos": "[SEP]"})
    keras_hub.models.DebertaV3Tokenizer(proto=proto)
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
WHITESPACE_MARK = "\u2581"  # "▁": SentencePiece's escaped space
BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")  # SentencePiece's byte-fallback pieces
SPACE_RUNS = " {2,}"  # the Replace pattern transformers writes for remove_extra_whitespaces
UNICODE_FORMS = {"NFC", "NFD", "NFKC", "NFKD"}
LOST_CHARSMAP = (
    "SentencePiece normalizes with the table it compiled (precompiled_charsmap), not in this file "
    "(transformers 5.0 to 5.24 save DeBERTa's tokenizer without it)"
)
ROLES = ("bos", "eos", "pad")  # SentencePiece roles besides unk, which model.unk_id gives
PIECE = sentencepiece_model_pb2.ModelProto.SentencePiece
# "user_defined" is SentencePiece's own name for a table it did not build from a named rule
CHARSMAP_NAME, NO_NORMALIZATION = "user_defined", "identity"


class TokenizerFileError(ValueError):
    """A tokenizer.json SentencePiece cannot reproduce; the message names the file and field."""


def refusal(path: Path, field: str, value, why: str) -> TokenizerFileError:
    """The one-line error `PATH: FIELD is VALUE; WHY` (VALUE "missing" for None)."""
    shown = "missing" if value is None else repr(value)
    return TokenizerFileError(f"{path}: {field} is {shown[:120]}; {why}")


def parts(component, key: str, path: Path) -> list[dict]:
    """The components of a normalizer or pre-tokenizer, `Sequence`s flattened; [] for none."""
    if component is None:
        return []
    if not isinstance(component, dict):
        raise refusal(path, key, component, "expected a tokenizers component object")
    if component.get("type") == "Sequence":
        return [p for c in component.get(key) or [] for p in parts(c, key, path)]
    return [component]


def normalizer_settings(tokenizer: dict, path: Path) -> dict:
    """NormalizerSpec fields (charsmap, extra-whitespace removal) for the file's normalizer."""
    charsmap, collapse = b"", False
    normalizers = parts(tokenizer.get("normalizer"), "normalizers", path)
    for i, part in enumerate(normalizers):
        if part.get("type") in UNICODE_FORMS:
            raise refusal(path, f"normalizer[{i}]", part["type"], LOST_CHARSMAP)
    for i, part in enumerate(normalizers):
        field, kind = f"normalizer[{i}]", part.get("type")
        if kind == "Precompiled":
            try:
                charsmap = base64.b64decode(part.get("precompiled_charsmap") or "", validate=True)
            except (binascii.Error, TypeError) as err:
                raise TokenizerFileError(
                    f"{path}: {field}.precompiled_charsmap is not base64 ({err})"
                ) from err
        elif kind == "Strip":
            collapse = True
        elif kind == "Replace" and part.get("pattern") == {"Regex": SPACE_RUNS}:
            if part.get("content") not in (" ", WHITESPACE_MARK):
                raise refusal(path, f"{field}.content", part.get("content"), "expected ' '")
            collapse = True
        elif kind == "Lowercase":
            raise refusal(path, field, kind, "SentencePiece does not lowercase (do_lower_case)")
        else:
            detail = f"{kind} {part.get('pattern')}" if kind == "Replace" else kind
            raise refusal(path, field, detail, "SentencePiece has no such normalization")
    return {
        "name": CHARSMAP_NAME if charsmap else NO_NORMALIZATION,
        "precompiled_charsmap": charsmap,
        "remove_extra_whitespaces": collapse,
        "escape_whitespaces": True,
    }


def dummy_prefix(tokenizer: dict, path: Path) -> bool:
    """Whether the Metaspace pre-tokenizer prepends "▁" (SentencePiece's add_dummy_prefix)."""
    metaspace = None
    for i, part in enumerate(parts(tokenizer.get("pre_tokenizer"), "pretokenizers", path)):
        kind = part.get("type")
        if kind == "Punctuation":
            why = "SentencePiece does not split on punctuation (split_by_punct)"
            raise refusal(path, f"pre_tokenizer[{i}]", kind, why)
        if kind != "Metaspace":
            raise refusal(path, f"pre_tokenizer[{i}]", kind, "SentencePiece only escapes spaces")
        metaspace = part
    if metaspace is None:
        raise refusal(path, "pre_tokenizer", None, "SentencePiece needs a Metaspace pre-tokenizer")
    if metaspace.get("replacement") != WHITESPACE_MARK:
        raise refusal(path, "pre_tokenizer.replacement", metaspace.get("replacement"), "not '▁'")
    if "prepend_scheme" in metaspace:
        return metaspace["prepend_scheme"] != "never"
    return bool(metaspace.get("add_prefix_space", True))  # tokenizers < 0.14 wrote this key


def vocabulary(model: dict, path: Path) -> list[tuple[str, float]]:
    """model.vocab as (piece, score) pairs; refuses entries SentencePiece could not hold."""
    vocab = model.get("vocab")
    if not isinstance(vocab, list) or not vocab:
        raise refusal(path, "model.vocab", vocab, "expected a list of [piece, score]")
    pieces: dict[str, int] = {}
    for i, entry in enumerate(vocab):
        ok = isinstance(entry, list | tuple) and len(entry) == 2 and isinstance(entry[0], str)
        if not ok or not entry[0] or not isinstance(entry[1], int | float):
            raise refusal(path, f"model.vocab[{i}]", entry, "expected [piece, score]")
        if entry[0] in pieces:
            raise refusal(
                path, f"model.vocab[{i}]", entry, f"repeats model.vocab[{pieces[entry[0]]}]"
            )
        pieces[entry[0]] = i
    return [(piece, float(score)) for piece, score in vocab]


def added_in_vocabulary(tokenizer: dict, vocab: list, path: Path) -> dict[int, bool]:
    """Id -> `special` of the added tokens that are vocabulary pieces; logs those past it."""
    added, past = {}, []
    for i, token in enumerate(tokenizer.get("added_tokens") or []):
        token_id = token.get("id") if isinstance(token, dict) else None
        if (
            not isinstance(token_id, int)
            or token_id < 0
            or not isinstance(token.get("content"), str)
        ):
            raise refusal(path, f"added_tokens[{i}]", token, "expected an id and a content")
        if token_id >= len(vocab):
            past.append(token["content"])
        elif vocab[token_id][0] != token["content"]:
            why = f"model.vocab[{token_id}] is {vocab[token_id][0]!r}"
            raise refusal(path, f"added_tokens[{i}].content", token["content"], why)
        else:
            added[token_id] = bool(token.get("special"))
    if past:
        log.info(
            "%s: %d added tokens past the %d pieces are no SentencePiece pieces (%s)",
            path,
            len(past),
            len(vocab),
            ", ".join(past[:4]),
        )
    return added


def piece_type(piece_id: int, piece: str, score: float, added: dict, model: dict) -> int:
    """The SentencePiece type of a vocabulary piece, from how tokenizer.json lists it.

    transformers lists control pieces as special added tokens; user-defined ones as other
    added tokens, or (transformers >= 5, Unigram) only in the vocabulary with SentencePiece's
    score for them, 0 (a normal piece's score is a log probability, below 0).
    """
    if piece_id == model["unk_id"]:
        return PIECE.UNKNOWN
    if piece_id in added:
        return PIECE.CONTROL if added[piece_id] else PIECE.USER_DEFINED
    if model.get("byte_fallback") and BYTE_PIECE.fullmatch(piece):
        return PIECE.BYTE
    return PIECE.USER_DEFINED if score == 0.0 else PIECE.NORMAL


def read_tokenizer(path: Path) -> dict:
    """The parsed tokenizer.json, which must hold a `model` object."""
    try:
        tokenizer = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TokenizerFileError(f"{path}: unreadable JSON ({err})") from err
    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("model"), dict):
        raise TokenizerFileError(f"{path}: no model object; expected a tokenizers tokenizer.json")
    return tokenizer


def sentencepiece_model(path: str | Path, roles: Mapping[str, str] | None = None) -> bytes:
    """The serialized SentencePiece model proto equivalent to the Unigram `tokenizer.json`.

    `roles` names the pieces of SentencePiece's bos/eos/pad roles (DeBERTa: [CLS], [SEP],
    [PAD]); a role whose piece is absent, or not named, is disabled. Raises TokenizerFileError.
    """
    path = Path(path)
    tokenizer = read_tokenizer(path)
    model = tokenizer["model"]
    if model.get("type") != "Unigram":
        raise refusal(path, "model.type", model.get("type"), "SentencePiece models are Unigram")
    vocab = vocabulary(model, path)
    unk_id = model.get("unk_id")
    if not isinstance(unk_id, int) or not 0 <= unk_id < len(vocab):
        raise refusal(path, "model.unk_id", unk_id, "SentencePiece needs an unknown piece")
    if not isinstance(model.get("byte_fallback", False), bool):
        raise refusal(path, "model.byte_fallback", model["byte_fallback"], "expected a boolean")
    added = added_in_vocabulary(tokenizer, vocab, path)
    proto = sentencepiece_model_pb2.ModelProto()
    for i, (piece, score) in enumerate(vocab):
        entry = proto.pieces.add(piece=piece, score=score)
        if (kind := piece_type(i, piece, score, added, model)) != PIECE.NORMAL:
            entry.type = kind  # as SentencePiece writes them: NORMAL is the default
    spec = proto.trainer_spec
    spec.model_type = spec.UNIGRAM
    spec.vocab_size = len(vocab)
    spec.byte_fallback = model.get("byte_fallback", False)
    spec.unk_id, spec.unk_piece = unk_id, vocab[unk_id][0]
    ids = {piece: i for i, (piece, _) in enumerate(vocab)}
    for role in ROLES:
        piece = (roles or {}).get(role)
        setattr(spec, f"{role}_id", ids.get(piece, -1))
        if piece in ids:
            setattr(spec, f"{role}_piece", piece)
    for field, value in normalizer_settings(tokenizer, path).items():
        setattr(proto.normalizer_spec, field, value)
    proto.normalizer_spec.add_dummy_prefix = dummy_prefix(tokenizer, path)
    return proto.SerializeToString()


def added_token(token_id: int, content: str) -> dict:
    """A tokenizer.json added token that text spelling it out encodes to (special)."""
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def template_processing(
    single: Sequence[tuple[str, int]], pair: Sequence[tuple[str, int]], ids: Mapping[str, int]
) -> dict:
    """tokenizers' TemplateProcessing post-processor: `single` and `pair` list (token, type id),
    "$A" and "$B" standing for the texts; `ids` gives the special tokens' ids."""

    def entry(name: str, type_id: int) -> dict:
        if name in ("$A", "$B"):
            return {"Sequence": {"id": name[1], "type_id": type_id}}
        return {"SpecialToken": {"id": name, "type_id": type_id}}

    specials = dict.fromkeys(name for name, _ in [*single, *pair] if name not in ("$A", "$B"))
    return {
        "type": "TemplateProcessing",
        "single": [entry(*e) for e in single],
        "pair": [entry(*e) for e in pair],
        "special_tokens": {n: {"id": n, "ids": [ids[n]], "tokens": [n]} for n in specials},
    }


def unigram_tokenizer_json(proto: bytes, specials: Sequence[str], template: Sequence[str]) -> dict:
    """The tokenizer.json transformers >= 5 writes for a SentencePiece Unigram model with the
    whitespace rules of DeBERTa-v3's (the inverse of `sentencepiece_model`, which reads it back).

    `specials` become special added tokens (a piece's id, or the next id past the pieces);
    `template` is (classifier token, separator): "[CLS] A [SEP]" and "[CLS] A [SEP] B [SEP]".
    A model with other rules (byte fallback, no dummy prefix, whitespace kept, no charsmap)
    raises TokenizerFileError: transformers' tokenizer would not reproduce it.
    """
    model = sentencepiece_model_pb2.ModelProto.FromString(proto)
    spec, norm = model.trainer_spec, model.normalizer_spec
    rules = {
        "trainer_spec.byte_fallback": (spec.byte_fallback, False),
        "normalizer_spec.add_dummy_prefix": (norm.add_dummy_prefix, True),
        "normalizer_spec.remove_extra_whitespaces": (norm.remove_extra_whitespaces, True),
        "normalizer_spec.precompiled_charsmap": (bool(norm.precompiled_charsmap), True),
    }
    for field, (value, needed) in rules.items():
        if value != needed:
            raise TokenizerFileError(
                f"SentencePiece model: {field} is {value}; transformers' tokenizer for it "
                f"needs {needed}"
            )
    ids = {p.piece: i for i, p in enumerate(model.pieces)}
    added, next_id = {}, len(ids)
    for token in dict.fromkeys([*specials, *template]):
        added[token] = ids.get(token, next_id)
        next_id += token not in ids
    metaspace = {
        "type": "Metaspace",
        "replacement": WHITESPACE_MARK,
        "prepend_scheme": "always",
        "split": True,
    }
    cls, sep = template
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [added_token(i, t) for t, i in sorted(added.items(), key=lambda a: a[1])],
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {
                    "type": "Precompiled",
                    "precompiled_charsmap": base64.b64encode(norm.precompiled_charsmap).decode(),
                },
                {"type": "Strip", "strip_left": False, "strip_right": True},
                {"type": "Replace", "pattern": {"Regex": SPACE_RUNS}, "content": " "},
            ],
        },
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [metaspace]},
        "post_processor": template_processing(
            [(cls, 0), ("$A", 0), (sep, 0)],
            [(cls, 0), ("$A", 0), (sep, 0), ("$B", 1), (sep, 1)],
            added,
        ),
        "decoder": metaspace,
        "model": {
            "type": "Unigram",
            "unk_id": spec.unk_id,
            "vocab": [[p.piece, p.score] for p in model.pieces],
            "byte_fallback": False,
        },
    }
