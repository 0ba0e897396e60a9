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

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..arguments import is_integer
from ..errors import OptionError
from ..taskspec import OPTIONAL_OUTPUTS, TASKS
from .base import CallForm, Features, TaskContext
from .common import encode_features, refuse_unknown, text_or_pair, tokenizer_options

PARAMETERS = TASKS["feature-extraction"].parameters
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
    """The output `name` as float32; OptionError saying how to re-export where the bundle lacks it."""
    if name not in output:
        raise OptionError(f"this bundle has no {name} output; re-export it with albert-export {EXPORT_FLAGS[name]}")
    return output[name].astype(np.float32)


def layer_index(layer: Any, count: int) -> int:
    """hidden_state_layer as an index from 0, negatives counting from the last; OptionError when out of range."""
    if not is_integer(layer) or not -count <= layer < count:
        raise OptionError(f"hidden_state_layer must be an integer in {-count}..{count - 1} (0 is the embedding "
                          f"output, {count - 1} or -1 the last layer), got {layer!r}")
    return int(layer) % count


@dataclass(frozen=True)
class FeatureSettings:
    """The feature-extraction parameters of one call, checked."""
    pooling: str
    truncation: Any
    max_length: int
    return_tensors: bool
    output_hidden_states: bool
    hidden_state_layer: int | None
    output_attentions: bool


def settings(ctx: TaskContext, params: dict[str, Any]) -> FeatureSettings:
    """The feature-extraction parameters checked; CallError for unknown ones."""
    refuse_unknown("feature-extraction", params, PARAMETERS)
    pooling = params.get("pooling")
    pooling = "none" if pooling is None else str(pooling).lower()
    if pooling not in POOLINGS:
        raise OptionError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    truncation, max_length = tokenizer_options(ctx, params.get("tokenize_kwargs"), truncation=params.get("truncation"))
    return FeatureSettings(pooling, truncation, max_length, bool(params.get("return_tensors", False)),
                           bool(params.get("output_hidden_states", False)), params.get("hidden_state_layer"),
                           bool(params.get("output_attentions", False)))


def preprocess(ctx: TaskContext, item: Any, settings: FeatureSettings) -> Features:
    """The features of one feature-extraction input."""
    text = text_or_pair(item, "feature-extraction", pairs=False)
    _, features = encode_features(ctx, [text], settings.truncation, settings.max_length)
    return Features(features, settings)


def postprocess(ctx: TaskContext, features: Features, outputs: list[dict[str, np.ndarray]]) -> Any:
    """The hidden states (pooled or per token) of one input, as arrays or nested lists."""
    s, output = features.settings, outputs[0]
    convert = (lambda value: value) if s.return_tensors else (lambda value: value.tolist())
    hidden = output["last_hidden_state"].astype(np.float32)  # (S, H)
    if s.hidden_state_layer is not None or s.output_hidden_states:
        states = optional_output(output, HIDDEN_STATES)  # (L+1, S, H)
        if s.hidden_state_layer is not None:
            hidden = states[layer_index(s.hidden_state_layer, len(states))]
    value = convert(pooled(hidden, s.pooling))
    if s.output_hidden_states or s.output_attentions:
        value = {"features": value}
        if s.output_hidden_states:
            value[HIDDEN_STATES] = convert(states[:, None])  # (L+1, 1, S, H)
        if s.output_attentions:
            value[ATTENTIONS] = convert(optional_output(output, ATTENTIONS)[:, None])  # (L, 1, N, S, S)
    return value
