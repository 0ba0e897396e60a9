"""Inference engines behind one protocol: named numpy arrays in, named numpy arrays out.

`OnnxRuntimeBackend` (runtime.backends.ort) runs model.onnx on CPU, CUDA or the TensorRT execution provider;
`OpenVINOBackend` (runtime.backends.openvino) runs model.onnx with OpenVINO on the CPU; `TensorRTBackend`
(runtime.backends.trt) runs engine.plan with tensorrt / tensorrt_rtx and cuda-python. Both import their packages
only when they are created.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from ..bundle import Bundle, BundleError
from ..errors import BackendError, OptionError

BACKENDS = ("onnxruntime", "openvino", "tensorrt")
DEVICES = ("cpu", "cuda")
BACKEND_OPTIONS = {"onnxruntime": {"low_memory"}, "openvino": {"hint", "precision"}, "tensorrt": set()}


class Backend(Protocol):
    input_names: list[str]  # what the model takes, in order
    output_names: list[str]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; inputs are cast to the dtypes the model declares, extra inputs are an error."""


def backend_from_bundle(
    bundle: Bundle,
    backend: str = "onnxruntime",
    device: str = "cpu",
    *,
    threads: int | None = None,
    providers: list | None = None,
    graph_optimization_level: str = "all",
    backend_options: dict | None = None,
) -> Backend:
    """backend_options: onnxruntime's `low_memory` (bool); the openvino backend's `hint` ("latency" | "throughput")
    and `precision` ("f32" | "bf16")."""
    if backend not in BACKENDS:
        raise OptionError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise OptionError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    unknown = sorted(set(backend_options or {}) - BACKEND_OPTIONS[backend])
    if unknown:
        raise OptionError(f"the {backend} backend takes no option(s) {', '.join(unknown)}; it takes "
                          f"{', '.join(sorted(BACKEND_OPTIONS[backend])) or 'none'}")
    if backend == "openvino":
        if device != "cpu":
            raise OptionError("the openvino backend runs on the CPU only; use --device cpu")
        if providers is not None:
            raise OptionError("providers are onnxruntime options; the openvino backend takes none")
        from .openvino import OpenVINOBackend

        return OpenVINOBackend(bundle.model_path, threads=threads, **(backend_options or {}))
    if backend == "tensorrt":
        if device != "cuda":
            raise OptionError("the tensorrt backend runs on a GPU only; use --device cuda, or --backend onnxruntime for CPU")
        if providers is not None or threads is not None:
            raise OptionError("providers and threads are onnxruntime options; the tensorrt backend takes neither")
        if bundle.engine_path is None:
            raise BundleError(
                f"{bundle.root} has no engine.plan; export it with --engine tensorrt, or run it with --backend onnxruntime"
            )
        from .trt import TensorRTBackend

        return TensorRTBackend(bundle.engine_path)
    from .ort import OnnxRuntimeBackend

    return OnnxRuntimeBackend(
        bundle.model_path,
        device=device,
        providers=providers,
        threads=threads,
        graph_optimization_level=graph_optimization_level,
        **(backend_options or {}),
    )


__all__ = ["Backend", "BackendError", "backend_from_bundle", "BACKENDS", "DEVICES"]
