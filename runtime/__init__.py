"""Torch-free ALBERT runtime: bundle -> tokenizer -> backend (onnxruntime | TensorRT) -> HF-identical heads.

    from runtime import pipeline
    fill = pipeline("albert-fill-mask-fp32/")
    fill("Plants create [MASK] through photosynthesis.")

Imports numpy and tokenizers; onnxruntime is imported when a pipeline is created, tensorrt and cuda-python
only for the tensorrt backend.
"""
from __future__ import annotations

__version__ = "0.1.0"  # the distribution's one version (pyproject.toml reads it)

from .pipeline import Pipeline, pipeline

__all__ = ["pipeline", "Pipeline", "__version__"]
