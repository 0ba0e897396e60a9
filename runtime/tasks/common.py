"""Small pieces the heads share: streamed inputs, the text encoder, option checks, numerically HF-identical softmax."""
from __future__ import annotations

import sys
import types
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np

from ..arguments import is_integer
from ..errors import CallError, InputError, OptionError
from ..tokenizer import encode, feature_from_encoding, require_text
from .base import TaskContext


def softmax(logits: np.ndarray) -> np.ndarray:
    """transformers' pipelines' numpy softmax (text-classification), in the logits' dtype."""
    shifted = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The logistic function of each logit."""
    return 1.0 / (1.0 + np.exp(-logits))


def is_stream(inputs: Any) -> bool:
    """Whether HF's pipelines stream these inputs (results as an iterator): a generator, or a torch Dataset
    (recognised only when torch is already imported: whoever holds one has imported it)."""
    torch_data = sys.modules.get("torch.utils.data")
    dataset = getattr(torch_data, "Dataset", None)
    return isinstance(inputs, types.GeneratorType) or (dataset is not None and isinstance(inputs, dataset))


def stream_items(inputs: Any) -> tuple[Iterator, int | None]:
    """(the stream's items, its length when it has one): a sized dataset is read by index, as HF's
    PipelineDataset reads it; a generator or an iterable dataset by iterating."""
    if isinstance(inputs, Sized) and not isinstance(inputs, types.GeneratorType):
        return (inputs[i] for i in range(len(inputs))), len(inputs)
    return iter(inputs), None


def text_or_pair(item: Any, task: str, pairs: bool) -> str | tuple[str, str]:
    """A string, or for tasks that take pairs a {"text", "text_pair"?} dict, as a tokenizer input."""
    if isinstance(item, str):
        return require_text(item)
    if isinstance(item, dict) and "text" in item and set(item) <= {"text", "text_pair"}:
        if "text_pair" not in item or item["text_pair"] is None:
            return require_text(item["text"])
        if not pairs:
            raise InputError(f"{task} takes single texts, not text pairs")
        return require_text(item["text"]), require_text(item["text_pair"], "text_pair")
    expected = 'a string or a {"text", "text_pair"} object' if pairs else "a string"
    shown = sorted(item) if isinstance(item, dict) else type(item).__name__
    raise InputError(f"{task} takes {expected}; got {shown}")


TOKENIZER_OPTIONS = frozenset({"truncation", "max_length", "padding"})


def tokenizer_options(ctx: TaskContext, options: dict[str, Any] | None, **given: Any) -> tuple[Any, int]:
    """(truncation, max_length) from HF-style tokenizer keyword arguments. padding is accepted and has no
    effect on results (the runner pads each batch); max_length cannot exceed the model's maximum."""
    merged = {k: v for k, v in given.items() if v is not None}
    for key, value in (options or {}).items():
        if key in merged:
            raise OptionError(f"{key} parameter defined twice (given as keyword argument as well as in tokenizer options)")
        merged[key] = value
    unknown = sorted(set(merged) - TOKENIZER_OPTIONS)
    if unknown:
        raise OptionError(f"tokenizer options {unknown} are not supported; use {sorted(TOKENIZER_OPTIONS)}")
    max_length = merged.get("max_length")
    max_length = ctx.max_length if max_length is None else min(positive_int("max_length", max_length), ctx.max_length)
    return merged.get("truncation"), max_length


def encode_features(ctx: TaskContext, texts: list, truncation: Any, max_length: int | None = None):
    """The encodings of `texts` and their features, truncated as asked, at most max_length tokens."""
    encodings = encode(ctx.tokenizer, texts, max_length=max_length or ctx.max_length, truncation=truncation)
    return encodings, [feature_from_encoding(e) for e in encodings]


def refuse_unknown(task: str, params: dict[str, Any], known: frozenset[str] | set[str]) -> None:
    """CallError naming the parameters `task` does not take, and those it does (HF's pipelines refuse them too)."""
    unknown = sorted(set(params) - known)
    if unknown:
        raise CallError(f"{task} got unexpected parameters {unknown}; known: {sorted(known)}")


def positive_int(name: str, value: Any, allow_none: bool = False) -> int | None:
    """`value` as an int when it is one of at least 1 (or None where allowed), else OptionError naming `name`."""
    if value is None and allow_none:
        return None
    if not is_integer(value) or value < 1:
        raise OptionError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def non_negative_int(name: str, value: Any) -> int:
    """`value` as an int when it is one of at least 0, else OptionError naming `name`."""
    if not is_integer(value) or value < 0:
        raise OptionError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise OptionError(f"{name} must be True or False, got {value!r}")


def _words(name: str, value: Any, single_allowed: bool) -> None:
    if single_allowed and isinstance(value, str):
        return
    if not isinstance(value, (list, tuple)) or not all(isinstance(word, str) for word in value):
        raise OptionError(f"{name} must be a list of strings{' or a string' if single_allowed else ''}, got {value!r}")


def _of_type(name: str, value: Any, types: tuple, what: str) -> None:
    if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
        raise OptionError(f"{name} must be {what}, got {value!r}")


# Value checks for every head option by name (None always means "the default"); the heads check what is
# specific to them (choices, ranges that depend on the model) with HF's own messages.
OPTION_CHECKS = {
    **{name: positive_int for name in ("top_k", "topk", "max_answer_len", "max_seq_len", "max_question_len",
                                       "max_length", "batch_size")},
    **{name: non_negative_int for name in ("doc_stride", "stride")},
    **{name: _flag for name in ("handle_impossible_answer", "align_to_words", "return_all_scores",
                                "is_split_into_words", "grouped_entities", "ignore_subwords", "return_tensors")},
    "targets": lambda name, value: _words(name, value, single_allowed=True),
    "ignore_labels": lambda name, value: _words(name, value, single_allowed=False),
    "delimiter": lambda name, value: _of_type(name, value, (str,), "a string"),
    "truncation": lambda name, value: _of_type(name, value, (bool, str), "True, False or a strategy name"),
    "padding": lambda name, value: _of_type(name, value, (bool, str), "True, False or a strategy name"),
    "tokenizer_kwargs": lambda name, value: _of_type(name, value, (dict,), "a dict"),
    "tokenize_kwargs": lambda name, value: _of_type(name, value, (dict,), "a dict"),
    "offset_mapping": lambda name, value: _of_type(name, value, (list, tuple), "a list of (start, end) pairs"),
}


def check_option_values(params: dict[str, Any]) -> None:
    """OptionError for an option value of the wrong type or range, before any head sees it."""
    for name, value in params.items():
        check = OPTION_CHECKS.get(name)
        if check is not None and value is not None:
            check(name, value)
