"""Inference engines behind one protocol: named numpy arrays in, named numpy arrays out.

`OnnxRuntimeBackend` (runtime.backends.ort) runs model.onnx on CPU, CUDA or the TensorRT execution provider;
`TensorRTBackend` (runtime.backends.trt) runs engine.plan with tensorrt / tensorrt_rtx and cuda-python,
imported only when it is created.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from ..bundle import Bundle, BundleError
from ..errors import BackendError, OptionError
from ..extras import missing_module_line

BACKENDS = ("onnxruntime", "tensorrt")
DEVICES = ("cpu", "cuda")


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
) -> Backend:
    if backend not in BACKENDS:
        raise OptionError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise OptionError(f"device {device!r} is not one of {', '.join(DEVICES)}")
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
    try:
        from .ort import OnnxRuntimeBackend
    except ModuleNotFoundError as exc:  # the engine is an extra (runtime.extras): say which one to add
        line = missing_module_line(exc.name or "", "the onnxruntime backend")
        if line is None:
            raise
        raise BackendError(line) from None

    return OnnxRuntimeBackend(
        bundle.model_path,
        device=device,
        providers=providers,
        threads=threads,
        graph_optimization_level=graph_optimization_level,
    )


__all__ = ["Backend", "BackendError", "backend_from_bundle", "BACKENDS", "DEVICES"]
