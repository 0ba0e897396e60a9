"""Triton Python-backend model: the runtime's stages (preprocess -> forward -> postprocess) inside Triton.

albert_export.triton copies this file as model.py; the config parameter "stage" says what it does:

  pipeline     REQUEST (TYPE_STRING, the HF Inference API JSON) -> RESPONSE (TYPE_STRING, what pipeline() returns,
               as JSON). The whole pipeline: every request Triton's dynamic batcher hands to one execute() is
               preprocessed, the windows of all of them run in one pipe.forward() (the only engine call, on the
               runtime's backend: config parameter "backend", onnxruntime or openvino), each is postprocessed.
  preprocess   REQUEST -> the model's inputs, one row per window of the request, padded to its longest
  postprocess  REQUEST and the model's outputs for those rows -> RESPONSE

preprocess and postprocess are the steps around Triton's own model backend in the ensemble (onnxruntime,
openvino, tensorrt_plan); postprocess preprocesses the same request again (the same windows, in the same order)
to know each window's length and what decoding needs, then hands the rows to pipe.postprocess.

The config parameter "bundle" is the bundle directory, relative to this model's directory, verified as albert-run
verifies it. The stub's Python environment needs the runtime (numpy<2: see scripts/setup-triton.sh). A bad
request is its own error: TritonError INVALID_ARG (HTTP 400) for what the client can fix, INTERNAL (500) else.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from runtime import Pipeline
from runtime.bundle import load_bundle
from runtime.errors import (
    BackendError, CallError, InputError, InputKeyError, OptionError, UnknownTaskError, is_failure, one_line,
)
from runtime.lines import answer_json

from serving.errors import StageError
from serving.requests import Limits, RequestError, hf_call

STAGES = ("pipeline", "preprocess", "postprocess")
CLIENT_ERRORS = (InputError, OptionError, CallError, InputKeyError, UnknownTaskError, RequestError)


class BadRequest(InputError):
    """A Triton request that is malformed."""
    pass


class NoEngine:
    """The engine of a preprocess or postprocess stage: Triton's model backend runs the model, not this process."""

    def __init__(self, bundle):
        self.input_names = [spec.name for spec in bundle.manifest.inputs]
        self.output_names = [spec.name for spec in bundle.manifest.outputs]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """StageError: a preprocess or postprocess stage runs no model."""
        raise StageError("a preprocess or postprocess stage runs no model; the ensemble's model step does")


def request_body(request) -> Any:
    """The JSON body in the request's REQUEST tensor; BadRequest where it is missing or malformed."""
    tensor = pb_utils.get_input_tensor_by_name(request, "REQUEST")
    if tensor is None:
        raise BadRequest("the request has no REQUEST tensor; send the HF Inference API JSON as a BYTES tensor REQUEST")
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise BadRequest(f"REQUEST holds {values.size} strings; send one JSON body per request")
    text = values[0]
    try:
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else str(text))
    except UnicodeDecodeError:
        raise BadRequest("REQUEST is not UTF-8 text; send the HF Inference API JSON") from None
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"REQUEST is not JSON ({one_line(exc)}); send {{\"inputs\": ..., \"parameters\": {{...}}}}") \
            from None


def error_response(exc: BaseException):
    """A Triton error response for `exc`: INVALID_ARG for client errors, else INTERNAL."""
    code = pb_utils.TritonError.INVALID_ARG if isinstance(exc, CLIENT_ERRORS) else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(one_line(exc), code))


def text_response(result: Any):
    """A Triton response whose RESPONSE tensor holds the result as JSON."""
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("RESPONSE", np.array([answer_json(result).encode("utf-8")], dtype=np.object_))])


class Prepared:
    """One request preprocessed: each input's features (a list request: a list of them)."""

    def __init__(self, pipe: Pipeline, body: Any, limits: Limits):
        self.call = hf_call(body, pipe.task, limits)
        settings = pipe.sanitize(**self.call.params)
        items = [self.call.inputs] if self.call.single else self.call.inputs
        self.features = [pipe.preprocess(item, settings) for item in items]
        self.windows = [window for features in self.features for window in features.windows]

    def answer(self, pipe: Pipeline, outputs: list[dict[str, np.ndarray]]) -> Any:
        """The results of each input from the model's outputs for its windows."""
        results, start = [], 0
        for features in self.features:
            results.append(pipe.postprocess(features, outputs[start:start + len(features.windows)]))
            start += len(features.windows)
        if self.call.single:
            return results[0]
        # a list answers as pipe(list) does: run_each's per-input results, then the call form's list rule
        head = pipe.head
        if head.CALL.list_of_one_gives_its_result and len(results) == 1:
            return results[0]
        listed = head.CALL.single_text_listed_unless_given
        if listed is not None:  # postprocess listed a text's result as a call with it alone does; in a list, not
            results = [r[0] if isinstance(f.item, str) and listed not in f.params else r
                       for r, f in zip(results, self.features)]
        return results


class TritonPythonModel:
    """The Triton Python backend model running a bundle's pipeline or one of its stages."""
    def initialize(self, args: dict[str, Any]) -> None:
        """Load the bundle's pipeline for the configured stage, and the model outputs and input limits of the config."""
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.stage = parameters.get("stage")
        if self.stage not in STAGES:
            raise StageError(f"config parameter stage is {self.stage!r}, not one of {', '.join(STAGES)}")
        bundle = load_bundle(Path(args["model_repository"]) / parameters["bundle"])
        if self.stage == "pipeline":
            self.pipe = Pipeline(bundle, backend=parameters.get("backend", "onnxruntime"),
                                 batch_size=int(parameters.get("batch_size", 16)))
        else:
            self.pipe = Pipeline(bundle, engine=NoEngine(bundle))
        self.model_outputs = [t["name"] for t in config["input"] if t["name"] != "REQUEST"]
        self.limits = Limits(max_inputs=int(parameters.get("max_inputs", Limits.max_inputs)),
                             max_input_chars=int(parameters.get("max_input_chars", Limits.max_input_chars)))

    def execute(self, requests: list) -> list:
        """The responses to the requests, each run by the configured stage."""
        if self.stage == "pipeline":
            return self.run_pipeline(requests)
        return [self.guarded(self.preprocess if self.stage == "preprocess" else self.postprocess, r) for r in requests]

    def guarded(self, step, request):
        """The step's response to the request, or its error response where the step fails."""
        try:
            return step(request)
        except BaseException as exc:  # one request's bad input is that request's error
            if not is_failure(exc):
                raise
            return error_response(exc)

    def run_pipeline(self, requests: list) -> list:
        """Every request's windows through one forward: Triton's batcher merges requests, forward batches windows."""
        prepared: list[Prepared | BaseException] = []
        for request in requests:
            try:
                prepared.append(Prepared(self.pipe, request_body(request), self.limits))
            except BaseException as exc:
                if not is_failure(exc):
                    raise
                prepared.append(exc)
        ready = [p for p in prepared if isinstance(p, Prepared)]
        try:
            outputs = self.pipe.forward([window for p in ready for window in p.windows])
        except BaseException as exc:
            if not is_failure(exc):
                raise
            failed = exc if isinstance(exc, BackendError) else BackendError(f"the model failed: {one_line(exc)}")
            return [error_response(p if isinstance(p, BaseException) else failed) for p in prepared]
        responses, start = [], 0
        for p in prepared:
            if isinstance(p, BaseException):
                responses.append(error_response(p))
                continue
            mine = outputs[start:start + len(p.windows)]
            start += len(p.windows)
            responses.append(self.guarded(lambda _, p=p, mine=mine: text_response(p.answer(self.pipe, mine)), None))
        return responses

    def preprocess(self, request):
        """The model inputs of one request's windows."""
        prepared = Prepared(self.pipe, request_body(request), self.limits)
        choices = {window["input_ids"].shape[:-1] for window in prepared.windows}
        if len(choices) > 1:
            raise BadRequest("the inputs of one request have different numbers of choices; send them as requests "
                             "of their own")
        batch = self.pipe.runner._padded(prepared.windows)  # the runner's own padding (pad id, zeros)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(name, batch[name].astype(np.int64)) for name in self.pipe.runner.backend.input_names])

    def postprocess(self, request):
        """The JSON response made from the model's outputs for one request's windows."""
        prepared = Prepared(self.pipe, request_body(request), self.limits)
        rows = len(prepared.windows)
        outputs = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.model_outputs}
        for name, value in outputs.items():
            if value.shape[0] != rows:
                raise StageError(f"output {name} has {value.shape[0]} rows for the request's {rows} windows; the "
                                 "model's outputs do not belong to this request")
        runner = self.pipe.runner
        per_window = [{name: runner._row(name, value, row, rows, window["input_ids"].shape[-1])
                       for name, value in outputs.items()} for row, window in enumerate(prepared.windows)]
        return text_response(prepared.answer(self.pipe, per_window))

    def finalize(self) -> None:
        """Release the pipeline."""
        self.pipe = None
