"""feature-extraction, as transformers 4.57's FeatureExtractionPipeline, plus pooling.

pooling="none" (default): last_hidden_state as HF returns it, nested lists [1][S][H] per input (S counts the
special tokens). pooling="cls": the [CLS] position's hidden state, a flat list [H]; pooling="mean": the mean
over the input's S tokens (special tokens included, as sentence-transformers' mean pooling does), [H].
return_tensors=True gives numpy arrays of the same shapes instead of lists. A list of inputs gives a list.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import OptionError
from .base import TaskContext
from .common import as_batch, encode_features, text_or_pair, tokenizer_options

PARAMETERS = frozenset({"pooling", "truncation", "return_tensors", "tokenize_kwargs"})
POOLINGS = ("none", "cls", "mean")


def run_each(
    ctx: TaskContext,
    items: list,
    pooling: str = "none",
    truncation: Any = None,
    return_tensors: bool = False,
    tokenize_kwargs: dict | None = None,
) -> list:
    pooling = "none" if pooling is None else str(pooling).lower()
    if pooling not in POOLINGS:
        raise OptionError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    truncation, max_length = tokenizer_options(ctx, tokenize_kwargs, truncation=truncation)
    texts = [text_or_pair(item, "feature-extraction", pairs=False) for item in items]
    _, features = encode_features(ctx, texts, truncation, max_length)
    results = []
    for output in ctx.runner.run(features):
        hidden = output["last_hidden_state"].astype(np.float32)  # (S, H)
        if pooling == "cls":
            value = hidden[0]
        elif pooling == "mean":
            value = hidden.mean(axis=0)
        else:
            value = hidden[None]
        results.append(value if return_tensors else value.tolist())
    return results


def run(ctx: TaskContext, inputs: Any, **params: Any) -> Any:
    items, single = as_batch(inputs)
    results = run_each(ctx, items, **params)
    return results[0] if single else results
