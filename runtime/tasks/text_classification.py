"""text-classification, as transformers 4.57's TextClassificationPipeline.

function_to_apply: by default none for problem_type "regression", sigmoid for one label or
"multi_label_classification", softmax otherwise (config.json decides, as HF's model config does).
top_k not given (legacy): one {label, score} per input, and a single string gives [{label, score}];
top_k=k or None: the k best (None: all) labels sorted by score, a list per input. Pairs: {"text", "text_pair"}.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..arguments import is_integer
from ..errors import InputError, OptionError, UnknownChoiceError
from ..taskspec import TASKS
from .base import CallForm, Features, TaskContext
from .common import encode_features, positive_int, refuse_unknown, sigmoid, softmax, text_or_pair, tokenizer_options

PARAMETERS = TASKS["text-classification"].parameters
LOGITS = TASKS["text-classification"].outputs[0]
# HF decides the legacy [result] of a single string by whether the call itself passes top_k, so
# pipeline(top_k=None)("text") gives [[...]]
CALL = CallForm(single_text_listed_unless_given="top_k", json_objects=(frozenset({"text"}), frozenset({"text", "text_pair"})))
FUNCTIONS = ("sigmoid", "softmax", "none")
_NOT_GIVEN = ""  # HF's sentinel: top_k=None means "all labels"


def default_function(config: dict[str, Any], num_labels: int) -> str:
    """The function HF applies to the logits by default: none, sigmoid or softmax, from the config."""
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
    if top_k is None or is_integer(top_k):
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


@dataclass(frozen=True)
class ClassificationSettings:
    """The text-classification parameters of one call, checked."""
    top_k: int | None
    legacy: bool  # top_k not given: the best label alone, HF's legacy form
    function_to_apply: str | None
    truncation: Any
    max_length: int


def settings(ctx: TaskContext, params: dict[str, Any]) -> ClassificationSettings:
    """The text-classification parameters checked; CallError for unknown ones."""
    refuse_unknown("text-classification", params, PARAMETERS)
    top_k, legacy = _settings(ctx, params.get("top_k", _NOT_GIVEN), params.get("return_all_scores"))
    truncation, max_length = tokenizer_options(ctx, None, truncation=params.get("truncation"),
                                               max_length=params.get("max_length"), padding=params.get("padding"))
    function_to_apply = params.get("function_to_apply")
    if function_to_apply is not None and str(function_to_apply).lower() not in FUNCTIONS:
        raise UnknownChoiceError(f"function_to_apply {function_to_apply!r} is not one of {', '.join(FUNCTIONS)}")
    return ClassificationSettings(top_k, legacy, function_to_apply, truncation, max_length)


def preprocess(ctx: TaskContext, item: Any, settings: ClassificationSettings) -> Features:
    """The features of one text-classification input (a text or a pair)."""
    text = text_or_pair(_item(item), "text-classification", pairs=True)
    _, features = encode_features(ctx, [text], settings.truncation, settings.max_length)
    return Features(features, settings)


def postprocess(ctx: TaskContext, features: Features, outputs: list[dict[str, np.ndarray]]) -> Any:
    """The labels and scores of one input, after the function to apply."""
    s = features.settings
    logits = outputs[0][LOGITS].astype(np.float32)
    function = (s.function_to_apply or default_function(ctx.config, len(ctx.id2label) or logits.shape[-1])).lower()
    scores = {"sigmoid": sigmoid, "softmax": softmax}.get(function, lambda x: x)(logits)
    labels = ctx.labels(scores.shape[-1])
    if s.top_k == 1 and s.legacy:
        return {"label": labels[int(scores.argmax())], "score": float(scores.max())}
    entries = [{"label": label, "score": float(score)} for label, score in zip(labels, scores)]
    if not s.legacy:
        entries.sort(key=lambda entry: entry["score"], reverse=True)
        entries = entries if s.top_k is None else entries[:s.top_k]
    return entries
