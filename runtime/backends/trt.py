"""TensorRT engine.plan on a GPU, through the package it was built with (`tensorrt` 10.x/11.x or `tensorrt_rtx`,
as the manifest's engine section records), with cuda-python.

Both packages are imported when the backend is created, never at `import runtime`. Engines are strongly
typed: the IO dtypes come from the engine. A runner in Polygraphy's shape: `activate()` (done on creation) loads
the engine and creates its CUDA stream; `infer()` reuses one device buffer per tensor, growing it only when a
batch needs more; `deactivate()` (and `close()`, and garbage collection) frees the buffers and the stream. Not
run by this project's CPU tests (no GPU there): they drive it with fakes of tensorrt and cudart.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendError
from ..extras import first_importable, install_command
from .base import BaseBackend, ModelTensor

FLAVOURS = ("tensorrt", "tensorrt_rtx")  # EngineInfo.flavour; without one recorded, tried in this order
PACKAGE_OF_FLAVOUR = {"tensorrt": "`tensorrt` package (NVIDIA's index)", "tensorrt_rtx": "`tensorrt-rtx` package"}
HOST_TO_DEVICE, DEVICE_TO_HOST = 1, 2  # cudaMemcpyKind


def import_tensorrt(flavour: str | None = None):
    """The TensorRT module for engines of `flavour` (a plan built by one does not load in the other)."""
    if flavour is not None and flavour not in FLAVOURS:
        raise BackendError(f"the engine was built with {flavour!r}, not {' or '.join(FLAVOURS)}; rebuild it with "
                           "albert-export --engine tensorrt")
    names = FLAVOURS if flavour is None else (flavour,)
    trt = first_importable(names)
    if trt is not None:
        return trt
    built = "" if flavour is None else f"the engine was built with {flavour}; "
    wanted = " or ".join(PACKAGE_OF_FLAVOUR[name] for name in names)
    raise BackendError(f"{built}the tensorrt backend needs the {wanted} ({install_command('tensorrt')}); "
                       "or use --backend onnxruntime")


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6

        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart

        return cudart
    except ImportError as exc:
        raise BackendError(f"the tensorrt backend needs cuda-python: {install_command('tensorrt')}") from exc


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA call failed: {err}")
    return rest[0] if len(rest) == 1 else rest


class TensorRTBackend(BaseBackend):
    """A backend running a bundle's engine.plan with TensorRT on a CUDA GPU."""
    source = "engine.plan"

    def __init__(self, engine_path: str | Path, flavour: str | None = None):
        self.engine_path = Path(engine_path)
        self.trt = import_tensorrt(flavour)
        self.cudart = _import_cudart()
        self.active = False
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor name -> (device pointer, bytes)
        self.activate()

    def activate(self) -> None:
        """Load the engine, create its execution context and CUDA stream (no-op when active)."""
        if self.active:
            return
        logger = self.trt.Logger(self.trt.Logger.WARNING)
        try:
            self.engine = self.trt.Runtime(logger).deserialize_cuda_engine(self.engine_path.read_bytes())
        except Exception as exc:  # TensorRT raises RuntimeError/TypeError variants by version
            raise BackendError(f"TensorRT cannot load {self.engine_path}: {exc}") from exc
        if self.engine is None:
            raise BackendError(
                f"TensorRT cannot load {self.engine_path}: built for another TensorRT version or GPU; rebuild the engine"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtypes = {n: np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        tensors = [ModelTensor(n, self._dtypes[n], [d if d >= 0 else "" for d in self.engine.get_tensor_shape(n)])
                   for n in names]
        self.model_inputs = [t for t in tensors if is_input[t.name]]
        self.model_outputs = [t for t in tensors if not is_input[t.name]]
        self.stream = _check(self.cudart.cudaStreamCreate())
        self.active = True

    def _device_buffer(self, name: str, nbytes: int) -> int:
        """The tensor's device buffer, reallocated only when this call needs more bytes than it holds."""
        pointer, size = self._buffers.get(name, (0, 0))
        if nbytes > size or not pointer:
            if pointer:
                _check(self.cudart.cudaFree(pointer))
                del self._buffers[name]
            size = max(nbytes, 1)
            pointer = _check(self.cudart.cudaMalloc(size))
            self._buffers[name] = (pointer, size)
        return pointer

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy the feeds to the GPU, run the engine on its stream and return its outputs by name."""
        if not self.active:
            raise BackendError("the TensorRT backend was deactivated; call activate() before infer()")
        cudart, stream = self.cudart, self.stream
        for name in self.input_names:
            array = feeds[name]
            pointer = self._device_buffer(name, array.nbytes)
            _check(cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, HOST_TO_DEVICE, stream))
            self.context.set_input_shape(name, array.shape)
            self.context.set_tensor_address(name, int(pointer))
        outputs = {}
        for name in self.output_names:
            outputs[name] = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtypes[name])
            self.context.set_tensor_address(name, int(self._device_buffer(name, outputs[name].nbytes)))
        if not self.context.execute_async_v3(int(stream)):
            raise BackendError("TensorRT execution failed (see the TensorRT log above)")
        for name, array in outputs.items():
            pointer = self._buffers[name][0]
            _check(cudart.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, DEVICE_TO_HOST, stream))
        _check(cudart.cudaStreamSynchronize(stream))
        return outputs

    def deactivate(self) -> None:
        """Free the device buffers and the stream, drop the engine (no-op when not active)."""
        if not self.active:
            return
        self.active = False
        buffers, self._buffers = self._buffers, {}
        for pointer, _ in buffers.values():
            self.cudart.cudaFree(pointer)
        self.cudart.cudaStreamDestroy(self.stream)
        self.stream = self.context = self.engine = None

    def __del__(self) -> None:
        if getattr(self, "active", False):
            try:
                self.deactivate()
            except Exception:  # the CUDA context may be gone at interpreter exit
                pass
