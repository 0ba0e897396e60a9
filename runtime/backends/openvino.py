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


class OpenVINOBackend:
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
        if threads is not None and threads < 1:
            raise OptionError(f"threads must be at least 1, got {threads}")
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
        self.input_names = [port.get_any_name() for port in model.inputs]
        self.output_names = [port.get_any_name() for port in model.outputs]
        self._input_dtypes = {port.get_any_name(): port.get_element_type().to_dtype() for port in model.inputs}
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

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        unknown = set(inputs) - set(self.input_names)
        if unknown:
            raise BackendError(f"model has no input(s) {sorted(unknown)}; it takes {self.input_names}")
        feeds = {name: np.ascontiguousarray(array, dtype=self._input_dtypes[name]) for name, array in inputs.items()}
        request = self._acquire()
        try:
            request.infer({i: feeds[name] for i, name in enumerate(self.input_names) if name in feeds})
            # copies: the request's output tensors are overwritten by its next run
            return {name: np.array(request.get_output_tensor(i).data) for i, name in enumerate(self.output_names)}
        except Exception as exc:  # OpenVINO raises RuntimeError for shape/type mismatches
            raise BackendError(f"OpenVINO failed to run the model: {str(exc).strip().splitlines()[-1]}") from exc
        finally:
            self._release(request)
