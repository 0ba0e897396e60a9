"""Triton Python-backend model: the runtime's pre- and post-processing around the ONNX (or TensorRT) model.

albert_export.triton copies this file as model.py into two models of a repository, told apart by the config
parameter "stage":

  preprocess   REQUEST (TYPE_STRING [1], the HF Inference API JSON) -> input_ids, attention_mask, token_type_ids
  postprocess  REQUEST and the model's outputs -> RESPONSE (TYPE_STRING [1], what pipeline() returns, as JSON)

Both run the bundle's task head exactly as `runtime.pipeline` does: preprocess stops it where it would call the
model and sends the padded batch on; postprocess runs the same head again on the same request (the same
features, in the same order) and gives it the model's outputs instead of calling a model. The config parameter
"bundle" is the bundle directory, relative to this model's directory (the model's own version folder holds the
whole bundle, so it is verified as albert-run verifies it). The Triton server's Python needs the runtime
installed (`pip install albert-export`); onnxruntime runs only the pipeline's one-input model check at start.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from runtime import Pipeline
from runtime.backends import backend_from_bundle
from runtime.bundle import load_bundle
from runtime.errors import is_failure, one_line

from serving.errors import StageError
from serving.requests import Limits, hf_call, response_json

ONE_BATCH = 1 << 30  # every feature of a request in one model run, so the two stages see the same batch


class Captured(BaseException):
    """Raised by the preprocessing engine with the batch the head wanted to run (a BaseException, so no
    head's error handling mistakes it for a failure)."""

    def __init__(self, inputs: dict[str, np.ndarray]):
        super().__init__("captured")
        self.inputs = inputs


class StageEngine:
    """The engine a stage's pipeline runs on. While the pipeline is built, a real onnxruntime session answers
    (runtime.Pipeline checks the model's outputs with one tiny input); it is dropped once the pipeline exists."""

    def __init__(self, probe):
        self.probe = probe
        self.input_names, self.output_names = list(probe.input_names), list(probe.output_names)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.probe is not None:
            return self.probe.infer(inputs)
        return self.stage_infer(inputs)


class CapturingEngine(StageEngine):
    def stage_infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise Captured(inputs)


class ReplayEngine(StageEngine):
    """Answers the head's one run with outputs the model already computed for that batch."""

    outputs: dict[str, np.ndarray] = {}

    def stage_infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = inputs["input_ids"].shape[0]
        for name, value in self.outputs.items():
            if value.shape[0] != rows:
                raise StageError(f"output {name} has {value.shape[0]} rows for a batch of {rows}; the model's "
                                 "outputs do not belong to this request")
        return self.outputs


def stage_inputs(pipe: Pipeline, call) -> dict[str, np.ndarray]:
    """The padded batch the head runs for this call."""
    try:
        call.answer(pipe)
    except Captured as captured:
        return captured.inputs
    raise StageError("the request needs no model run")


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.stage = parameters["stage"]
        if self.stage not in ("preprocess", "postprocess"):
            raise StageError(f"stage {self.stage!r} is neither preprocess nor postprocess")
        bundle = load_bundle(Path(args["model_repository"]) / parameters["bundle"])
        self.output_names = [o["name"] for o in config["input"] if o["name"] != "REQUEST"]
        engine_type = CapturingEngine if self.stage == "preprocess" else ReplayEngine
        self.engine = engine_type(backend_from_bundle(bundle, "onnxruntime", "cpu"))
        self.pipe = Pipeline(bundle, engine=self.engine, batch_size=ONE_BATCH)
        self.engine.probe = None
        self.limits = Limits(max_inputs=int(parameters.get("max_inputs", Limits.max_inputs)),
                             max_input_chars=int(parameters.get("max_input_chars", Limits.max_input_chars)))

    def execute(self, requests: list) -> list:
        return [self.answer(request) for request in requests]

    def answer(self, request):
        try:
            text = pb_utils.get_input_tensor_by_name(request, "REQUEST").as_numpy().reshape(-1)[0]
            body = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
            call = hf_call(body, self.pipe.task, self.limits)
            if self.stage == "preprocess":
                batch = stage_inputs(self.pipe, call)
                tensors = [pb_utils.Tensor(name, batch[name].astype(np.int64)) for name in self.engine.input_names]
                return pb_utils.InferenceResponse(output_tensors=tensors)
            self.engine.outputs = {
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.output_names
            }
            result = np.array([response_json(call.answer(self.pipe)).encode("utf-8")], dtype=np.object_)
            return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("RESPONSE", result)])
        except BaseException as exc:  # one request's bad input is that request's error
            if not is_failure(exc):
                raise
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(one_line(exc)))

    def finalize(self) -> None:
        self.pipe = None
