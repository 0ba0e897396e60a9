"""multiple-choice (no HF pipeline exists; this is AlbertForMultipleChoice + softmax over the choices).

Input: {"prompt": str, "choices": [str, ...]} (at least two choices). Each choice is encoded as the pair
(prompt, choice), as transformers' run_swag example does, truncated "longest_first" to the model's maximum.
Result: a list of {"choice": index, "text": choice, "score": probability}, sorted by score, best first (ties
keep the choices' order); top_k=k keeps the k best. A list of inputs gives a list of such lists.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..taskspec import TASKS
from ..tokenizer import encode, require_text, stacked_feature
from .base import CallForm, Features, TaskContext
from .common import positive_int, refuse_unknown, softmax, tokenizer_options

PARAMETERS = TASKS["multiple-choice"].parameters
LOGITS = TASKS["multiple-choice"].outputs[0]
CALL = CallForm(json_objects=(frozenset({"prompt", "choices"}),))


def _prompt_and_choices(item: Any) -> tuple[str, list[str]]:
    if not isinstance(item, dict) or set(item) != {"prompt", "choices"}:
        shown = sorted(item) if isinstance(item, dict) else type(item).__name__
        raise InputError(f'multiple-choice takes {{"prompt": str, "choices": [str, ...]}}; got {shown}')
    choices = item["choices"]
    if not isinstance(choices, list) or len(choices) < 2:
        raise InputError("multiple-choice needs a list of at least two choices")
    return require_text(item["prompt"], "prompt"), [require_text(c, f"choice {i}") for i, c in enumerate(choices)]


@dataclass(frozen=True)
class ChoiceSettings:
    """The multiple-choice parameters of one call, checked."""
    top_k: int | None
    truncation: Any
    max_length: int


def settings(ctx: TaskContext, params: dict[str, Any]) -> ChoiceSettings:
    """The multiple-choice parameters checked; CallError for unknown ones."""
    refuse_unknown("multiple-choice", params, PARAMETERS)
    top_k = positive_int("top_k", params.get("top_k"), allow_none=True)
    truncation, max_length = tokenizer_options(ctx, None, truncation=params.get("truncation"),
                                               max_length=params.get("max_length"))
    return ChoiceSettings(top_k, truncation, max_length)


def preprocess(ctx: TaskContext, item: Any, settings: ChoiceSettings) -> Features:
    """One (C, S) window: each choice encoded as the pair (prompt, choice)."""
    prompt, choices = _prompt_and_choices(item)
    encodings = encode(ctx.tokenizer, [(prompt, c) for c in choices], max_length=settings.max_length,
                       truncation=settings.truncation)
    return Features([stacked_feature(encodings, ctx.token_id("pad") or 0)], settings, state=choices)


def postprocess(ctx: TaskContext, features: Features, outputs: list[dict[str, np.ndarray]]) -> list:
    """The choices ranked by softmax score, best first."""
    choices, top_k = features.state, features.settings.top_k
    scores = softmax(outputs[0][LOGITS].astype(np.float32))
    order = np.argsort(-scores, kind="stable")
    ranked = [{"choice": int(i), "text": choices[i], "score": float(scores[i])} for i in order]
    return ranked if top_k is None else ranked[:top_k]
