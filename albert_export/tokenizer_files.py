"""The bundle's Hugging Face tokenizer files, so that transformers' AutoTokenizer and transformers.js load the
tokenizer the runtime runs: tokenizer_config.json, special_tokens_map.json and spiece.model (what SentencePiece's own
library, the C++ example and transformers' slow AlbertTokenizer read): the checkpoint's own, or, when it has none,
one written from tokenizer.json's Unigram vocabulary (`spiece_from_tokenizer`).

The checkpoint's own files are the starting point; what the runtime decides is written over them: the special
tokens, the lowercasing and accent flags tokenizer.json applies, and model_max_length. transformers saves
model_max_length as 1e30 when a checkpoint sets none, and AutoTokenizer then never truncates, so a long input
reaches onnxruntime past the model's positions and crashes there; the bundle says the length the runtime uses.
transformers.js loads no tokenizer without tokenizer_config.json (it needs tokenizer_class, the special tokens,
model_max_length and clean_up_tokenization_spaces).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from runtime.bundle import TokenizerSettings

from runtime.bundle import TOKENIZER

from .tokenizer import SPECIAL_TOKENS_MAP, SPIECE, TOKENIZER_CONFIG, TokenizerError, read_json_object, token_text

TOKENIZER_CLASS = "AlbertTokenizer"
# ALBERT's sentence-start and sentence-end tokens are its [CLS] and [SEP]
ROLE_ALIASES = {"bos": "cls", "eos": "sep"}


def special_tokens_map(settings: TokenizerSettings) -> dict[str, str]:
    """special_tokens_map.json's entries: each role's token, bos and eos as cls and sep where not set themselves."""
    roles = dict(settings.special_tokens)
    roles.update({alias: roles[role] for alias, role in ROLE_ALIASES.items() if role in roles and alias not in roles})
    return {f"{role}_token": text for role, text in sorted(roles.items())}


def with_special_tokens(source: dict[str, Any], settings: TokenizerSettings) -> dict[str, Any]:
    """source with every special token the runtime uses; a checkpoint's entry for the same text (a serialized
    AddedToken with its lstrip/rstrip) is kept as it is."""
    result = dict(source)
    for key, text in special_tokens_map(settings).items():
        if token_text(result.get(key)) != text:
            result[key] = text
    return result


def tokenizer_config(checkpoint_config: dict[str, Any], settings: TokenizerSettings, max_length: int) -> dict[str, Any]:
    """The bundle's tokenizer_config.json: the checkpoint's, with the runtime's special tokens, settings and
    max_length."""
    config = with_special_tokens(checkpoint_config, settings)
    config.setdefault("tokenizer_class", TOKENIZER_CLASS)
    config.setdefault("remove_space", True)
    config.update(
        do_lower_case=settings.do_lower_case,
        keep_accents=settings.keep_accents,
        clean_up_tokenization_spaces=settings.clean_up_tokenization_spaces,
        model_max_length=max_length,
    )
    return config


def write_tokenizer_files(checkpoint: Path, bundle: Path, settings: TokenizerSettings, max_length: int) -> list[Path]:
    """Write the files into the bundle directory; max_length: what the runtime truncates to. Returns their paths."""
    written = [bundle / TOKENIZER_CONFIG, bundle / SPECIAL_TOKENS_MAP]
    config = tokenizer_config(read_json_object(checkpoint / TOKENIZER_CONFIG), settings, max_length)
    written[0].write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    special_map = with_special_tokens(read_json_object(checkpoint / SPECIAL_TOKENS_MAP), settings)
    written[1].write_text(json.dumps(special_map, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if (checkpoint / SPIECE).is_file():
        shutil.copyfile(checkpoint / SPIECE, bundle / SPIECE)
    else:
        tokenizer = json.loads((bundle / TOKENIZER).read_text(encoding="utf-8"))
        (bundle / SPIECE).write_bytes(spiece_from_tokenizer(tokenizer))
    written.append(bundle / SPIECE)
    return written


def spiece_from_tokenizer(tokenizer: dict[str, Any]) -> bytes:
    """A SentencePiece model (serialized ModelProto) holding tokenizer.json's Unigram vocabulary, ids and scores as
    they are: the added tokens (<pad>, [CLS], [MASK], ...) as CONTROL pieces (SentencePiece never matches those in
    text; a caller splits them out first, as tokenizers does), the unknown token as UNKNOWN.

    Normalization: tokenizer.json's own precompiled charsmap when it has one (a converted SentencePiece model), else
    none ("identity"): SentencePiece then sees text that is already NFKD'd, accent-stripped and lowercased as
    tokenizer.json's normalizer does it (the C++ example does that with utf8proc). Whitespace as SentencePiece's
    ALBERT models have it: runs collapsed, a "▁" before the first word, none kept at the end (tokenizers keeps a
    trailing "▁": a caller appends it). tests/test_tokenizer_files.py checks the ids against tokenizers."""
    from sentencepiece import sentencepiece_model_pb2 as spm_model  # the export extra's dependency

    model = tokenizer.get("model") or {}
    if model.get("type") != "Unigram":
        raise TokenizerError(
            f"tokenizer.json's model is {model.get('type')!r}, not Unigram: no spiece.model can be written for it; "
            "export a checkpoint with an ALBERT (SentencePiece Unigram) tokenizer"
        )
    added = {token["id"]: token for token in tokenizer.get("added_tokens", [])}
    vocab = model["vocab"]
    unk_id = model.get("unk_id")
    proto = spm_model.ModelProto()
    kinds = spm_model.ModelProto.SentencePiece.Type
    for id_, (piece, score) in enumerate(vocab):
        entry = proto.pieces.add(piece=piece, score=float(score))
        if id_ == unk_id:
            entry.type = kinds.UNKNOWN
        elif id_ in added:
            entry.type = kinds.CONTROL
    trainer = proto.trainer_spec
    trainer.model_type = trainer.UNIGRAM
    trainer.vocab_size = len(vocab)
    trainer.unk_id = -1 if unk_id is None else unk_id
    trainer.bos_id = trainer.eos_id = trainer.pad_id = -1
    trainer.byte_fallback = bool(model.get("byte_fallback", False))
    normalizer = proto.normalizer_spec
    charsmap = _precompiled_charsmap(tokenizer.get("normalizer"))
    normalizer.name = "precompiled" if charsmap else "identity"
    if charsmap:
        normalizer.precompiled_charsmap = charsmap
    normalizer.add_dummy_prefix = True
    normalizer.remove_extra_whitespaces = True
    normalizer.escape_whitespaces = True
    return proto.SerializeToString()


def _precompiled_charsmap(normalizer: dict[str, Any] | None) -> bytes:
    """The charsmap of tokenizer.json's Precompiled normalizer step (base64 there), b"" when it has none."""
    import base64

    if not normalizer:
        return b""
    if normalizer.get("type") == "Precompiled":
        return base64.b64decode(normalizer.get("precompiled_charsmap") or "")
    return b"".join(_precompiled_charsmap(step) for step in normalizer.get("normalizers", []))
