"""TensorRT engine.plan on a GPU, through `tensorrt` (10.x/11.x) or `tensorrt_rtx`, with cuda-python.

Both packages are imported when the backend is created, never at `import runtime`. Engines are strongly
typed: the IO dtypes come from the engine. Not exercised by this project's CPU tests (no GPU there); the
bundle's engine section (flavour, version, compute capabilities) says where a plan can run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendError
from ..extras import install_command


def _import_tensorrt():
    try:
        import tensorrt as trt  # noqa: F401

        return trt
    except ImportError:
        pass
    try:
        import tensorrt_rtx as trt

        return trt
    except ImportError as exc:
        raise BackendError(
            "the tensorrt backend needs the `tensorrt` package (NVIDIA's index) or `tensorrt-rtx` "
            f"({install_command('tensorrt')}); or use --backend onnxruntime"
        ) from exc


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


class TensorRTBackend:
    def __init__(self, engine_path: str | Path):
        self.trt = _import_tensorrt()
        self.cudart = _import_cudart()
        logger = self.trt.Logger(self.trt.Logger.WARNING)
        try:
            self.engine = self.trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        except Exception as exc:  # TensorRT raises RuntimeError/TypeError variants by version
            raise BackendError(f"TensorRT cannot load {engine_path}: {exc}") from exc
        if self.engine is None:
            raise BackendError(
                f"TensorRT cannot load {engine_path}: built for another TensorRT version or GPU; rebuild the engine"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtypes = {n: np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.stream = _check(self.cudart.cudaStreamCreate())

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, to_device, to_host = self.cudart, 1, 2  # cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost
        unknown = set(inputs) - set(self.input_names)
        if unknown:
            raise BackendError(f"engine has no input(s) {sorted(unknown)}; it takes {self.input_names}")
        allocations = []
        try:
            for name in self.input_names:
                array = np.ascontiguousarray(inputs[name], dtype=self._dtypes[name])
                pointer = _check(cudart.cudaMalloc(max(array.nbytes, 1)))
                allocations.append(pointer)
                _check(cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, to_device, self.stream))
                self.context.set_input_shape(name, array.shape)
                self.context.set_tensor_address(name, int(pointer))
            outputs = {}
            for name in self.output_names:
                outputs[name] = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtypes[name])
                pointer = _check(cudart.cudaMalloc(max(outputs[name].nbytes, 1)))
                allocations.append(pointer)
                self.context.set_tensor_address(name, int(pointer))
            if not self.context.execute_async_v3(int(self.stream)):
                raise BackendError("TensorRT execution failed (see the TensorRT log above)")
            for name, pointer in zip(self.output_names, allocations[len(self.input_names):]):
                array = outputs[name]
                _check(cudart.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, to_host, self.stream))
            _check(cudart.cudaStreamSynchronize(self.stream))
            return outputs
        finally:
            for pointer in allocations:
                cudart.cudaFree(pointer)
