"""Encoding helpers over `tokenizers.Tokenizer`, with the semantics HF's fast tokenizers give the pipelines.

The bundle's tokenizer.json is loaded with truncation and padding off and never mutated: truncation runs on a
private copy per setting (`truncating_copy`), so one Tokenizer can serve every head and thread. An `Encoding` keeps what
the heads need: `ids`, `type_ids`, `attention_mask`, `offsets` (character spans in the original text),
`word_ids`, `sequence_ids` (None for special tokens, 0 for the text, 1 for the pair) and `overflowing`.
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Encoding, Tokenizer

from .arguments import is_integer
from .errors import InputError, OptionError, TruncationWarning
from .taskspec import INPUT_NAMES

Feature = dict[str, np.ndarray]  # unbatched model inputs: input_ids/attention_mask/token_type_ids, (S,) or (C, S)

TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")
# role -> token of ALBERT's SentencePiece vocabulary: what a bundle whose manifest names no special tokens has
ALBERT_SPECIAL_TOKENS = {"cls": "[CLS]", "sep": "[SEP]", "pad": "<pad>", "mask": "[MASK]", "unk": "<unk>"}


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizers Tokenizer in the file at `path`, with truncation and padding off."""
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
    strategy = truncation_strategy(truncation)
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


def truncation_strategy(truncation: bool | str | None) -> str:
    """The tokenizers strategy for HF's truncation argument (None and True: "longest_first")."""
    strategy = "longest_first" if truncation in (None, True) else truncation
    if strategy not in TRUNCATION_STRATEGIES:
        raise InputError(f"truncation={truncation!r} is not one of True, False, {', '.join(TRUNCATION_STRATEGIES)}")
    return strategy


def _preview(text: str | tuple[str, str], width: int = 40) -> str:
    text = " / ".join(text) if isinstance(text, tuple) else text
    return repr(text if len(text) <= width else text[: width - 1] + "…")


def feature_from_encoding(encoding: Encoding) -> Feature:
    """An encoding's ids, attention mask and type ids as int64 arrays."""
    return {
        "input_ids": np.asarray(encoding.ids, dtype=np.int64),
        "attention_mask": np.asarray(encoding.attention_mask, dtype=np.int64),
        "token_type_ids": np.asarray(encoding.type_ids, dtype=np.int64),
    }


def stacked_feature(encodings: Sequence[Encoding], pad_token_id: int) -> Feature:
    """Several encodings as one (C, S) feature padded on the right to the longest (multiple-choice)."""
    return padded_batch([feature_from_encoding(encoding) for encoding in encodings], pad_token_id)


def padded_batch(features: Sequence[Feature], pad_token_id: int, names: Sequence[str] = INPUT_NAMES) -> Feature:
    """Features (arrays (..., S) by name) stacked on a new first axis, each padded on the right to the longest
    S: input_ids with pad_token_id, the masks and type ids with 0."""
    length = max(feature["input_ids"].shape[-1] for feature in features)
    batch = {}
    for name in names:
        first = features[0][name]
        padded = np.full((len(features), *first.shape[:-1], length), pad_token_id if name == "input_ids" else 0,
                         dtype=first.dtype)
        for row, feature in enumerate(features):
            padded[row, ..., : feature[name].shape[-1]] = feature[name]
        batch[name] = padded
    return batch


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
    """The text of `ids`, optionally without special tokens and with transformers' tokenization-space cleanup."""
    text = tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
    return clean_up_tokenization(text) if clean_up_tokenization_spaces else text


def special_token_id(tokenizer: Tokenizer, special_tokens: dict[str, str], role: str) -> int | None:
    """The id of the special token playing `role` ("cls", "sep", "pad", "mask", "unk"); None when there is none."""
    token = special_tokens.get(role)
    return None if token is None else tokenizer.token_to_id(token)


MAX_CACHED = 8  # tokenizers, and truncation settings per tokenizer, kept configured
_TRUNCATING_COPIES: dict[int, tuple[Tokenizer, dict[tuple, Tokenizer]]] = {}
_COPIES_LOCK = threading.Lock()  # the server tokenizes on several threads; a clear between two reads would lose a copy


def truncating_copy(tokenizer: Tokenizer, max_length: int | None, stride: int = 0,
                    strategy: str = "longest_first") -> Tokenizer:
    """A private copy of `tokenizer` with this truncation (None: none) and no padding, cached per (tokenizer,
    settings): the shared tokenizer is never mutated."""
    with _COPIES_LOCK:
        return _truncating_copy(tokenizer, max_length, stride, strategy)


def _truncating_copy(tokenizer: Tokenizer, max_length: int | None, stride: int, strategy: str) -> Tokenizer:
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


class PipelineTokenizer:
    """`pipe.tokenizer`: the bundle's `tokenizers.Tokenizer` (`backend_tokenizer`, as HF's fast tokenizers name it)
    with the part of HF's tokenizer API that pipeline users reach for: `model_max_length` (settable; the pipeline
    truncates and windows to it), the special tokens and their ids, `__call__`, `encode`, `decode`, `tokenize`,
    `convert_ids_to_tokens`, `convert_tokens_to_ids`. Other attributes are the `tokenizers.Tokenizer`'s own."""

    is_fast = True
    padding_side = "right"
    truncation_side = "right"

    def __init__(self, tokenizer: Tokenizer, special_tokens: dict[str, str], model_max_length: int,
                 clean_up_tokenization_spaces: bool = False):
        self.backend_tokenizer = tokenizer
        self.special_tokens = dict(special_tokens)
        self.max_positions = model_max_length  # what the model can take; model_max_length may only be lowered
        self.model_max_length = model_max_length
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces

    @property
    def model_max_length(self) -> int:
        """The longest input, in tokens, the pipeline encodes."""
        return self._model_max_length

    @model_max_length.setter
    def model_max_length(self, value: int) -> None:
        """Set the longest input; OptionError unless an integer from 1 to the model's positions."""
        if not is_integer(value) or not 1 <= value <= self.max_positions:
            raise OptionError(
                f"model_max_length must be an integer from 1 to {self.max_positions} (the model's positions), "
                f"got {value!r}"
            )
        self._model_max_length = int(value)

    def __getattr__(self, name: str):
        if name.startswith("_") or name == "backend_tokenizer":
            raise AttributeError(name)
        return getattr(self.backend_tokenizer, name)

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """The size of the base vocabulary, added tokens not counted."""
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=False)

    def __call__(
        self,
        text: str | list[str],
        text_pair: str | list[str] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        return_tensors: str | None = None,
        return_offsets_mapping: bool = False,
    ) -> dict:
        """HF's `tokenizer(text, text_pair, ...)` as a dict: input_ids, token_type_ids, attention_mask (and
        offset_mapping), lists or, with return_tensors="np", int64 arrays (batch axis always)."""
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        if text_pair is not None:
            pairs = list(text_pair) if batched else [text_pair]
            if len(pairs) != len(texts):
                raise InputError(f"{len(texts)} texts but {len(pairs)} text pairs")
            texts = list(zip(texts, pairs))
        if truncation in (None, False) and max_length is None:
            encodings = self.backend_tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
        else:
            strategy = truncation_strategy(truncation)
            copy = truncating_copy(self.backend_tokenizer, max_length or self.model_max_length, stride, strategy)
            encodings = copy.encode_batch(texts, add_special_tokens=add_special_tokens)
        columns = {
            "input_ids": [e.ids for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
        }
        if return_offsets_mapping:
            columns["offset_mapping"] = [e.offsets for e in encodings]
        if padding:
            self._pad(columns, padding, max_length)
        if return_tensors is not None:
            if return_tensors != "np":
                raise OptionError(f"return_tensors={return_tensors!r}: this runtime has no torch or tf; use 'np'")
            if len({len(row) for row in columns["input_ids"]}) > 1:
                raise InputError("the texts have different lengths; pass padding=True to get arrays")
            return {name: np.asarray(rows, dtype=np.int64) for name, rows in columns.items()}
        return columns if batched else {name: rows[0] for name, rows in columns.items()}

    def _pad(self, columns: dict[str, list], padding: bool | str, max_length: int | None) -> None:
        if padding not in (True, "longest", "max_length"):
            raise OptionError(f"padding={padding!r} is not one of False, True, 'longest', 'max_length'")
        longest = max(len(row) for row in columns["input_ids"])
        length = (max_length or self.model_max_length) if padding == "max_length" else longest
        pad_id = self.pad_token_id or 0
        fills = {"input_ids": pad_id, "token_type_ids": 0, "attention_mask": 0, "offset_mapping": (0, 0)}
        for name, rows in columns.items():
            columns[name] = [list(row) + [fills[name]] * (length - len(row)) for row in rows]

    def encode(self, text: str, text_pair: str | None = None, **options) -> list[int]:
        """The input ids of `text` (and `text_pair`), as calling the tokenizer gives them."""
        return self(text, text_pair, **options)["input_ids"]

    def decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None):
        """The text of one id or a sequence of ids; cleanup defaults to the bundle's setting."""
        ids = [int(token_ids)] if np.ndim(token_ids) == 0 else [int(i) for i in token_ids]
        clean = clean_up_tokenization_spaces
        if clean is None:
            clean = self.clean_up_tokenization_spaces
        return decode(self.backend_tokenizer, ids, skip_special_tokens=skip_special_tokens,
                      clean_up_tokenization_spaces=clean)

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False) -> list[str]:
        """The tokens of `text` (and `pair`), without special tokens unless asked."""
        return self.backend_tokenizer.encode(text, pair, add_special_tokens=add_special_tokens).tokens

    def convert_ids_to_tokens(self, ids):
        """The token of one id, or the list of tokens of a sequence of ids."""
        if np.ndim(ids) == 0:
            return self.backend_tokenizer.id_to_token(int(ids))
        return [self.backend_tokenizer.id_to_token(int(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens):
        """The id of one token, or the ids of a list of tokens; unknown tokens give the unk id."""
        def one(token: str) -> int | None:
            found = self.backend_tokenizer.token_to_id(token)
            return self.unk_token_id if found is None else found

        return one(tokens) if isinstance(tokens, str) else [one(t) for t in tokens]

    def _special(self, role: str) -> str | None:
        return self.special_tokens.get(role)

    def _special_id(self, role: str) -> int | None:
        return special_token_id(self.backend_tokenizer, self.special_tokens, role)

    cls_token = property(lambda self: self._special("cls"))
    sep_token = property(lambda self: self._special("sep"))
    pad_token = property(lambda self: self._special("pad"))
    mask_token = property(lambda self: self._special("mask"))
    unk_token = property(lambda self: self._special("unk"))
    cls_token_id = property(lambda self: self._special_id("cls"))
    sep_token_id = property(lambda self: self._special_id("sep"))
    pad_token_id = property(lambda self: self._special_id("pad"))
    mask_token_id = property(lambda self: self._special_id("mask"))
    unk_token_id = property(lambda self: self._special_id("unk"))

    def __repr__(self) -> str:
        return f"PipelineTokenizer(model_max_length={self.model_max_length}, special_tokens={self.special_tokens})"
