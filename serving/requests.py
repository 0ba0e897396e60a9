"""The HF Inference API request form, read and checked without any web framework (albert-serve and the Triton
Python backend share it).

    {"inputs": X | [X, ...], "parameters": {...}, "options": {...}}

X is what one albert-run line holds: a text, or a JSON object ({"text", "text_pair"?}, {"question", "context"},
{"prompt", "choices"}), checked by runtime.lines.parse_line; parameters are the pipeline's keyword arguments.
The answer to a call is what `pipeline()(inputs, **parameters)` returns, through the runtime's stages:
`Call.prepare` preprocesses its inputs (pipe.sanitize / pipe.preprocess) into windows, checking the request's
work limits as it goes; the windows' outputs (pipe.forward, here or batched with other requests' windows by
serving.batcher) go to `Prepared.finish`, which postprocesses each input and shapes the answer as
runtime.pipelines.call_head does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime import Pipeline
from runtime.errors import InputError
from runtime.lines import parse_line
from runtime.pipelines import one_result, split_outputs
from runtime.tasks.base import Features

from .errors import ServingError


@dataclass(frozen=True)
class Limits:
    """What the server accepts: batch size and delay, queue length and request limits."""
    max_batch_size: int = 8  # windows per batch
    max_batch_tokens: int = 1024  # tokens per batch, padding included (one window past it runs alone)
    max_delay: float = 0.005  # seconds the first call of a batch waits for more
    max_queue: int = 256  # calls waiting per model; past it: 503
    timeout: float = 30.0  # seconds per request, queue wait included; past it: 504
    max_request_bytes: int = 1 << 20
    max_input_chars: int = 100_000  # per text field of one input
    max_inputs: int = 256  # inputs in one request's list
    max_header_bytes: int = 16384  # request line and headers
    max_response_bytes: int = 16 << 20  # one answer's JSON
    max_windows: int = 2048  # model windows of one request (QA/NER chunks, multiple-choice rows)
    max_answers: int = 10_000  # answers one request asks for (fill-mask: masks x top_k; top_k per input)
    read_timeout: float = 10.0  # seconds for a request's line and headers, then for its body


class RequestError(ServingError):
    """An error answered with an HTTP status (and optional headers) and one message."""
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers


ANSWER_BYTES = 120  # JSON of one fill-mask proposal beside its `sequence` (score, token, token_str, keys)


@dataclass
class Prepared:
    """A call's inputs made ready for the model: features per input, their windows flattened in order."""

    items: list
    single: bool
    called_with: frozenset
    settings: Any  # runtime.pipelines.Settings
    features: list[Features]
    windows: list[dict[str, np.ndarray]]
    answers: int  # answers asked for, all inputs together (see answers_asked)

    def finish(self, pipe: Pipeline, outputs: list[dict[str, np.ndarray]]) -> Any:
        """The call's answer from its windows' outputs: each input postprocessed, shaped as call_head shapes it."""
        head, context = pipe.head, self.settings.context
        results = [head.postprocess(context, feature, per_input)
                   for feature, per_input in zip(self.features, split_outputs(outputs, self.features))]
        if self.single or (head.CALL.list_of_one_gives_its_result and len(results) == 1):
            return one_result(head, self.items[0], results[0], self.called_with)
        return results


@dataclass
class Call:
    """One request's inputs and parameters for a pipeline."""
    inputs: Any
    params: dict[str, Any]
    single: bool  # inputs is one input, not a list
    future: Any = field(default=None, compare=False)  # the asyncio.Future albert-serve answers

    @property
    def size(self) -> int:
        """How many inputs the call holds (at least 1)."""
        return 1 if self.single else max(len(self.inputs), 1)

    @property
    def chars(self) -> int:
        """How many characters the call's texts hold, every input, field and parameter (targets) together."""
        return text_chars(self.inputs) + text_chars(self.params)

    def prepare(self, pipe: Pipeline, limits: "Limits | None" = None) -> Prepared:
        """Preprocess every input (InputError/OptionError as pipe(inputs, **params) raises them), refusing with
        a 413 naming the limit a request past --max-windows, --max-answers or (fill-mask, whose answers repeat
        the text) --max-response-bytes, before anything runs."""
        limits = limits or Limits()
        params = dict(self.params)
        items, single = pipe.head.CALL.items(self.inputs, params)
        settings = pipe.sanitize(**params)
        features, windows, answers, size = [], [], 0, 0
        for item in items:
            feature = pipe.preprocess(item, settings)
            features.append(feature)
            windows += feature.windows
            if len(windows) > limits.max_windows:
                raise RequestError(413, f"this request makes over {limits.max_windows} model windows "
                                        f"(--max-windows); send shorter inputs or fewer of them, or a larger stride")
            count = answers_asked(pipe, feature)
            answers += count
            if answers > limits.max_answers:
                raise RequestError(413, f"this request asks for over {limits.max_answers} answers (--max-answers; "
                                        "fill-mask: masks x top_k); ask for a smaller top_k or fewer masks")
            if pipe.task == "fill-mask":
                size += count * (len(json.dumps(item, ensure_ascii=False)) + ANSWER_BYTES)
                if size > limits.max_response_bytes:
                    raise RequestError(413, f"the answer would take over {limits.max_response_bytes} bytes "
                                            "(--max-response-bytes; each fill-mask proposal repeats the text); ask "
                                            "for a smaller top_k or send shorter texts")
        return Prepared(items, single, frozenset(self.params), settings, features, windows, answers)

    def answer(self, pipe: Pipeline, limits: "Limits | None" = None) -> Any:
        """What pipeline()(inputs, **params) returns, through the stages in one forward."""
        prepared = self.prepare(pipe, limits)
        return prepared.finish(pipe, pipe.forward(prepared.windows))


def answers_asked(pipe: Pipeline, feature: Features) -> int:
    """How many answers one input asks for: fill-mask masks x top_k (at most the vocabulary or the targets),
    top_k elsewhere where the task takes one, else one."""
    settings = feature.settings
    top_k = getattr(settings, "top_k", None)
    top_k = top_k if isinstance(top_k, int) else 1
    mask_id = getattr(settings, "mask_id", None)
    if mask_id is None:
        return top_k
    ids = feature.windows[0]["input_ids"]
    masks = int(np.count_nonzero(ids == mask_id))
    vocab = len(settings.targets) if getattr(settings, "targets", None) is not None else pipe.config.get("vocab_size")
    return masks * (min(top_k, vocab) if isinstance(vocab, int) else top_k)


def text_chars(value: Any) -> int:
    """Characters of every string in an input or a list of them (texts, questions, contexts, choices)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        value = list(value.values())
    return sum(text_chars(v) for v in value) if isinstance(value, list) else 0


def checked_input(item: Any, task: str, limits: Limits) -> Any:
    """One input as the pipeline takes it, checked as albert-run checks one line (runtime.lines.parse_line)."""
    if isinstance(item, str):
        text = item if not item.lstrip().startswith("{") else json.dumps({"text": item})
    elif isinstance(item, dict):
        text = json.dumps(item)
    else:
        raise InputError(f"each input is a string or a JSON object, not {type(item).__name__}")
    for value in item.values() if isinstance(item, dict) else [item]:
        for field in value if isinstance(value, list) else [value]:
            if isinstance(field, str) and len(field) > limits.max_input_chars:
                raise RequestError(413, f"an input text has {len(field)} characters; this server takes at most "
                                        f"{limits.max_input_chars} (--max-input-chars)")
    return parse_line(text, task)


def hf_call(body: Any, task: str, limits: Limits) -> Call:
    """The call an HF Inference API body makes; InputError where the body is malformed."""
    if not isinstance(body, dict) or "inputs" not in body:
        raise InputError('the request body is a JSON object {"inputs": ..., "parameters": {...}}')
    unknown = sorted(set(body) - {"inputs", "parameters", "options"})
    if unknown:
        raise InputError(f"unknown request field(s) {', '.join(unknown)}; the body takes inputs, parameters, options")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputError(f"parameters is a JSON object of the pipeline's keyword arguments, not {type(params).__name__}")
    inputs = body["inputs"]
    if isinstance(inputs, list):
        if not inputs:
            raise InputError("inputs is an empty list; give a text, a JSON object or a list of them")
        if len(inputs) > limits.max_inputs:
            raise RequestError(413, f"inputs holds {len(inputs)} items; this server takes at most {limits.max_inputs} "
                                    "per request (--max-inputs)")
        return Call([checked_input(item, task, limits) for item in inputs], params, single=False)
    return Call(checked_input(inputs, task, limits), params, single=True)

