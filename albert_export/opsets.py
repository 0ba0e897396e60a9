"""The opsets the exporter writes, as plain numbers: the CLI's parser needs them where torch and onnx are absent."""
from __future__ import annotations

DEFAULT_OPSET = 17
MIN_OPSET = 14  # the oldest the graph passes are written for
TRACE_MAX_OPSET = 20  # the TorchScript exporter's newest; newer opsets are converted to
