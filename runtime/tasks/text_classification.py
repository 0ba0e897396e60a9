"""text-classification, as transformers 4.57's TextClassificationPipeline.

function_to_apply: by default none for problem_type "regression", sigmoid for one label or
"multi_label_classification", softmax otherwise (config.json decides, as HF's model config does).
top_k not given (legacy): one {label, score} per input, and a single string gives [{label, score}];
top_k=k or None: the k best (None: all) labels sorted by score, a list per input. Pairs: {"text", "text_pair"}.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError, OptionError, UnknownChoiceError
from ..taskspec import TASKS
from .base import CallForm, TaskContext
from .common import encode_features, positive_int, sigmoid, softmax, text_or_pair, tokenizer_options

PARAMETERS = frozenset({"top_k", "function_to_apply", "return_all_scores", "truncation", "max_length", "padding"})
# HF decides the legacy [result] of a single string by whether the call itself passes top_k, so
# pipeline(top_k=None)("text") gives [[...]]
CALL = CallForm(single_text_listed_unless_given="top_k", json_objects=(frozenset({"text"}), frozenset({"text", "text_pair"})))
FUNCTIONS = ("sigmoid", "softmax", "none")
_NOT_GIVEN = ""  # HF's sentinel: top_k=None means "all labels"


def default_function(config: dict[str, Any], num_labels: int) -> str:
    problem_type = config.get("problem_type")
    if problem_type == "regression":
        return "none"
    if problem_type == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    if problem_type == "single_label_classification" or num_labels > 1:
        return "softmax"
    return str(config.get("function_to_apply", "none")).lower()


def _settings(ctx: TaskContext, top_k: Any, return_all_scores: Any) -> tuple[int | None, bool]:
    """(top_k, legacy) as TextClassificationPipeline._sanitize_parameters decides them."""
    if return_all_scores is None:
        return_all_scores = ctx.config.get("return_all_scores")
    if top_k is None or (isinstance(top_k, int) and not isinstance(top_k, bool)):
        return positive_int("top_k", top_k, allow_none=True), False
    if top_k != _NOT_GIVEN:
        raise OptionError(f"top_k must be a positive integer or None, got {top_k!r}")
    return (None if return_all_scores else 1), True


def _item(item: Any):
    if isinstance(item, list):
        if len(item) == 1 and isinstance(item[0], list) and len(item[0]) == 2:  # HF's old [[text, pair]] form
            return {"text": item[0][0], "text_pair": item[0][1]}
        raise InputError(
            "The pipeline received invalid inputs, if you are trying to send text pairs, you can try to send a "
            'dictionary `{"text": "My text", "text_pair": "My pair"}` in order to send a text pair.'
        )
    return item


def run_each(
    ctx: TaskContext,
    items: list,
    top_k: Any = _NOT_GIVEN,
    function_to_apply: str | None = None,
    return_all_scores: bool | None = None,
    truncation: Any = None,
    max_length: int | None = None,
    padding: Any = None,
) -> list:
    top_k, legacy = _settings(ctx, top_k, return_all_scores)
    truncation, max_length = tokenizer_options(ctx, None, truncation=truncation, max_length=max_length, padding=padding)
    if function_to_apply is not None and str(function_to_apply).lower() not in FUNCTIONS:
        raise UnknownChoiceError(f"function_to_apply {function_to_apply!r} is not one of {', '.join(FUNCTIONS)}")
    texts = [text_or_pair(_item(item), "text-classification", pairs=True) for item in items]
    _, features = encode_features(ctx, texts, truncation, max_length)
    name = TASKS["text-classification"].outputs[0]
    id2label = ctx.id2label
    results = []
    for output in ctx.runner.run(features):
        logits = output[name].astype(np.float32)
        function = (function_to_apply or default_function(ctx.config, len(id2label) or logits.shape[-1])).lower()
        scores = {"sigmoid": sigmoid, "softmax": softmax}.get(function, lambda x: x)(logits)
        labels = [id2label.get(i, f"LABEL_{i}") for i in range(scores.shape[-1])]
        if top_k == 1 and legacy:
            results.append({"label": labels[int(scores.argmax())], "score": float(scores.max())})
            continue
        entries = [{"label": label, "score": float(score)} for label, score in zip(labels, scores)]
        if not legacy:
            entries.sort(key=lambda entry: entry["score"], reverse=True)
            entries = entries if top_k is None else entries[:top_k]
        results.append(entries)
    return results

