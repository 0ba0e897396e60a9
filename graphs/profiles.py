"""The optimization profiles' names, as plain strings: the CLI's parser offers them where onnx is absent.
graphs.pipeline holds each one's passes (a test keeps the two in step)."""
from __future__ import annotations

PROFILE_NAMES = ("none", "portable", "onnxruntime", "onnxruntime-without-attention")
