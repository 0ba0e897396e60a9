"""Encoding helpers over `tokenizers.Tokenizer`, with the semantics HF's fast tokenizers give the pipelines.

The bundle's tokenizer.json is loaded with truncation and padding off; truncation is switched on only for the
duration of one `encode` call (under a lock), so one Tokenizer can serve every head. An `Encoding` keeps what
the heads need: `ids`, `type_ids`, `attention_mask`, `offsets` (character spans in the original text),
`word_ids`, `sequence_ids` (None for special tokens, 0 for the text, 1 for the pair) and `overflowing`.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Encoding, Tokenizer

from .errors import InputError, TruncationWarning
from .tasks.base import Feature

TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")


def load_tokenizer(path: str | Path) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def require_text(text: object, what: str = "text") -> str:
    """The text itself, or an InputError saying why it cannot be encoded."""
    if not isinstance(text, str):
        raise InputError(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InputError(f"{what} is empty; give at least one non-blank character")
    return text


def encode(
    tokenizer: Tokenizer,
    texts: Sequence[str | tuple[str, str]],
    *,
    max_length: int,
    truncation: bool | str | None = None,
    stride: int = 0,
    add_special_tokens: bool = True,
) -> list[Encoding]:
    """Encode texts (or (text, text_pair) tuples) to at most max_length tokens, special tokens included.

    truncation: None (default) cuts what is too long with "longest_first" and warns, as the HF tokenizer
    warns; True or a strategy name cuts silently; False refuses texts that do not fit. Tokens cut off are in
    each encoding's `overflowing` (windows of max_length overlapping by `stride`, as HF's
    return_overflowing_tokens gives them).
    """
    if truncation is False:
        encodings = tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        for encoding in encodings:
            if len(encoding.ids) > max_length:
                raise InputError(
                    f"input has {len(encoding.ids)} tokens, the model takes at most {max_length}; "
                    "shorten it or allow truncation"
                )
        return encodings
    strategy = "longest_first" if truncation in (None, True) else truncation
    if strategy not in TRUNCATION_STRATEGIES:
        raise InputError(f"truncation={truncation!r} is not one of True, False, {', '.join(TRUNCATION_STRATEGIES)}")
    try:
        encodings = truncating_copy(tokenizer, max_length, stride, strategy).encode_batch(
            list(texts), add_special_tokens=add_special_tokens)
    except Exception as exc:  # tokenizers raises plain Exception when a pair cannot be cut to fit
        raise InputError(f"cannot fit the input into {max_length} tokens: {exc}") from exc
    if truncation is None:
        for text, encoding in zip(texts, encodings):
            if encoding.overflowing:
                warnings.warn(
                    f"input is longer than the model's maximum of {max_length} tokens and was truncated to "
                    f"{max_length} (pass truncation=True to truncate without this warning): {_preview(text)}",
                    TruncationWarning,
                    stacklevel=3,
                )
    return encodings


def _preview(text: str | tuple[str, str], width: int = 40) -> str:
    text = " / ".join(text) if isinstance(text, tuple) else text
    return repr(text if len(text) <= width else text[: width - 1] + "…")


def feature_from_encoding(encoding: Encoding) -> Feature:
    return {
        "input_ids": np.asarray(encoding.ids, dtype=np.int64),
        "attention_mask": np.asarray(encoding.attention_mask, dtype=np.int64),
        "token_type_ids": np.asarray(encoding.type_ids, dtype=np.int64),
    }


def stacked_feature(encodings: Sequence[Encoding], pad_token_id: int) -> Feature:
    """Several encodings as one (C, S) feature padded on the right to the longest (multiple-choice)."""
    length = max(len(e.ids) for e in encodings)
    feature = {name: np.zeros((len(encodings), length), dtype=np.int64) for name in ("input_ids", "attention_mask", "token_type_ids")}
    feature["input_ids"].fill(pad_token_id)
    for row, encoding in enumerate(encodings):
        n = len(encoding.ids)
        feature["input_ids"][row, :n] = encoding.ids
        feature["attention_mask"][row, :n] = encoding.attention_mask
        feature["token_type_ids"][row, :n] = encoding.type_ids
    return feature


def clean_up_tokenization(text: str) -> str:
    """HF's PreTrainedTokenizerBase.clean_up_tokenization, for tokenizers saved with that option on."""
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


def decode(
    tokenizer: Tokenizer,
    ids: Sequence[int],
    *,
    skip_special_tokens: bool = False,
    clean_up_tokenization_spaces: bool = False,
) -> str:
    text = tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
    return clean_up_tokenization(text) if clean_up_tokenization_spaces else text


def token_id(tokenizer: Tokenizer, token: str | None) -> int | None:
    return None if token is None else tokenizer.token_to_id(token)


MAX_CACHED = 8  # tokenizers, and truncation settings per tokenizer, kept configured
_TRUNCATING_COPIES: dict[int, tuple[Tokenizer, dict[tuple, Tokenizer]]] = {}


def truncating_copy(tokenizer: Tokenizer, max_length: int | None, stride: int = 0,
                    strategy: str = "longest_first") -> Tokenizer:
    """A private copy of `tokenizer` with this truncation (None: none) and no padding, cached per (tokenizer,
    settings): the shared tokenizer is never mutated."""
    owner, copies = _TRUNCATING_COPIES.get(id(tokenizer), (None, {}))
    if owner is not tokenizer:  # a new tokenizer, or another one reusing a freed id
        if len(_TRUNCATING_COPIES) >= MAX_CACHED:
            _TRUNCATING_COPIES.clear()
        copies = {}
        _TRUNCATING_COPIES[id(tokenizer)] = (tokenizer, copies)
    key = (max_length, stride, strategy)
    if key not in copies:
        if len(copies) >= MAX_CACHED:
            copies.clear()
        copy = Tokenizer.from_str(tokenizer.to_str())
        copy.no_padding()
        if max_length is None:
            copy.no_truncation()
        else:
            copy.enable_truncation(max_length, stride=stride, strategy=strategy, direction="right")
        copies[key] = copy
    return copies[key]
