"""Torch-free ALBERT runtime: bundle -> tokenizer -> backend (onnxruntime | OpenVINO | TensorRT) -> HF-identical heads.

    from runtime import pipeline
    fill = pipeline("albert-fill-mask-fp32/")
    fill("Plants create [MASK] through photosynthesis.")

`pipeline` and `Pipeline` (runtime.pipelines) load on first use, with numpy, tokenizers and the heads, so that
albert-run's entry point (runtime.cli.main) imports them under its own Ctrl-C handling; each engine is imported
when a pipeline on it is created (onnxruntime, openvino, tensorrt and cuda-python).
"""
from __future__ import annotations

__version__ = "0.1.0"  # the distribution's one version (pyproject.toml reads it)
__all__ = ["pipeline", "Pipeline", "__version__"]


def __getattr__(name: str):
    if name in ("pipeline", "Pipeline"):
        from . import pipelines

        return getattr(pipelines, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
