"""Backends: dtype casting to what the model declares, options, and honest errors for what is not here."""
from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from runtime import pipeline
from runtime.backends.ort import OnnxRuntimeBackend
from runtime.bundle import ENGINE, MANIFEST, sha256_file
from runtime.errors import BackendError, OptionError
from runtime.runner import BatchRunner


@pytest.fixture()
def int32_model(tmp_path):
    """input_ids int32 [b, s], attention_mask int64 -> logits float [b, s] = input_ids * attention_mask."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input_ids"], ["ids64"], to=TensorProto.INT64),
            helper.make_node("Mul", ["ids64", "attention_mask"], ["product"]),
            helper.make_node("Cast", ["product"], ["logits"], to=TensorProto.FLOAT),
        ],
        "tiny",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence"])],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_inputs_are_cast_to_the_declared_dtypes(int32_model):
    backend = OnnxRuntimeBackend(int32_model, threads=1, graph_optimization_level="disable")
    assert backend.input_names == ["input_ids", "attention_mask"] and backend.output_names == ["logits"]
    out = backend.infer({"input_ids": np.array([[3, 4, 5]], dtype=np.int64), "attention_mask": np.array([[1, 1, 0]])})
    assert out["logits"].dtype == np.float32 and out["logits"].tolist() == [[3.0, 4.0, 0.0]]
    with pytest.raises(BackendError, match="no input"):
        backend.infer({"input_ids": np.ones((1, 2)), "attention_mask": np.ones((1, 2)), "token_type_ids": np.ones((1, 2))})


def test_io_binding_path_gives_the_same_outputs(int32_model):
    inputs = {"input_ids": np.array([[3, 4, 5], [6, 7, 8]]), "attention_mask": np.array([[1, 1, 0], [1, 0, 0]])}
    plain = OnnxRuntimeBackend(int32_model)
    bound = OnnxRuntimeBackend(int32_model, io_binding=True)  # the CUDA path's code, on CPU
    assert not plain.io_binding and bound.io_binding
    assert bound.infer(inputs)["logits"].tolist() == plain.infer(inputs)["logits"].tolist() == [[3, 4, 0], [6, 0, 0]]


def test_runner_pads_right_groups_by_length_and_cuts_back(int32_model):
    backend = OnnxRuntimeBackend(int32_model)
    runner = BatchRunner(backend, {"logits": (1,)}, batch_size=2, pad_token_id=7)
    features = [
        {"input_ids": np.arange(1, n + 1), "attention_mask": np.ones(n, dtype=np.int64), "token_type_ids": np.zeros(n, dtype=np.int64)}
        for n in (5, 2, 4, 1, 3)
    ]
    outputs = runner.run(features)
    assert [o["logits"].tolist() for o in outputs] == [list(map(float, range(1, n + 1))) for n in (5, 2, 4, 1, 3)]


def test_backend_option_errors(int32_model):
    with pytest.raises(OptionError, match="graph_optimization_level"):
        OnnxRuntimeBackend(int32_model, graph_optimization_level="max")
    with pytest.raises(OptionError, match="threads"):
        OnnxRuntimeBackend(int32_model, threads=0)
    with pytest.raises(BackendError, match="not available"):
        OnnxRuntimeBackend(int32_model, providers=["tensorrt"])
    with pytest.raises(BackendError, match="onnxruntime-gpu"):
        OnnxRuntimeBackend(int32_model, device="cuda")
    assert OnnxRuntimeBackend(int32_model, providers=["cpu"]).providers == ["CPUExecutionProvider"]


def test_tensorrt_backend_says_what_is_missing(handmade_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(handmade_bundle("fill-mask"), copy)
    (copy / ENGINE).write_bytes(b"not a real engine")
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["files"][ENGINE] = sha256_file(copy / ENGINE)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    found = {name: importlib.util.find_spec(name) is not None for name in ("tensorrt", "tensorrt_rtx", "cuda")}
    if not (found["tensorrt"] or found["tensorrt_rtx"]):  # the first thing missing is what the message names
        expected = "the tensorrt backend needs the `tensorrt` package (NVIDIA's index) or `tensorrt-rtx` package"
    elif not found["cuda"]:
        expected = "the tensorrt backend needs cuda-python: "
    else:  # both there, so the engine itself is read, and is no engine (or there is no GPU to load it on)
        expected = f"TensorRT cannot load {copy / ENGINE}"
    with pytest.raises(BackendError) as refused:
        pipeline(copy, backend="tensorrt", device="cuda")
    assert str(refused.value).startswith(expected), str(refused.value)
    with pytest.raises(OptionError, match="takes neither"):
        pipeline(copy, backend="tensorrt", device="cuda", threads=2)


class _EchoBackend:
    """tokens (B, [C,] S) -> "per_token" = ids * mask (B, [C,] S) and "count" = mask.sum(-1) (B, [C])."""

    input_names = ["input_ids", "attention_mask", "token_type_ids"]
    output_names = ["per_token", "count"]

    def __init__(self):
        self.shapes = []

    def infer(self, inputs):
        self.shapes.append(inputs["input_ids"].shape)
        mask = inputs["attention_mask"]
        return {"per_token": inputs["input_ids"] * mask, "count": mask.sum(-1)}


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=17),
    choices=st.lists(st.integers(2, 3), min_size=17, max_size=17),
    multiple_choice=st.booleans(),
    batch_size=st.integers(1, 6),
)
def test_runner_returns_each_feature_as_if_alone(lengths, choices, multiple_choice, batch_size):
    rng = np.random.default_rng(len(lengths))
    features = []
    for n, c in zip(lengths, choices):
        shape = (c, n) if multiple_choice else (n,)
        features.append({
            "input_ids": rng.integers(5, 100, shape), "attention_mask": np.ones(shape, dtype=np.int64),
            "token_type_ids": np.zeros(shape, dtype=np.int64),
        })
    backend = _EchoBackend()
    axes = {"per_token": (2,) if multiple_choice else (1,), "count": ()}
    outputs = BatchRunner(backend, axes, batch_size=batch_size, pad_token_id=0).run(features)
    for feature, output in zip(features, outputs):
        assert np.array_equal(output["per_token"], feature["input_ids"])
        assert np.array_equal(output["count"], feature["attention_mask"].sum(-1))
    assert all(shape[0] <= batch_size for shape in backend.shapes)
    assert sum(shape[0] for shape in backend.shapes) == len(features)
