"""OpenVINO on the CPU: model.onnx read by OpenVINO's ONNX frontend, compiled once, infer requests pooled.

`openvino` is imported when the backend is created, never at `import runtime`. OpenVINO's CPU plugin computes
in bf16 by default on CPUs that have it (AMX, AVX512-BF16): an fp32 bundle then differs from onnxruntime by
~1e-2, so f32 is asked for unless the caller asks for bf16.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np

from ..errors import BackendError, OptionError
from ..extras import install_command
from .base import BaseBackend, ModelTensor, checked_threads
from .heap import release_freed_heap

PRECISIONS = ("f32", "bf16")
HINTS = ("latency", "throughput")
_UNCONVERTED = re.compile(r"No conversion rule found for operations?:\s*(.+)")


def _import_openvino():
    try:
        import openvino

        return openvino
    except ImportError as exc:
        raise BackendError(
            f"the openvino backend needs the `openvino` package ({install_command('openvino')}); "
            "or use --backend onnxruntime"
        ) from exc


def cpu_capabilities(core) -> list[str]:
    """What OpenVINO's CPU plugin says this CPU computes natively: FP32, BF16, INT8, ..."""
    return list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def read_error(model_path: Path, exc: Exception) -> BackendError:
    """One line for a model OpenVINO's ONNX frontend cannot convert, naming the ops."""
    found = _UNCONVERTED.search(str(exc))
    if found:
        ops = found.group(1).strip().splitlines()[0]
        return BackendError(
            f"OpenVINO cannot run {model_path}: it has no conversion for {ops}; export with --optimize portable "
            "(standard ONNX ops only), or use --backend onnxruntime"
        )
    first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return BackendError(f"OpenVINO cannot read {model_path}: {first}")


def _tensors(ports) -> list[ModelTensor]:
    """What OpenVINO read of the model's inputs or outputs (its dynamic dims have no names: "")."""
    tensors = []
    for port in ports:
        shape = port.get_partial_shape()
        dims = None if shape.rank.is_dynamic else [d.get_length() if d.is_static else "" for d in shape]
        try:
            dtype = np.dtype(port.get_element_type().to_dtype())
        except Exception:  # an element type numpy has no name for
            dtype = None
        tensors.append(ModelTensor(port.get_any_name(), dtype, dims))
    return tensors


class OpenVINOBackend(BaseBackend):
    """A backend running a bundle's model.onnx with OpenVINO."""
    source = "model.onnx (as OpenVINO reads it)"

    def __init__(
        self,
        model_path: str | Path,
        *,
        threads: int | None = None,
        hint: str = "latency",
        precision: str = "f32",
    ):
        """hint: "latency" (one request uses every core) or "throughput" (concurrent requests share them);
        precision: OpenVINO's inference precision, "f32" or "bf16" (only where the CPU has bf16)."""
        if hint not in HINTS:
            raise OptionError(f"openvino hint {hint!r} is not one of {', '.join(HINTS)}")
        if precision not in PRECISIONS:
            raise OptionError(f"openvino precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        threads = checked_threads(threads)
        ov = _import_openvino()
        core = ov.Core()
        capabilities = cpu_capabilities(core)
        if precision == "bf16" and "BF16" not in capabilities:
            raise OptionError(
                f"this CPU ({core.get_property('CPU', 'FULL_DEVICE_NAME')}) has no bf16 support in OpenVINO "
                f"(it offers {', '.join(capabilities)}); use precision f32"
            )
        model_path = Path(model_path)
        try:
            model = core.read_model(str(model_path))
        except Exception as exc:  # OpenVINO raises RuntimeError/OpConversionFailure with multi-line reports
            raise read_error(model_path, exc) from exc
        # names from the model as read: after compilation a port may answer to an inner tensor's name
        self.model_inputs, self.model_outputs = _tensors(model.inputs), _tensors(model.outputs)
        self.input_names = [t.name for t in self.model_inputs]
        self.output_names = [t.name for t in self.model_outputs]
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint.upper()}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise BackendError(f"OpenVINO cannot compile {model_path}: {str(exc).strip().splitlines()[-1]}") from exc
        del model  # the compiled model holds what it needs; the frontend's copy of the weights can go
        release_freed_heap()
        self.precision, self.hint, self.threads = precision, hint, threads
        # infer requests are reused: one per concurrent caller, created when a caller finds none idle
        self._idle = [self.compiled.create_infer_request()]
        self._lock = threading.Lock()

    def _acquire(self):
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self.compiled.create_infer_request()

    def _release(self, request) -> None:
        with self._lock:
            self._idle.append(request)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the feeds on an infer request and return copies of its outputs by name."""
        request = self._acquire()
        try:
            request.infer({i: feeds[name] for i, name in enumerate(self.input_names) if name in feeds})
            # copies: the request's output tensors are overwritten by its next run
            return {name: np.array(request.get_output_tensor(i).data) for i, name in enumerate(self.output_names)}
        except Exception as exc:  # OpenVINO raises RuntimeError for shape/type mismatches
            raise BackendError(f"OpenVINO failed to run the model: {str(exc).strip().splitlines()[-1]}") from exc
        finally:
            self._release(request)
