"""multiple-choice (no HF pipeline exists; this is AlbertForMultipleChoice + softmax over the choices).

Input: {"prompt": str, "choices": [str, ...]} (at least two choices). Each choice is encoded as the pair
(prompt, choice), as transformers' run_swag example does, truncated "longest_first" to the model's maximum.
Result: a list of {"choice": index, "text": choice, "score": probability}, sorted by score, best first (ties
keep the choices' order); top_k=k keeps the k best. A list of inputs gives a list of such lists.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from ..taskspec import TASKS
from ..tokenizer import encode, require_text, stacked_feature
from .base import CallForm, TaskContext
from .common import positive_int, softmax, tokenizer_options

PARAMETERS = frozenset({"top_k", "truncation", "max_length"})
CALL = CallForm(json_objects=(frozenset({"prompt", "choices"}),))


def _prompt_and_choices(item: Any) -> tuple[str, list[str]]:
    if not isinstance(item, dict) or set(item) != {"prompt", "choices"}:
        shown = sorted(item) if isinstance(item, dict) else type(item).__name__
        raise InputError(f'multiple-choice takes {{"prompt": str, "choices": [str, ...]}}; got {shown}')
    choices = item["choices"]
    if not isinstance(choices, list) or len(choices) < 2:
        raise InputError("multiple-choice needs a list of at least two choices")
    return require_text(item["prompt"], "prompt"), [require_text(c, f"choice {i}") for i, c in enumerate(choices)]


def run_each(
    ctx: TaskContext, items: list, top_k: int | None = None, truncation: Any = None, max_length: int | None = None
) -> list:
    top_k = positive_int("top_k", top_k, allow_none=True)
    truncation, max_length = tokenizer_options(ctx, None, truncation=truncation, max_length=max_length)
    examples = [_prompt_and_choices(item) for item in items]
    pad_id = ctx.token_id("pad") or 0
    features = []
    for prompt, choices in examples:
        encodings = encode(ctx.tokenizer, [(prompt, c) for c in choices], max_length=max_length, truncation=truncation)
        features.append(stacked_feature(encodings, pad_id))
    name = TASKS["multiple-choice"].outputs[0]
    results = []
    for (_, choices), output in zip(examples, ctx.runner.run(features)):
        scores = softmax(output[name].astype(np.float32))
        order = np.argsort(-scores, kind="stable")
        ranked = [{"choice": int(i), "text": choices[i], "score": float(scores[i])} for i in order]
        results.append(ranked if top_k is None else ranked[:top_k])
    return results
