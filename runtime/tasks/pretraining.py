"""pretraining: AlbertForPreTraining's two heads, masked-token predictions and sentence order.

Input: a text, or {"text", "text_pair"} (sentence order is about the pair: segment A then segment B).
Result: {"masks": [[{score, token, token_str, sequence}, ...top_k] per [MASK] in the input] (fill-mask's
proposals, always one list per mask, empty when the input has no mask),
"sentence_order": [{"label": "original"|"swapped", "score": p}, ...] both labels, best first}
("original": B follows A as written, ALBERT's sentence_order_label 0; "swapped": label 1).
A list of inputs gives a list of results.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import CallForm, TaskContext
from .common import encode_features, positive_int, softmax, text_or_pair, tokenizer_options
from .fill_mask import mask_predictions, target_ids

PARAMETERS = frozenset({"top_k", "targets", "truncation", "max_length"})
CALL = CallForm(json_objects=(frozenset({"text"}), frozenset({"text", "text_pair"})))
SENTENCE_ORDER_LABELS = ("original", "swapped")


def run_each(
    ctx: TaskContext,
    items: list,
    top_k: int = 5,
    targets: str | list[str] | None = None,
    truncation: Any = None,
    max_length: int | None = None,
) -> list:
    top_k = positive_int("top_k", top_k)
    truncation, max_length = tokenizer_options(ctx, None, truncation=truncation, max_length=max_length)
    ids = target_ids(ctx, targets) if targets is not None else None
    texts = [text_or_pair(item, "pretraining", pairs=True) for item in items]
    _, features = encode_features(ctx, texts, truncation, max_length)
    results = []
    for feature, output in zip(features, ctx.runner.run(features)):
        order = softmax(output["sop_logits"].astype(np.float32))
        sentence_order = [{"label": label, "score": float(p)} for label, p in zip(SENTENCE_ORDER_LABELS, order)]
        sentence_order.sort(key=lambda entry: entry["score"], reverse=True)
        masks = mask_predictions(ctx, feature["input_ids"], output["prediction_logits"], top_k, ids)
        results.append({"masks": masks, "sentence_order": sentence_order})
    return results
