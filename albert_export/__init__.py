"""albert-export: ALBERT from PyTorch to ONNX / TensorRT bundles, weights stored once.

The public names load on first use, so the CLI starts (and answers Ctrl-C, --help, --version, usage errors) before
torch, and on an install without the export extra says in one line which extra to add.
"""
from __future__ import annotations

import importlib
import sys
import types

from runtime import __version__
__all__ = ["AlbertConfig", "CheckpointError", "ConfigError", "export", "from_pretrained", "__version__"]
_HOMES = {"AlbertConfig": "config", "ConfigError": "config", "CheckpointError": "checkpoint",
          "from_pretrained": "checkpoint"}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    @property
    def export(self):
        """albert_export.export is the function (its module is albert_export.export in sys.modules)."""
        return importlib.import_module(".export", __name__).export

    @export.setter
    def export(self, module) -> None:
        pass  # the import system binds the submodule here; the function stays the package's `export`


sys.modules[__name__].__class__ = _Package
