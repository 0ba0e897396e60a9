"""onnxruntime: CPU by default; CUDA (with IO binding) or the TensorRT execution provider when installed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import BackendError, OptionError
from ..extras import GPU_SWITCH
from .base import BaseBackend, ModelTensor, checked_threads
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
    """Whether this onnxruntime offers the CUDAExecutionProvider."""
    return "CUDAExecutionProvider" in ort.get_available_providers()


def default_providers(device: str, device_id: int = 0) -> list:
    """The execution providers for `device`; BackendError saying how to switch where CUDA is asked for but missing."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if not cuda_available():
        raise BackendError(
            f"device cuda:{device_id} needs onnxruntime-gpu (CUDAExecutionProvider); this onnxruntime offers "
            f"{', '.join(ort.get_available_providers())}. Switch to it with {GPU_SWITCH}, or use the cpu device"
        )
    return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]


def session_options(graph_optimization_level: str = "all", threads: int | None = None, low_memory: bool = False,
                    spinning: bool = False) -> ort.SessionOptions:
    """threads: intra-op threads (one inter-op thread); low_memory: no prepacked GEMM weights; spinning: let idle
    intra-op threads spin for work (onnxruntime's default; off here: a waiting thread gives its CPU back)."""
    if graph_optimization_level not in _LEVELS:
        raise OptionError(
            f"graph_optimization_level {graph_optimization_level!r} is not one of {', '.join(_LEVELS)}"
        )
    for name, value in (("low_memory", low_memory), ("spinning", spinning)):
        if not isinstance(value, bool):
            raise OptionError(f"the onnxruntime backend's {name} must be True or False, got {value!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[graph_optimization_level]
    options.log_severity_level = 4  # fatal only: a failure reaches the caller as one BackendError line, not two
    if low_memory:
        options.add_session_config_entry("session.disable_prepacking", "1")
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def resolve_providers(device: str, device_id: int, providers: list | None) -> list:
    """The execution providers to ask for: the device's default ones, or the caller's (aliases cpu, cuda,
    tensorrt), each of which this onnxruntime must offer."""
    if providers is None:
        return default_providers(device, device_id)
    providers = [_PROVIDER_ALIASES.get(p, p) if isinstance(p, str) else p for p in providers]
    missing = [p for p in providers if isinstance(p, str) and p not in ort.get_available_providers()]
    if missing:
        raise BackendError(
            f"execution provider(s) {', '.join(missing)} not available in this onnxruntime "
            f"(it offers {', '.join(ort.get_available_providers())})"
        )
    return providers


def check_cuda_started(providers: list[str], device_id: int) -> None:
    """onnxruntime falls back to the CPU when the CUDA libraries do not load; asked for cuda, say so instead."""
    if providers[0] == "CPUExecutionProvider":
        raise BackendError(
            f"onnxruntime could not start CUDA on device {device_id} (it fell back to {', '.join(providers)}):"
            " the CUDA and cuDNN libraries onnxruntime-gpu needs are missing or do not match; see onnxruntime's "
            "CUDA requirements, or use the cpu device"
        )


def _tensors(args) -> list[ModelTensor]:
    return [ModelTensor(a.name, np.dtype(_ONNX_DTYPES[a.type]) if a.type in _ONNX_DTYPES else None,
                        None if a.shape is None else list(a.shape)) for a in args]


class OnnxRuntimeBackend(BaseBackend):
    """A backend running a bundle's model.onnx with an onnxruntime InferenceSession."""
    source = "model.onnx"

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
        spinning: bool = False,
    ):
        """io_binding: bind inputs and outputs explicitly (None: on when the first provider is CUDA or TensorRT,
        where it saves a copy per run; it also works, without gain, on CPU). low_memory: no prepacked GEMM
        weights, so a weight also read by another op (the tied MLM decoder's word embeddings) is held once,
        at some speed (docs/precision.md, "Memory"). spinning: session_options'."""
        options = session_options(graph_optimization_level, checked_threads(threads), low_memory, spinning)
        cuda_asked = providers is None and device != "cpu"
        providers = resolve_providers(device, device_id, providers)
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise BackendError(f"onnxruntime cannot load {model_path}: {exc}") from exc
        release_freed_heap()
        self.model_inputs, self.model_outputs = _tensors(self.session.get_inputs()), _tensors(self.session.get_outputs())
        self.input_names = [t.name for t in self.model_inputs]
        self.output_names = [t.name for t in self.model_outputs]
        self.providers = self.session.get_providers()
        if cuda_asked:
            check_cuda_started(self.providers, device_id)
        if io_binding is None:
            io_binding = self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        self.io_binding = io_binding

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the session on the feeds (through an IO binding when enabled) and return its outputs by name."""
        if not self.io_binding:
            return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))
