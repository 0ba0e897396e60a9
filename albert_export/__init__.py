"""albert-export: ALBERT from PyTorch to ONNX / TensorRT bundles, weights stored once."""
from __future__ import annotations

__version__ = "0.1.0"

from .checkpoint import CheckpointError, from_pretrained  # noqa: E402
from .config import AlbertConfig, ConfigError  # noqa: E402
from .export import export  # noqa: E402

__all__ = ["AlbertConfig", "CheckpointError", "ConfigError", "export", "from_pretrained", "__version__"]
