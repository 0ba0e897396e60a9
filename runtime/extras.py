"""Which pip extra brings which optional module, so that a missing one is refused in one line saying what to add.

The base install is numpy and tokenizers; the inference engine is an extra (`cpu`, `gpu`, `openvino`,
`tensorrt`), because pip extras cannot remove a base dependency and two onnxruntime distributions in one
environment overwrite each other's `onnxruntime` package (README, "Install").
"""
from __future__ import annotations

import importlib
from types import ModuleType

PACKAGE = "albert-export"
EXPORT_MODULES = ("torch", "onnx", "safetensors", "huggingface_hub", "sentencepiece", "google", "tqdm")
SERVE_MODULES = ("starlette", "uvicorn", "httptools", "prometheus_client", "h11", "httpx")
EXTRA_OF_MODULE = {
    **{module: "export" for module in EXPORT_MODULES},
    **{module: "serve" for module in SERVE_MODULES},
    "onnxruntime": "cpu",
    "openvino": "openvino",
    "tensorrt_rtx": "tensorrt",
    "tensorrt": "tensorrt",
    "cuda": "tensorrt",
}
DISTRIBUTION_OF_MODULE = {"google": "protobuf", "cuda": "cuda-python", "tensorrt_rtx": "tensorrt-rtx",
                          "prometheus_client": "prometheus-client"}
ALTERNATIVES = {"cpu": " (or [gpu] for onnxruntime-gpu with CUDA)"}


def install_command(extra: str) -> str:
    """The pip command that installs this package with `extra`."""
    return f"pip install '{PACKAGE}[{extra}]'"


# from the cpu engine to the gpu one: onnxruntime first goes, or both distributions write the `onnxruntime` package
GPU_SWITCH = f"pip uninstall -y onnxruntime && {install_command('gpu')}"


def missing_module_line(module: str, needed_for: str) -> str | None:
    """'torch is not installed; the export needs it: pip install ...' for a module an extra brings, else None."""
    top = module.split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    distribution = DISTRIBUTION_OF_MODULE.get(top, top)
    hint = install_command(extra) + ALTERNATIVES.get(extra, "")
    return f"{distribution} is not installed; {needed_for} needs it: {hint}"


def first_importable(names: tuple[str, ...]) -> ModuleType | None:
    """The first of the modules `names` that imports, in that order; None where none does (the caller says why)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None
