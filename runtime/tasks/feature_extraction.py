"""feature-extraction, as transformers 4.57's FeatureExtractionPipeline, plus pooling and the optional outputs.

pooling="none" (default): last_hidden_state as HF returns it, nested lists [1][S][H] per input (S counts the
special tokens). pooling="cls": the [CLS] position's hidden state, a flat list [H]; pooling="mean": the mean
over the input's S tokens (special tokens included, as sentence-transformers' mean pooling does), [H].
return_tensors=True gives numpy arrays of the same shapes instead of lists. A list of inputs gives a list.

Bundles exported with --output-hidden-states / --output-attentions also answer:
  hidden_state_layer=k        the features (pooled as asked) of hidden state k instead of the last one: 0 is the
                              embedding output, k the output of layer k, negative k counts from the end (-1 last)
  output_hidden_states=True   the result becomes {"features": <as above>, "hidden_states": [L+1][1][S][H]}
  output_attentions=True      ... and "attentions": [L*inner_group_num][1][heads][S][S], each layer's softmax
as transformers' model(..., output_hidden_states=True, output_attentions=True) gives them for one input.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import OptionError
from ..taskspec import OPTIONAL_OUTPUTS
from .base import CallForm, TaskContext
from .common import encode_features, text_or_pair, tokenizer_options

PARAMETERS = frozenset({"pooling", "truncation", "return_tensors", "tokenize_kwargs", "output_hidden_states",
                        "hidden_state_layer", "output_attentions"})
CALL = CallForm()
POOLINGS = ("none", "cls", "mean")
HIDDEN_STATES, ATTENTIONS = OPTIONAL_OUTPUTS
EXPORT_FLAGS = {HIDDEN_STATES: "--output-hidden-states", ATTENTIONS: "--output-attentions"}


def pooled(hidden: np.ndarray, pooling: str) -> np.ndarray:
    """(S, H) -> [H] for cls/mean, [1, S, H] for none."""
    if pooling == "cls":
        return hidden[0]
    if pooling == "mean":
        return hidden.mean(axis=0)
    return hidden[None]


def optional_output(output: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name not in output:
        raise OptionError(f"this bundle has no {name} output; re-export it with albert-export {EXPORT_FLAGS[name]}")
    return output[name].astype(np.float32)


def layer_index(layer: Any, count: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -count <= layer < count:
        raise OptionError(f"hidden_state_layer must be an integer in {-count}..{count - 1} (0 is the embedding "
                          f"output, {count - 1} or -1 the last layer), got {layer!r}")
    return int(layer) % count


def run_each(
    ctx: TaskContext,
    items: list,
    pooling: str = "none",
    truncation: Any = None,
    return_tensors: bool = False,
    tokenize_kwargs: dict | None = None,
    output_hidden_states: bool = False,
    hidden_state_layer: int | None = None,
    output_attentions: bool = False,
) -> list:
    pooling = "none" if pooling is None else str(pooling).lower()
    if pooling not in POOLINGS:
        raise OptionError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    truncation, max_length = tokenizer_options(ctx, tokenize_kwargs, truncation=truncation)
    texts = [text_or_pair(item, "feature-extraction", pairs=False) for item in items]
    _, features = encode_features(ctx, texts, truncation, max_length)
    convert = (lambda value: value) if return_tensors else (lambda value: value.tolist())
    results = []
    for output in ctx.runner.run(features):
        hidden = output["last_hidden_state"].astype(np.float32)  # (S, H)
        if hidden_state_layer is not None or output_hidden_states:
            states = optional_output(output, HIDDEN_STATES)  # (L+1, S, H)
            if hidden_state_layer is not None:
                hidden = states[layer_index(hidden_state_layer, len(states))]
        value = convert(pooled(hidden, pooling))
        if output_hidden_states or output_attentions:
            value = {"features": value}
            if output_hidden_states:
                value[HIDDEN_STATES] = convert(states[:, None])  # (L+1, 1, S, H)
            if output_attentions:
                value[ATTENTIONS] = convert(optional_output(output, ATTENTIONS)[:, None])  # (L, 1, N, S, S)
        results.append(value)
    return results
