"""The HF Inference API request form, read and checked without any web framework (albert-serve and the Triton
Python backend share it).

    {"inputs": X | [X, ...], "parameters": {...}, "options": {...}}

X is what one albert-run line holds: a text, or a JSON object ({"text", "text_pair"?}, {"question", "context"},
{"prompt", "choices"}), checked by runtime.lines.parse_line; parameters are the pipeline's keyword arguments.
The answer to a call is what `pipeline()(inputs, **parameters)` returns.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from runtime import Pipeline
from runtime.errors import InputError
from runtime.lines import json_value, parse_line

from .errors import ServingError


@dataclass(frozen=True)
class Limits:
    max_batch_size: int = 8  # inputs per batch
    max_delay: float = 0.005  # seconds the first call of a batch waits for more
    max_queue: int = 256  # calls waiting per model; past it: 503
    timeout: float = 30.0  # seconds per request, queue wait included; past it: 504
    max_request_bytes: int = 1 << 20
    max_input_chars: int = 100_000  # per text field of one input
    max_inputs: int = 256  # inputs in one request's list
    max_header_bytes: int = 16384  # request line and headers
    max_response_bytes: int = 16 << 20  # one answer's JSON
    read_timeout: float = 10.0  # seconds for a request's line and headers, then for its body


class RequestError(ServingError):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers


@dataclass
class Call:
    inputs: Any
    params: dict[str, Any]
    single: bool  # inputs is one input (batched with others), not a list
    future: Any = field(default=None, compare=False)  # the asyncio.Future albert-serve answers

    @property
    def size(self) -> int:
        return 1 if self.single else max(len(self.inputs), 1)

    def answer(self, pipe: Pipeline) -> Any:
        """What pipeline()(inputs, **params) returns; a single input through run_each, as in a shared batch."""
        if self.single:
            return pipe.run_each([self.inputs], **self.params)[0]
        return pipe(self.inputs, **self.params)

    @property
    def group(self) -> str | None:
        """Calls with the same group share one run_each; None: runs alone."""
        return json.dumps(self.params, sort_keys=True, default=str) if self.single else None


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


def response_json(result: Any) -> str:
    return json.dumps(result, ensure_ascii=False, allow_nan=False, default=json_value)
