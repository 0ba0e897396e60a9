"""onnxruntime: CPU by default; CUDA (with IO binding) or the TensorRT execution provider when installed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import BackendError, OptionError
from ..extras import GPU_SWITCH
from .heap import release_freed_heap

_ONNX_DTYPES = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(bool)": np.bool_,
}
_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def cuda_available() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


def default_providers(device: str, device_id: int = 0) -> list:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if not cuda_available():
        raise BackendError(
            f"device cuda:{device_id} needs onnxruntime-gpu (CUDAExecutionProvider); this onnxruntime offers "
            f"{', '.join(ort.get_available_providers())}. Switch to it with {GPU_SWITCH}, or use the cpu device"
        )
    return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]


class OnnxRuntimeBackend:
    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str = "cpu",
        device_id: int = 0,
        providers: list | None = None,
        threads: int | None = None,
        graph_optimization_level: str = "all",
        io_binding: bool | None = None,
        low_memory: bool = False,
    ):
        """io_binding: bind inputs and outputs explicitly (None: on when the first provider is CUDA or TensorRT,
        where it saves a copy per run; it also works, without gain, on CPU). low_memory: no prepacked GEMM
        weights, so a weight also read by another op (the tied MLM decoder's word embeddings) is held once,
        at some speed (docs/precision.md, "Memory")."""
        if graph_optimization_level not in _LEVELS:
            raise OptionError(
                f"graph_optimization_level {graph_optimization_level!r} is not one of {', '.join(_LEVELS)}"
            )
        if threads is not None and threads < 1:
            raise OptionError(f"threads must be at least 1, got {threads}")
        options = ort.SessionOptions()
        options.graph_optimization_level = _LEVELS[graph_optimization_level]
        if low_memory:
            options.add_session_config_entry("session.disable_prepacking", "1")
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        cuda_asked = providers is None and device != "cpu"
        if providers is None:
            providers = default_providers(device, device_id)
        else:
            providers = [_PROVIDER_ALIASES.get(p, p) if isinstance(p, str) else p for p in providers]
            missing = [p for p in providers if isinstance(p, str) and p not in ort.get_available_providers()]
            if missing:
                raise BackendError(
                    f"execution provider(s) {', '.join(missing)} not available in this onnxruntime "
                    f"(it offers {', '.join(ort.get_available_providers())})"
                )
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise BackendError(f"onnxruntime cannot load {model_path}: {exc}") from exc
        release_freed_heap()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._input_dtypes = {i.name: _ONNX_DTYPES.get(i.type) for i in self.session.get_inputs()}
        self.providers = self.session.get_providers()
        if cuda_asked and self.providers[0] == "CPUExecutionProvider":
            # onnxruntime falls back to the CPU when the CUDA libraries do not load; asked for cuda, say so instead
            raise BackendError(
                f"onnxruntime could not start CUDA on device {device_id} (it fell back to {', '.join(self.providers)}):"
                " the CUDA and cuDNN libraries onnxruntime-gpu needs are missing or do not match; see onnxruntime's "
                "CUDA requirements, or use the cpu device"
            )
        if io_binding is None:
            io_binding = self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        self.io_binding = io_binding

    def _feeds(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        unknown = set(inputs) - set(self.input_names)
        if unknown:
            raise BackendError(f"model has no input(s) {sorted(unknown)}; it takes {self.input_names}")
        feeds = {}
        for name, array in inputs.items():
            dtype = self._input_dtypes[name]
            feeds[name] = np.ascontiguousarray(array, dtype=dtype) if dtype is not None else array
        return feeds

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = self._feeds(inputs)
        if not self.io_binding:
            return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))
