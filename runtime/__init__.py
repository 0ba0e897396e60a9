"""Torch-free ALBERT runtime: bundle -> tokenizer -> backend (onnxruntime | OpenVINO | TensorRT) -> HF-identical heads.

    from runtime import pipeline
    fill = pipeline("albert-fill-mask-fp32/")
    fill("Plants create [MASK] through photosynthesis.")

Imports numpy and tokenizers; each engine is imported when a pipeline on it is created (onnxruntime, openvino,
tensorrt and cuda-python).
"""
from __future__ import annotations

__version__ = "0.1.0"  # the distribution's one version (pyproject.toml reads it)

import os as _os
import sys as _sys

try:
    from .pipeline import Pipeline, pipeline
except KeyboardInterrupt:
    # Ctrl-C while albert-run's console script is still importing us: exit as its main() would, no traceback.
    # ("-m": python is still importing the package of a `python -m runtime.cli` run.)
    if _os.path.basename(_sys.argv[0]) == "albert-run" or _sys.argv[0] == "-m":
        raise SystemExit(130) from None
    raise

__all__ = ["pipeline", "Pipeline", "__version__"]
