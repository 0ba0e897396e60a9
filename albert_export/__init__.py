"""albert-export: ALBERT from PyTorch to ONNX / TensorRT bundles, weights stored once.

On an install with only the runtime (no torch, no onnx) the package still imports, so `albert-export` can say in
one line which extra to add; the build-side names then raise ModuleNotFoundError with that line.
"""
from __future__ import annotations

from runtime import __version__
from runtime.extras import missing_module_line

__all__ = ["AlbertConfig", "CheckpointError", "ConfigError", "export", "from_pretrained", "__version__"]

try:
    from .checkpoint import CheckpointError, from_pretrained
    from .config import AlbertConfig, ConfigError
    from .export import export
except ModuleNotFoundError as _missing:
    _MISSING_LINE = missing_module_line(_missing.name or "", "the export")
    if _MISSING_LINE is None:
        raise
    _MISSING_NAME = _missing.name

    def __getattr__(name: str):
        if name in __all__:
            raise ModuleNotFoundError(_MISSING_LINE, name=_MISSING_NAME)
        raise AttributeError(f"module 'albert_export' has no attribute {name!r}")
