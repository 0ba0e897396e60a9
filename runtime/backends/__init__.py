"""Inference engines behind one protocol: named numpy arrays in, named numpy arrays out.

`OnnxRuntimeBackend` (runtime.backends.ort) runs model.onnx on CPU, CUDA or the TensorRT execution provider;
`OpenVINOBackend` (runtime.backends.openvino) runs model.onnx with OpenVINO on the CPU; `TensorRTBackend`
(runtime.backends.trt) runs engine.plan with tensorrt / tensorrt_rtx and cuda-python. Each imports its package
only when it is created. They share runtime.backends.base: a backend built from a bundle has its model's inputs
and outputs checked against the manifest, and every feed checked against the bundle before the engine sees it.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..arguments import is_integer
from ..bundle import Bundle, BundleError
from ..errors import BackendError, OptionError
from ..extras import GPU_SWITCH, missing_module_line
from .base import BaseBackend, FeedCheck, check_feeds, checked_threads

BACKENDS = ("onnxruntime", "openvino", "tensorrt")
DEVICES = ("cpu", "cuda")
BACKEND_OPTIONS = {"onnxruntime": {"low_memory", "spinning"}, "openvino": {"hint", "precision"}, "tensorrt": set()}


@dataclass(frozen=True)
class Device:
    """Where a backend runs: the CPU or one CUDA GPU by index."""
    kind: str  # "cpu" | "cuda"
    index: int = 0
    cpu_fallback: bool = False  # given as an int (or None): transformers then runs on the CPU when there is no GPU

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


def parse_device(device: Any) -> Device:
    """transformers' device forms: "cpu", "cuda", "cuda:N", an int N (-1: the CPU), a torch.device, or None
    (transformers' default, 0: the first GPU when there is one, else the CPU)."""
    if isinstance(device, Device):
        return device
    if device is None:
        return Device("cuda", 0, cpu_fallback=True)
    if is_integer(device, numpy=False):
        return Device("cpu") if device < 0 else Device("cuda", device, cpu_fallback=True)
    if hasattr(device, "type") and hasattr(device, "index"):  # torch.device, without importing torch
        device = device.type if device.index is None else f"{device.type}:{device.index}"
    match = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", device.strip().lower()) if isinstance(device, str) else None
    if match is None or (match[1] == "cpu" and match[2] is not None):
        raise OptionError(f"device {device!r} is not one of cpu, cuda, cuda:N, or a GPU number (-1 for the CPU)")
    return Device(match[1], int(match[2] or 0))


class Backend(Protocol):
    """What a pipeline needs of a backend: its input and output names and infer()."""
    input_names: list[str]  # what the model takes, in order
    output_names: list[str]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; inputs are cast to the dtypes the model declares, extra inputs are an error."""


def backend_from_bundle(
    bundle: Bundle,
    backend: str = "onnxruntime",
    device: Any = "cpu",
    *,
    threads: int | None = None,
    providers: list | None = None,
    graph_optimization_level: str = "all",
    backend_options: dict | None = None,
) -> Backend:
    """backend_options: onnxruntime's `low_memory` and `spinning` (bools); the openvino backend's `hint`
    ("latency" | "throughput") and `precision` ("f32" | "bf16"). threads: an integer from 1 to the CPUs this
    process may use. The engine's inputs and outputs must be the manifest's (else BundleError); its feeds are
    checked against the bundle from then on (runtime.backends.base)."""
    if backend not in BACKENDS:
        raise OptionError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    parsed = _device_for(backend, device, providers)
    options = backend_options or {}
    unknown = sorted(set(options) - BACKEND_OPTIONS[backend])
    if unknown:
        raise OptionError(f"the {backend} backend takes no option(s) {', '.join(unknown)}; it takes "
                          f"{', '.join(sorted(BACKEND_OPTIONS[backend])) or 'none'}")
    if backend == "openvino":
        engine = _openvino(bundle, parsed, threads, providers, options)
    elif backend == "tensorrt":
        engine = _tensorrt(bundle, parsed, threads, providers)
    else:
        engine = _onnxruntime(bundle, parsed, threads, providers, graph_optimization_level, options)
    engine.check_manifest(bundle)
    return engine


def _device_for(backend: str, device: Any, providers: list | None) -> Device:
    """The device asked for; an int or None (transformers' "the GPU when there is one") where there is none: the CPU."""
    parsed = parse_device(device)
    if parsed.cpu_fallback and backend == "onnxruntime" and providers is None:
        from .ort import cuda_available

        if not cuda_available():
            warnings.warn(
                f"device={device!r}: this onnxruntime has no CUDA, running on the CPU as transformers does "
                f"(for the GPU: {GPU_SWITCH})",
                RuntimeWarning,
                stacklevel=4,
            )
            return Device("cpu")
    if parsed.cpu_fallback and backend == "openvino":
        return Device("cpu")  # openvino runs on the CPU
    return parsed


def _openvino(bundle: Bundle, device: Device, threads: int | None, providers: list | None, options: dict) -> Backend:
    if device.kind != "cpu":
        raise OptionError("the openvino backend runs on the CPU only; use --device cpu")
    if providers is not None:
        raise OptionError("providers are onnxruntime options; the openvino backend takes none")
    threads = checked_threads(threads)  # before the import: openvino takes a second to load
    from .openvino import OpenVINOBackend

    return OpenVINOBackend(bundle.model_path, threads=threads, **options)


def _tensorrt(bundle: Bundle, device: Device, threads: int | None, providers: list | None) -> Backend:
    if device.kind != "cuda":
        raise OptionError("the tensorrt backend runs on a GPU only; use --device cuda, or --backend onnxruntime for CPU")
    if device.index != 0:
        raise OptionError(
            "the tensorrt backend runs on the first visible GPU; choose it with CUDA_VISIBLE_DEVICES and use cuda"
        )
    if providers is not None or threads is not None:
        raise OptionError("providers and threads are onnxruntime options; the tensorrt backend takes neither")
    if bundle.engine_path is None:
        raise BundleError(
            f"{bundle.root} has no engine.plan; export it with --engine tensorrt, or run it with --backend onnxruntime"
        )
    from .trt import TensorRTBackend

    engine = bundle.manifest.engine
    return TensorRTBackend(bundle.engine_path, flavour=engine.flavour if engine is not None else None)


def _onnxruntime(bundle: Bundle, device: Device, threads: int | None, providers: list | None,
                 graph_optimization_level: str, options: dict) -> Backend:
    threads = checked_threads(threads)
    try:
        from .ort import OnnxRuntimeBackend
    except ModuleNotFoundError as exc:  # the engine is an extra (runtime.extras): say which one to add
        line = missing_module_line(exc.name or "", "the onnxruntime backend")
        if line is None:
            raise
        raise BackendError(line) from None
    return OnnxRuntimeBackend(bundle.model_path, device=device.kind, device_id=device.index, providers=providers,
                              threads=threads, graph_optimization_level=graph_optimization_level, **options)


__all__ = ["Backend", "BackendError", "BaseBackend", "FeedCheck", "backend_from_bundle", "check_feeds", "parse_device",
           "Device", "BACKENDS", "DEVICES"]
