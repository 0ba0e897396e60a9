"""pretraining: AlbertForPreTraining's two heads, masked-token predictions and sentence order.

Input: a text, or {"text", "text_pair"} (sentence order is about the pair: segment A then segment B).
Result: {"masks": [[{score, token, token_str, sequence}, ...top_k] per [MASK] in the input] (fill-mask's
proposals, always one list per mask, empty when the input has no mask),
"sentence_order": [{"label": "original"|"swapped", "score": p}, ...] both labels, best first}
("original": B follows A as written, ALBERT's sentence_order_label 0; "swapped": label 1).
A list of inputs gives a list of results.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..taskspec import TASKS
from .base import CallForm, Features, TaskContext
from .common import encode_features, positive_int, refuse_unknown, softmax, text_or_pair, tokenizer_options
from .fill_mask import mask_predictions, target_ids

PARAMETERS = TASKS["pretraining"].parameters
CALL = CallForm(json_objects=(frozenset({"text"}), frozenset({"text", "text_pair"})))
SENTENCE_ORDER_LABELS = ("original", "swapped")


@dataclass(frozen=True)
class PretrainingSettings:
    """The pretraining parameters of one call, checked."""
    top_k: int
    targets: np.ndarray | None
    truncation: Any
    max_length: int


def settings(ctx: TaskContext, params: dict[str, Any]) -> PretrainingSettings:
    """The pretraining parameters checked; CallError for unknown ones."""
    refuse_unknown("pretraining", params, PARAMETERS)
    top_k = positive_int("top_k", params.get("top_k", 5))
    truncation, max_length = tokenizer_options(ctx, None, truncation=params.get("truncation"),
                                               max_length=params.get("max_length"))
    targets = params.get("targets")
    return PretrainingSettings(top_k, target_ids(ctx, targets) if targets is not None else None, truncation, max_length)


def preprocess(ctx: TaskContext, item: Any, settings: PretrainingSettings) -> Features:
    """The features of one pretraining input (a text or a pair)."""
    text = text_or_pair(item, "pretraining", pairs=True)
    _, features = encode_features(ctx, [text], settings.truncation, settings.max_length)
    return Features(features, settings)


def postprocess(ctx: TaskContext, features: Features, outputs: list[dict[str, np.ndarray]]) -> dict:
    """The sentence-order scores, best first, and the masked-token predictions of one input."""
    s, output = features.settings, outputs[0]
    order = softmax(output["sop_logits"].astype(np.float32))
    sentence_order = [{"label": label, "score": float(p)} for label, p in zip(SENTENCE_ORDER_LABELS, order)]
    sentence_order.sort(key=lambda entry: entry["score"], reverse=True)
    masks = mask_predictions(ctx, features.windows[0]["input_ids"], output["prediction_logits"], s.top_k, s.targets)
    return {"masks": masks, "sentence_order": sentence_order}
