"""What every task head is and sees: the `Head` protocol (its stages), the `Features` one input becomes, and the
context a head runs in (a tokenizer, a runner that batches windows through the backend, the config)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from tokenizers import Tokenizer

from ..tokenizer import Feature, special_token_id


class Runner(Protocol):
    """What a task head needs to run features through the model."""
    def run(self, features: list[Feature]) -> list[dict[str, np.ndarray]]:
        """Batch the features (right padding, grouped by length), run the backend, and return one output dict
        per feature, in order, with the batch axis removed and sequence axes cut back to that feature's
        unpadded length."""


@dataclass
class TaskContext:
    """What a task head works with: the bundle's tokenizer, a runner, its config and max length."""
    tokenizer: Tokenizer  # the bundle's tokenizer.json, no truncation/padding configured
    runner: Runner
    config: dict[str, Any]  # the bundle's HF-style config.json
    max_length: int  # model_max_length (max positions usable by the tokenizer)
    special_tokens: dict[str, str]  # role -> token text: "cls", "sep", "pad", "mask", "unk"
    clean_up_tokenization_spaces: bool = False  # HF's decode option (tokenizer_config.json), for decoded text

    @property
    def id2label(self) -> dict[int, str]:
        """The config's id2label with integer keys (empty when it has none)."""
        return {int(k): v for k, v in self.config.get("id2label", {}).items()}

    def labels(self, count: int) -> list[str]:
        """The names of `count` logits: config.json's id2label, LABEL_i (what HF's config gives) for ids it lacks."""
        id2label = self.id2label
        return [id2label.get(i, f"LABEL_{i}") for i in range(count)]

    def token_id(self, role: str) -> int | None:
        """The id of the special token playing `role`; None when the bundle has none."""
        return special_token_id(self.tokenizer, self.special_tokens, role)


def as_batch(inputs: Any, params: dict[str, Any] | None = None) -> tuple[list, bool]:
    """(items, was_single): a list or tuple of inputs is a batch, anything else one input."""
    if isinstance(inputs, (list, tuple)):
        return list(inputs), False
    return [inputs], True


@dataclass(frozen=True)
class CallForm:
    """How the task's HF pipeline reads one call: which inputs are one item and which a batch, and how the items'
    results become the call's answer (runtime.pipelines.call_head applies it)."""

    # (items, single) from a call's inputs; may pop the keyword arguments that are inputs (question=, context=)
    items: Callable[[Any, dict[str, Any]], tuple[list, bool]] = as_batch
    # the inputs of pipeline(*args, **params), popping the keyword arguments that are inputs; None: the one
    # positional input or inputs= (Pipeline's own reading)
    inputs: Callable[[tuple, dict[str, Any]], Any] | None = None
    list_of_one_gives_its_result: bool = False  # fill-mask and question-answering: [x] answers as x does
    # text-classification's legacy: one string answers [result] unless the call itself passes this parameter
    single_text_listed_unless_given: str | None = None
    # the keys of the JSON objects one input may be (an albert-run line, an albert-serve input); with {"text"}
    # among them, a plain text is one too
    json_objects: tuple[frozenset[str], ...] = (frozenset({"text"}),)


@dataclass
class Features:
    """One input made ready for the model (a head's preprocess): its windows and what its postprocess reads."""

    windows: list[Feature]  # unbatched int64 model inputs, (S,) each ((C, S) for multiple-choice), in order
    settings: Any  # the checked parameters (the head's settings()); postprocess reuses them
    state: Any = None  # what decoding needs beyond the outputs: encodings, the context, the sentence, ...
    params: dict[str, Any] = field(default_factory=dict)  # the parameters as given (pipeline defaults merged)
    item: Any = None  # the input as given (Pipeline.preprocess sets it and params)


@runtime_checkable
class Head(Protocol):
    """A task's stages, as transformers' pipeline for the task does them (a module of runtime.tasks):
    settings (HF's _sanitize_parameters, once per call) -> preprocess (one input) -> [the runner runs the
    windows] -> postprocess (one input's outputs)."""

    CALL: CallForm

    def settings(self, ctx: TaskContext, params: dict[str, Any]) -> Any:
        """The call's parameters, checked once (OptionError / InputError / HF's warnings, as HF raises them)."""

    def preprocess(self, ctx: TaskContext, item: Any, settings: Any) -> Features:
        """One input as model windows, with what its postprocess needs."""

    def postprocess(self, ctx: TaskContext, features: Features, outputs: list[dict[str, np.ndarray]]) -> Any:
        """The input's result from the outputs of features.windows, in order."""
