"""The bundle's graph in ORT format, for onnxruntime's minimal builds (mobile, and web/wasm builds reduced to the
operators a model needs): model.ort, plus the required_operators.config such a build is compiled from; the two
files onnxruntime's convert_onnx_models_to_ort writes, at optimization settings chosen here.

The graph is optimized at the extended level: the fusions that need no particular CPU (the "all" level adds
layout transforms the converter itself calls hardware specific). Constant folding stays off, so that no weight
is folded into a second, transformed copy: with the tied decoder as MatMul(Transpose(word_embeddings)) it wrote
a transposed copy of the embeddings (fill-mask .ort 1.70x its .onnx). The decoder is a Gemm(transB=1) on the
shared weight now, and folding changes nothing measurable (1.01x either way, fp16 1.05x, INT8 1.06x), but
weights are kept once in every file this project writes whatever form a future graph takes.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .errors import ExportError

ORT_MODEL = "model.ort"
REQUIRED_OPERATORS = "required_operators.config"
DISABLED_OPTIMIZERS = ["ConstantFolding"]


class OrtFormatError(ExportError, RuntimeError):
    """onnxruntime could not write the ORT format model."""


def ort_optimized_session_options(target: Path):
    """Session options that make onnxruntime save the graph it optimized to `target` (ORT format for *.ort)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3  # errors only: stdout and stderr carry albert-export's own lines
    if target.suffix == ".ort":
        options.add_session_config_entry("session.save_model_format", "ORT")
    return options


def save_optimized(model_path: Path, target: Path) -> Path:
    """Have onnxruntime save `model_path` optimized to `target` (ORT format for a .ort target); returns target."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(model_path), ort_optimized_session_options(target), providers=["CPUExecutionProvider"],
                             disabled_optimizers=DISABLED_OPTIMIZERS)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
        raise OrtFormatError(f"onnxruntime could not write {target.name}: {str(exc).strip().splitlines()[0]}") from exc
    return target


def ort_from_onnx(model_path: Path, directory: Path) -> list[Path]:
    """Write model.ort and required_operators.config into `directory`; returns their paths."""
    from onnxruntime.tools.ort_format_model import create_config_from_models

    # its logger is set to DEBUG and prints "[INFO] Created config in <temporary path>" past --quiet: warnings only
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    ort_model = save_optimized(model_path, directory / ORT_MODEL)
    config = directory / REQUIRED_OPERATORS
    create_config_from_models([ort_model], config, enable_type_reduction=False)
    # the generated header names the model by its absolute (here: temporary) path
    config.write_text(config.read_text().replace(str(ort_model), ORT_MODEL))
    return [ort_model, config]
