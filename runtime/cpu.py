"""The CPU kind and the engine that runs a bundle fastest on it: one home for what devtools.bench prints and what
`pipeline(..., backend="auto")` picks.

The kind is read from /proc/cpuinfo's flags: int8 dot-product instructions (AMX, AVX512-VNNI, AVX-VNNI) and bf16
ones (AMX, AVX512-BF16). oneDNN, OpenVINO's CPU kernels, uses no more than ONEDNN_MAX_CPU_ISA allows, so that
variable caps the kind too. The choice (measured by the benchmark, README "Default backend, per CPU kind"):
OpenVINO for INT8 bundles where VNNI or AMX exist, when openvino is installed; onnxruntime otherwise, and always
on AVX2-only CPUs, where OpenVINO's kernels were 1.2-2.5x slower. bf16 is OpenVINO's option (backend_options
{"precision": "bf16"}), so asking for it picks OpenVINO; fp32 answers are never traded for speed unasked.
Nothing here imports an engine.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from .backends import BACKEND_OPTIONS, parse_device

FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
# ONEDNN_MAX_CPU_ISA (oneDNN's names, lower case) -> the int8 / bf16 instructions it still lets oneDNN use
ISA_CAPS = {
    "sse41": ((), ()), "avx": ((), ()), "avx2": ((), ()), "avx512_core": ((), ()),
    "avx2_vnni": (("avx_vnni",), ()), "avx2_vnni_2": (("avx_vnni",), ()),
    "avx512_core_vnni": (("avx512_vnni", "avx_vnni"), ()),
    "avx512_core_bf16": (("avx512_vnni", "avx_vnni"), ("avx512_bf16",)),
    "avx512_core_fp16": (("avx512_vnni", "avx_vnni"), ("avx512_bf16",)),
}


def cpu_description(cpuinfo: str | None = None, max_isa: str | None = None) -> dict[str, Any]:
    """{"model", "features" (FEATURES present), "int8": "amx_int8" | "vnni" | "none", "bf16": "amx_bf16" |
    "avx512_bf16" | "none", "kind": "AMX" | "AVX512-VNNI" | "AVX2-VNNI" | "AVX2", "limit"} of this machine (or of
    the given /proc/cpuinfo text), int8 and bf16 capped by ONEDNN_MAX_CPU_ISA (or max_isa) where it is set."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = "unknown CPU", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    limit = (os.environ.get("ONEDNN_MAX_CPU_ISA") if max_isa is None else max_isa) or ""
    usable = set(flags)
    caps = ISA_CAPS.get(limit.lower())
    if caps is not None:  # an unknown or AMX-level value leaves every instruction usable
        usable -= {"amx_int8", "amx_bf16", "avx512_vnni", "avx_vnni", "avx512_bf16"} - set(caps[0]) - set(caps[1])
    int8 = "amx_int8" if "amx_int8" in usable else "vnni" if usable & {"avx512_vnni", "avx_vnni"} else "none"
    bf16 = "amx_bf16" if "amx_bf16" in usable else "avx512_bf16" if "avx512_bf16" in usable else "none"
    kind = ("AMX" if "amx_int8" in usable else "AVX512-VNNI" if "avx512_vnni" in usable
            else "AVX2" + ("-VNNI" if "avx_vnni" in usable else ""))
    return {"model": model, "features": [f for f in FEATURES if f in flags], "int8": int8, "bf16": bf16,
            "kind": kind, "limit": f"ONEDNN_MAX_CPU_ISA={limit}" if caps is not None else ""}


def openvino_installed() -> bool:
    """Whether the openvino package can be imported."""
    return importlib.util.find_spec("openvino") is not None


def auto_backend(precision: str, *, device: Any = "cpu", providers: list | None = None,
                 backend_options: dict | None = None, cpu: dict | None = None,
                 openvino: bool | None = None) -> tuple[str, str]:
    """(backend, why) for a bundle of `precision` ("fp32" | "fp16" | "int8") on this CPU (or `cpu`, as
    cpu_description gives it): openvino where its kernels are the faster ones and it is installed (`openvino`:
    whether it is, None: look), else onnxruntime. Options only one engine takes decide for it."""
    options = set(backend_options or {})
    if providers is not None:
        return "onnxruntime", "providers are onnxruntime's execution providers"
    if parse_device(device).kind != "cpu":
        return "onnxruntime", f"device={device!r}: onnxruntime runs on the GPU (tensorrt only when asked for)"
    only_onnxruntime = options - BACKEND_OPTIONS["openvino"]
    if only_onnxruntime:
        return "onnxruntime", f"backend_options {', '.join(sorted(only_onnxruntime))} are onnxruntime's"
    if options:
        return "openvino", f"backend_options {', '.join(sorted(options))} are OpenVINO's"
    cpu = cpu_description() if cpu is None else cpu
    on = f"an {cpu['kind']} CPU ({cpu['model']}{', ' + cpu['limit'] if cpu.get('limit') else ''})"
    if precision != "int8":
        return "onnxruntime", (f"a {precision} bundle on {on}: onnxruntime (OpenVINO is faster for int8 bundles on "
                               "VNNI/AMX CPUs, and in bf16: backend_options={'precision': 'bf16'})")
    if cpu["int8"] == "none":
        return "onnxruntime", f"an int8 bundle on {on} without VNNI or AMX: onnxruntime's int8 kernels are faster"
    fast = f"an int8 bundle on {on}: OpenVINO's {cpu['int8']} int8 kernels are faster than onnxruntime's"
    if not (openvino_installed() if openvino is None else openvino):
        return "onnxruntime", f"{fast}, but openvino is not installed (pip install 'albert-export[openvino]')"
    return "openvino", fast
