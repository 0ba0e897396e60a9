"""albert-export: ALBERT from PyTorch to ONNX / TensorRT bundles, weights stored once.

The public names load on first use, so the CLI starts (and answers Ctrl-C, --help, --version, usage errors) before
torch, and on an install without the export extra says in one line which extra to add.
"""
from __future__ import annotations

import importlib
import types

from runtime import __version__
from runtime.extras import missing_module_line

__all__ = ["AlbertConfig", "CheckpointError", "ConfigError", "ExportError", "export", "from_pretrained", "__version__"]
_HOMES = {"AlbertConfig": "config", "ConfigError": "config", "CheckpointError": "checkpoint", "ExportError": "errors",
          "export": "exporter", "from_pretrained": "checkpoint"}


def _module(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as exc:  # torch or onnx absent: the same one line the CLI prints
        line = missing_module_line(exc.name or "", "the export")
        if line is None:
            raise
        raise ModuleNotFoundError(line, name=exc.name) from exc


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
