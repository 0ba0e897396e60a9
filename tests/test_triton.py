"""The Triton model repository: every config.pbtxt parsed with Triton's own model_config schema and checked
against the ONNX model; the ensemble's pre/post-processing run step by step (Triton itself is not available
here: a fake triton_python_backend_utils stands in for the Python backend, onnxruntime for the ONNX model)."""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import json_format, text_format

from tritonclient.grpc import model_config_pb2  # Triton's own schema (pip install tritonclient grpcio)

from albert_export import cli
from albert_export.triton import TritonError, write_repository
from runtime import pipeline

ORT_TYPES = {"tensor(int64)": "TYPE_INT64", "tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}
SEED = "Plants create [MASK] through photosynthesis."


def parsed(path: Path):
    """config.pbtxt as Triton reads it; text_format refuses any field the schema does not have."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def data_type(config_tensor) -> str:
    return model_config_pb2.DataType.Name(config_tensor.data_type)


@pytest.fixture(scope="module")
def repositories(handmade_bundle, tmp_path_factory):
    made = {}
    for task in ("fill-mask", "question-answering", "text-classification", "multiple-choice"):
        made[task] = (handmade_bundle(task), write_repository(handmade_bundle(task), tmp_path_factory.mktemp(task)))
    return made


@pytest.mark.parametrize("task", ["fill-mask", "question-answering", "text-classification", "multiple-choice"])
def test_every_config_parses_and_matches_the_onnx_model(repositories, task):
    bundle, repository = repositories[task]
    name = bundle.name
    configs = {path.parent.name: parsed(path) for path in repository.glob("*/config.pbtxt")}
    assert set(configs) == {name, f"{name}-onnx", f"{name}-preprocess", f"{name}-postprocess"}
    assert all(config.name == model for model, config in configs.items())

    onnx_model = configs[f"{name}-onnx"]
    assert onnx_model.platform == "onnxruntime_onnx" and onnx_model.max_batch_size == 32
    assert onnx_model.dynamic_batching.max_queue_delay_microseconds == 5000
    assert [(g.count, g.kind) for g in onnx_model.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    session = ort.InferenceSession(str(repository / f"{name}-onnx" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    for config_tensors, ort_tensors in ((onnx_model.input, session.get_inputs()),
                                        (onnx_model.output, session.get_outputs())):
        assert [t.name for t in config_tensors] == [t.name for t in ort_tensors]
        for ours, theirs in zip(config_tensors, ort_tensors):
            assert data_type(ours) == ORT_TYPES[theirs.type]
            assert list(ours.dims) == [d if isinstance(d, int) else -1 for d in theirs.shape[1:]]
    assert [i.name for i in onnx_model.input] == [s.name for s in pipeline(bundle).bundle.manifest.inputs]

    pre, post = configs[f"{name}-preprocess"], configs[f"{name}-postprocess"]
    for stage, config in (("preprocess", pre), ("postprocess", post)):
        assert config.backend == "python" and config.max_batch_size == 0
        assert config.parameters["stage"].string_value == stage
        assert (repository / config.name / config.parameters["bundle"].string_value / "manifest.json").is_file()
        assert (repository / config.name / "1" / "model.py").read_text() == (
            Path(__file__).parents[1] / "serving" / "triton_model.py").read_text()
    assert [(t.name, data_type(t), list(t.dims)) for t in pre.output] == [
        (t.name, data_type(t), [-1, *t.dims]) for t in onnx_model.input]
    assert [(t.name, data_type(t), list(t.dims)) for t in post.input][1:] == [
        (t.name, data_type(t), [-1, *t.dims]) for t in onnx_model.output]

    ensemble = configs[name]
    assert ensemble.platform == "ensemble"
    assert [(t.name, data_type(t), list(t.dims)) for t in ensemble.input] == [("REQUEST", "TYPE_STRING", [1])]
    assert [(t.name, data_type(t), list(t.dims)) for t in ensemble.output] == [("RESPONSE", "TYPE_STRING", [1])]
    produced = {"REQUEST": ("TYPE_STRING", "ensemble input")}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        model_inputs = {t.name: data_type(t) for t in model.input}
        model_outputs = {t.name: data_type(t) for t in model.output}
        assert set(step.input_map) == set(model_inputs), step.model_name
        for model_input, tensor in step.input_map.items():
            assert produced[tensor][0] == model_inputs[model_input], (step.model_name, model_input)
        for model_output, tensor in step.output_map.items():
            produced[tensor] = (model_outputs[model_output], step.model_name)
    assert produced["RESPONSE"] == ("TYPE_STRING", f"{name}-postprocess")


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray):
        self._name, self._array = name, array

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array


class FakeResponse:
    def __init__(self, output_tensors=(), error=None):
        self.output_tensors, self.error = list(output_tensors), error


class FakeError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message: str, code: str = "INTERNAL"):
        self.message, self.code = message, code


class FakeRequest:
    def __init__(self, tensors: dict[str, np.ndarray]):
        self.tensors = tensors


@pytest.fixture
def fake_backend(monkeypatch):
    """triton_python_backend_utils as far as model.py uses it (Tensor, InferenceResponse, TritonError, ...)."""
    utils = types.ModuleType("triton_python_backend_utils")
    utils.Tensor = FakeTensor
    utils.InferenceResponse = FakeResponse
    utils.TritonError = FakeError
    utils.get_input_tensor_by_name = lambda request, name: FakeTensor(name, request.tensors[name])
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    return utils


def python_model(repository: Path, model: str):
    """model.py of a repository model, loaded and initialized as the Python backend does it."""
    spec = importlib.util.spec_from_file_location(f"triton_{model.replace('-', '_')}", repository / model / "1" /
                                                  "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    instance = module.TritonPythonModel()
    config = json_format.MessageToJson(parsed(repository / model / "config.pbtxt"), preserving_proto_field_name=True)
    instance.initialize({"model_config": config, "model_repository": str(repository / model), "model_version": "1"})
    return instance


def run_ensemble(repository: Path, name: str, bodies: list[dict]) -> list:
    """The ensemble's steps as Triton runs them, tensors routed by the ensemble config's input/output maps."""
    ensemble = parsed(repository / name / "config.pbtxt")
    models = {}
    session = ort.InferenceSession(str(repository / f"{name}-onnx" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    tensors = [{"REQUEST": np.array([json.dumps(body).encode()], dtype=np.object_)} for body in bodies]
    errors: list = [None] * len(bodies)
    for step in ensemble.ensemble_scheduling.step:
        live = [i for i in range(len(bodies)) if errors[i] is None]
        requests = [{key: tensors[i][value] for key, value in step.input_map.items()} for i in live]
        if step.model_name.endswith("-onnx"):
            outputs = [dict(zip([o.name for o in session.get_outputs()], session.run(None, r))) for r in requests]
            responses = [FakeResponse([FakeTensor(n, a) for n, a in o.items()]) for o in outputs]
        else:
            model = models.setdefault(step.model_name, python_model(repository, step.model_name))
            responses = model.execute([FakeRequest(r) for r in requests])
        assert len(responses) == len(requests)
        for i, response in zip(live, responses):
            if response.error is not None:
                errors[i] = response.error.message
                continue
            produced = {t.name(): t.as_numpy() for t in response.output_tensors}
            for key, value in step.output_map.items():
                tensors[i][value] = produced[key]
    return [{"error": errors[i]} if errors[i] else json.loads(tensors[i]["RESPONSE"][0]) for i in range(len(bodies))]


def same(answer):
    return json.loads(json.dumps(answer, default=lambda v: v.item()))


ENSEMBLE_CASES = {
    "fill-mask": [(SEED, {}), (SEED, {"top_k": 2}), ([SEED, "Two [MASK] and [MASK]."], {}), ([SEED], {})],
    "question-answering": [
        ({"question": "Who?", "context": "Alice went home early today."}, {"top_k": 2}),
        ({"question": "Where?", "context": " ".join(["Bob lives in Paris."] * 40)}, {"doc_stride": 16, "max_seq_len": 48}),
        ([{"question": "Who?", "context": "Alice went home."}, {"question": "Why?", "context": "It rained."}], {}),
    ],
    "text-classification": [("This is great.", {}), ({"text": "A.", "text_pair": "B."}, {"top_k": None})],
    "multiple-choice": [({"prompt": "The sky is", "choices": ["blue.", "a very green thing."]}, {})],
}


@pytest.mark.parametrize("task", sorted(ENSEMBLE_CASES))
def test_the_ensemble_answers_what_pipeline_returns(repositories, fake_backend, task):
    bundle, repository = repositories[task]
    cases = ENSEMBLE_CASES[task]
    answers = run_ensemble(repository, bundle.name, [{"inputs": i, "parameters": p} for i, p in cases])
    pipe = pipeline(bundle)
    assert answers == [same(pipe(inputs, **params)) for inputs, params in cases]


def test_a_bad_request_is_its_own_error(repositories, fake_backend):
    bundle, repository = repositories["fill-mask"]
    bodies = [{"inputs": SEED}, {"inputs": "no mask"}, {"text": SEED}, {"inputs": SEED, "parameters": {"top_k": 0}}]
    answers = run_ensemble(repository, bundle.name, bodies)
    assert answers[0] == same(pipeline(bundle)(SEED))
    assert answers[1]["error"].startswith("No mask_token ([MASK]) found on the input")
    assert answers[2] == {"error": 'the request body is a JSON object {"inputs": ..., "parameters": {...}}'}
    assert answers[3]["error"].startswith("top_k must be a positive integer")


def test_an_engine_gets_a_tensorrt_plan_model(handmade_bundle, tmp_path):
    import shutil

    from runtime.bundle import ENGINE, MANIFEST, Manifest, sha256_file

    bundle = tmp_path / "with-engine"
    shutil.copytree(handmade_bundle("text-classification"), bundle)
    (bundle / ENGINE).write_bytes(b"not a real plan: Triton would load it, these tests only write the config")
    manifest = Manifest.from_dict(json.loads((bundle / MANIFEST).read_text()))
    manifest.files[ENGINE] = sha256_file(bundle / ENGINE)
    (bundle / MANIFEST).write_text(manifest.to_json())
    repository = write_repository(bundle, tmp_path / "repo")
    trt = parsed(repository / "with-engine-trt" / "config.pbtxt")
    onnx_model = parsed(repository / "with-engine-onnx" / "config.pbtxt")
    assert trt.platform == "tensorrt_plan" and trt.default_model_filename == ENGINE
    assert (repository / "with-engine-trt" / "1" / ENGINE).read_bytes() == (bundle / ENGINE).read_bytes()
    assert [g.kind for g in trt.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert trt.input == onnx_model.input and trt.output == onnx_model.output
    steps = parsed(repository / "with-engine" / "config.pbtxt").ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["with-engine-preprocess", "with-engine-trt", "with-engine-postprocess"]
    with pytest.raises(TritonError, match="already has model"):
        write_repository(bundle, tmp_path / "repo")


def test_albert_export_triton_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = cli.main(["--task", "text-classification", "--output", "bundle", "--triton", "repo", "--no-validate"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.strip() == str(tmp_path / "bundle")
    assert sorted(p.parent.name for p in (tmp_path / "repo").glob("*/config.pbtxt")) == [
        "bundle", "bundle-onnx", "bundle-postprocess", "bundle-preprocess"]
    for path in (tmp_path / "repo").glob("*/config.pbtxt"):
        parsed(path)
