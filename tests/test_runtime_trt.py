"""The TensorRT backend without a GPU: fakes of the tensorrt module and of cudart check which TensorRT package a
bundle's engine is run with (the flavour its manifest records) and that device memory lives from activate() to
deactivate(), reused and grown per shape, never allocated or freed per call."""
from __future__ import annotations

import json
import shutil
import sys
import types

import numpy as np
import pytest

import runtime.backends.trt as trt_backend
from runtime.backends import backend_from_bundle
from runtime.bundle import ENGINE, MANIFEST, load_bundle, sha256_file
from runtime.errors import BackendError
from runtime.extras import first_importable


def fake_tensorrt(name: str) -> types.ModuleType:
    """A tensorrt module whose engines take input_ids (B, S) int64 and give logits (B, S, 4) float32."""
    module = types.ModuleType(name)
    io_mode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    dtypes = {"input_ids": np.int64, "logits": np.float32}

    class Context:
        def __init__(self):
            self.shapes = {}

        def set_input_shape(self, tensor, shape):
            self.shapes[tensor] = tuple(shape)

        def set_tensor_address(self, tensor, pointer):
            assert pointer

        def get_tensor_shape(self, tensor):
            return (*self.shapes["input_ids"], 4)

        def execute_async_v3(self, stream):
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, index):
            return ("input_ids", "logits")[index]

        def get_tensor_mode(self, tensor):
            return io_mode.INPUT if tensor == "input_ids" else io_mode.OUTPUT

        def get_tensor_dtype(self, tensor):
            return dtypes[tensor]

        def get_tensor_shape(self, tensor):
            return (-1, -1) if tensor == "input_ids" else (-1, -1, 4)

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            return Engine()

    module.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    module.Runtime, module.TensorIOMode, module.nptype = Runtime, io_mode, lambda dtype: dtype
    return module


class FakeCudart:
    """cudart's calls as cuda-python returns them ((error, value) tuples), counting what is held."""

    def __init__(self):
        self.buffers, self.streams, self.mallocs, self.next = {}, set(), 0, 1

    def cudaMalloc(self, size):
        self.mallocs += 1
        pointer, self.next = self.next, self.next + 1
        self.buffers[pointer] = size
        return 0, pointer

    def cudaFree(self, pointer):
        del self.buffers[pointer]
        return (0,)

    def cudaStreamCreate(self):
        self.streams.add(self.next)
        self.next += 1
        return 0, self.next - 1

    def cudaStreamDestroy(self, stream):
        self.streams.remove(stream)
        return (0,)

    def cudaMemcpyAsync(self, destination, source, size, kind, stream):
        assert stream in self.streams
        return (0,)

    def cudaStreamSynchronize(self, stream):
        return (0,)


@pytest.fixture
def fakes(monkeypatch):
    modules = {name: fake_tensorrt(name) for name in trt_backend.FLAVOURS}
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    cudart = FakeCudart()
    monkeypatch.setattr(trt_backend, "_import_cudart", lambda: cudart)
    return modules, cudart


def engine_bundle(handmade_bundle, tmp_path, flavour: str | None):
    copy = tmp_path / "bundle"
    shutil.copytree(handmade_bundle("fill-mask"), copy)
    (copy / ENGINE).write_bytes(b"a plan")
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["files"][ENGINE] = sha256_file(copy / ENGINE)
    manifest["inputs"] = [{"name": "input_ids", "dtype": "int64", "dims": ["batch_size", "sequence_length"]}]
    manifest["outputs"] = [{"name": "logits", "dtype": "float32", "dims": ["batch_size", "sequence_length", 4]}]
    if flavour is not None:
        manifest["engine"] = {"flavour": flavour, "version": "1.0", "profiles": [], "compute_capabilities": ["8.6"]}
    (copy / MANIFEST).write_text(json.dumps(manifest))
    return load_bundle(copy)


@pytest.mark.parametrize("flavour, expected", [("tensorrt", "tensorrt"), ("tensorrt_rtx", "tensorrt_rtx"),
                                               (None, "tensorrt")])
def test_the_engine_runs_with_the_flavour_its_manifest_records(fakes, handmade_bundle, tmp_path, flavour, expected):
    modules, _ = fakes
    backend = backend_from_bundle(engine_bundle(handmade_bundle, tmp_path, flavour), "tensorrt", "cuda")
    assert backend.trt is modules[expected]


@pytest.mark.parametrize("flavour, missing", [("tensorrt_rtx", "tensorrt-rtx"), ("tensorrt", "NVIDIA's index")])
def test_a_missing_recorded_flavour_is_named_even_when_the_other_is_installed(fakes, monkeypatch, handmade_bundle,
                                                                             tmp_path, flavour, missing):
    monkeypatch.setitem(sys.modules, flavour, None)  # import fails
    bundle = engine_bundle(handmade_bundle, tmp_path, flavour)
    with pytest.raises(BackendError, match=f"built with {flavour}; .*{missing}"):
        backend_from_bundle(bundle, "tensorrt", "cuda")


def test_an_unknown_flavour_is_refused(fakes, handmade_bundle, tmp_path):
    with pytest.raises(BackendError, match="built with 'tensorrt_9'"):
        backend_from_bundle(engine_bundle(handmade_bundle, tmp_path, "tensorrt_9"), "tensorrt", "cuda")


def test_device_memory_lives_from_activate_to_deactivate(fakes, tmp_path):
    _, cudart = fakes
    plan = tmp_path / ENGINE
    plan.write_bytes(b"a plan")
    backend = trt_backend.TensorRTBackend(plan, "tensorrt")
    assert backend.active and len(cudart.streams) == 1 and cudart.mallocs == 0

    def infer(batch: int, length: int) -> dict:
        return backend.infer({"input_ids": np.zeros((batch, length), np.int64)})

    assert infer(2, 8)["logits"].shape == (2, 8, 4)
    assert cudart.mallocs == 2  # one buffer per tensor
    infer(2, 8)
    infer(1, 3)
    assert cudart.mallocs == 2 and sorted(cudart.buffers.values()) == [2 * 8 * 8, 2 * 8 * 4 * 4]  # reused
    assert infer(4, 16)["logits"].shape == (4, 16, 4)
    assert cudart.mallocs == 4 and sorted(cudart.buffers.values()) == [4 * 16 * 8, 4 * 16 * 4 * 4]  # grown once
    backend.deactivate()
    assert not backend.active and cudart.buffers == {} and cudart.streams == set()
    with pytest.raises(BackendError, match="deactivated"):
        infer(1, 3)
    backend.deactivate()  # twice: nothing left to free
    backend.activate()
    infer(1, 3)
    assert len(cudart.streams) == 1 and len(cudart.buffers) == 2
    backend.close()
    assert cudart.buffers == {} and cudart.streams == set()
    with trt_backend.TensorRTBackend(plan, "tensorrt") as scoped:
        scoped.infer({"input_ids": np.zeros((1, 2), np.int64)})
    assert cudart.buffers == {} and cudart.streams == set()


def test_garbage_collection_frees_what_an_active_backend_holds(fakes, tmp_path):
    _, cudart = fakes
    plan = tmp_path / ENGINE
    plan.write_bytes(b"a plan")
    backend = trt_backend.TensorRTBackend(plan)
    backend.infer({"input_ids": np.zeros((1, 2), np.int64)})
    del backend
    assert cudart.buffers == {} and cudart.streams == set()


def test_first_importable_follows_the_callers_order(fakes, monkeypatch):
    modules, _ = fakes
    assert first_importable(("tensorrt_rtx", "tensorrt")) is modules["tensorrt_rtx"]  # the build side's order
    assert first_importable(("tensorrt", "tensorrt_rtx")) is modules["tensorrt"]  # the runtime's
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)  # import fails
    assert first_importable(("tensorrt_rtx", "tensorrt")) is modules["tensorrt"]
    assert first_importable(("tensorrt_rtx",)) is None
