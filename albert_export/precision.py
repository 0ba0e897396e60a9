"""The export's precision step: the fp32 graph -> fp16 (mixed) or INT8 (calibrated QDQ), last before saving.

fp16   graphs.passes.fp16: weights and MatMuls in fp16, LayerNorm/Softmax/sums and the attention bias in fp32.
int8   calibration: examples (--calibration-data, or the built-in default) tokenized with the bundle's
       tokenizer, activation ranges from onnxruntime on the fp32 graph, Q/DQ inserted with one DequantizeLinear
       per shared weight. The table goes into the bundle (calibration.json); the manifest gets the calibration
       settings and an accuracy report of the INT8 graph against the fp32 graph on 64 held-out examples, never
       calibrated on (calibration.agreement: the data's others, topped up with built-in held-out text); the
       export's validation gates on it (albert_export.validate.validate_agreement).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
from tokenizers import Tokenizer

from calibration import (
    CALIBRATION_TABLE, DEFAULT_PERCENTILE, METHODS, CalibrationTable, accuracy_report, calibration_batches,
    int8_from_fp32, load_examples, select,
)
from calibration.agreement import HELD_OUT_SAMPLES, held_out_examples
from calibration.data import CALIBRATION_MAX_LENGTH, DEFAULT_SAMPLES
from graphs.passes.fp16 import convert_to_fp16
from graphs.size import op_counts
from runtime.arguments import is_integer

from .errors import ExportError
from .progress import bar, log, stage

PRECISIONS = ("fp32", "fp16", "int8")
EVALUATION_SAMPLES = HELD_OUT_SAMPLES  # held-out examples for the INT8 accuracy report and gate


DEFAULT_METHOD = "percentile"


class PrecisionOptionError(ExportError, ValueError):
    """Precision options that contradict each other or have impossible values."""


def precision_from_options(fp16: bool = False, int8: bool = False, calibration_data: str | Path | None = None,
                           calibration_method: str = DEFAULT_METHOD, calibration_samples: int = DEFAULT_SAMPLES) -> str:
    """'fp32' | 'fp16' | 'int8' from the flags, or PrecisionOptionError saying what to change."""
    if fp16 and int8:
        raise PrecisionOptionError("--fp16 and --int8 exclude each other; pick one precision")
    calibrating = (calibration_data is not None or calibration_method != DEFAULT_METHOD
                   or calibration_samples != DEFAULT_SAMPLES)
    if calibrating and not int8:
        raise PrecisionOptionError("--calibration-data/--calibration-method/--calibration-samples need --int8")
    if calibration_method not in METHODS:
        raise PrecisionOptionError(f"--calibration-method {calibration_method!r} is not one of {', '.join(METHODS)}")
    if not is_integer(calibration_samples, numpy=False) or calibration_samples < 1:
        raise PrecisionOptionError(f"--calibration-samples must be a positive integer, got {calibration_samples!r}")
    if calibration_data is not None and not Path(calibration_data).is_file():
        raise PrecisionOptionError(f"--calibration-data {str(calibration_data)!r} is not a file; pass text lines, "
                                   "JSONL or SQuAD JSON (or leave it out for the built-in examples)")
    return "int8" if int8 else "fp16" if fp16 else "fp32"


def graph_at_precision(
    graph: onnx.ModelProto,
    precision: str,
    *,
    task: str,
    tokenizer: Tokenizer,
    max_length: int = CALIBRATION_MAX_LENGTH,
    layers: str = "",
    vocab_size: int | None = None,
    calibration_data: str | Path | None = None,
    calibration_method: str = DEFAULT_METHOD,
    calibration_samples: int = DEFAULT_SAMPLES,
    log: Callable[[str], None] = log,
) -> tuple[onnx.ModelProto, dict, CalibrationTable | None]:
    """(graph at `precision`, manifest extras, calibration table or None). The fp32 graph is not changed."""
    if precision == "fp32":
        return graph, {}, None
    if precision == "fp16":
        converted = onnx.ModelProto()
        converted.CopyFrom(graph)
        with stage("fp16: converted", log) as done:
            counts = convert_to_fp16(converted)
            done(f"{counts['fp16_nodes']} nodes to fp16, {counts['fp32_nodes']} kept in fp32, {counts['casts']} casts")
        return converted, {"fp16": counts}, None
    if precision != "int8":
        raise PrecisionOptionError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")

    counts = op_counts(graph)
    fused = sum(counts[op] for op in ("Attention", "MultiHeadAttention", "QAttention"))
    if fused:
        log(f"int8: warning: {fused} fused Attention node(s) keep their QKV weights in float (the QDQ pass quantizes "
            "MatMul/Gemm); for a smaller, faster INT8 graph use --optimize portable, or "
            "onnxruntime-without-attention to keep the other onnxruntime fusions")
    everything = load_examples(calibration_data)
    examples = select(everything, calibration_samples)
    held_out, held_out_source = held_out_examples(everything, examples, task, EVALUATION_SAMPLES)
    encoder = Tokenizer.from_str(tokenizer.to_str())  # encoding toggles truncation; keep the bundle's copy as is
    batches = calibration_batches(encoder, task, examples, max_length=max_length)
    largest = max(int(batch["input_ids"].max()) for batch in batches)
    if vocab_size is not None and largest >= vocab_size:
        raise PrecisionOptionError(f"the tokenizer gives token id {largest} but the model's vocabulary has "
                                   f"{vocab_size} entries; the checkpoint's tokenizer does not match its model")
    source = str(calibration_data) if calibration_data is not None else "built-in default examples"
    if len(examples) < calibration_samples:
        log(f"int8: calibrating on {len(examples)} examples, not the {calibration_samples} asked for: "
            f"that is all {source} holds (--calibration-data FILE brings more)")
    with stage(f"int8: calibrated ({calibration_method})", log) as done:
        quantized, table, counts = int8_from_fp32(graph, batches, method=calibration_method, layers=layers,
                                                  samples=len(examples), progress=bar)
        done(f"on {len(examples)} examples from {source}: {counts['activation_qdq']} activation Q/DQ pairs, "
             f"{counts['weight_dq']} int8 weights")
    with stage("int8: compared with fp32", log) as done:
        evaluation = calibration_batches(encoder, task, held_out, max_length=max_length)
        report = accuracy_report(graph, quantized, evaluation, task, progress=bar)
        report["data"] = held_out_source
        done(f"on {report['data']}: {agreement_summary(report)}")
    extra = {
        "calibration": {
            "method": calibration_method,
            "percentile": DEFAULT_PERCENTILE if calibration_method == "percentile" else None,
            "samples": len(examples),
            "data": source,
            "max_length": max_length,
            "table": CALIBRATION_TABLE,
            "activation_scales": "per tensor; " + ("one per layer" if layers == "unrolled" else
                                                   "one per Loop-body tensor, max over iterations"),
            "weights": "int8 per output channel, one DequantizeLinear per shared weight",
            "qdq": counts,
        },
        "accuracy_vs_fp32": report,
    }
    return quantized, extra, table


def agreement_summary(report: dict) -> str:
    """'top-1 agreement logits 98.4%, QA span agreement 95.0%, max abs diff logits 0.031': the report in words."""
    parts = [f"top-1 agreement {name} {share:.1%}" for name, share in report["top1_agreement"].items()]
    if "qa_span_agreement" in report:
        parts.append(f"QA span agreement {report['qa_span_agreement']:.1%}")
    parts += [f"max abs diff {name} {diff:.3g}" for name, diff in report["max_abs_diff"].items()]
    return ", ".join(parts)
