"""fp32 graph + calibration batches -> INT8 QDQ graph, its calibration table, and how close it stays to fp32."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from graphs.passes.qdq import insert_qdq, quantization_targets
from graphs.walk import all_graphs
from runtime.taskspec import OPTIONAL_OUTPUTS, TASKS

from .errors import CalibrationError
from .ranges import DEFAULT_PERCENTILE, METHODS, calibration_session, collect_histograms, examples_in, ranges
from .table import CalibrationTable

ONNXRUNTIME_DOMAIN = "com.microsoft"
QA_MAX_ANSWER_TOKENS = 15  # the QA pipeline's default max_answer_len
# the INT8 report's metrics, by the task config's `accuracy`: "top1" the argmax agreement per logits output (over
# unpadded tokens for token-level outputs), "span" that over each sequence plus the best span's agreement (the QA
# head's pick), None max abs diff alone (features have no argmax)
METRICS = ("top1", "span", None)


def int8_from_fp32(model: onnx.ModelProto, batches: Sequence[dict[str, np.ndarray]], *, method: str = "percentile",
                   percentile: float = DEFAULT_PERCENTILE, layers: str = "", samples: int | None = None,
                   per_channel: bool = True, progress=None, threads: int = 0,
                   activation_products: bool = False, unsigned_activations: bool = False,
                   gather_int8_rows: bool | None = None,
                   ) -> tuple[onnx.ModelProto, CalibrationTable, dict[str, int]]:
    """Calibrate the activations that feed MatMul/Gemm on `batches` and insert Q/DQ. `model` is not changed.
    activation_products=False keeps attention's activation x activation MatMuls float (see insert_qdq).
    gather_int8_rows (see quantize_tables): None chooses it when the graph already holds onnxruntime-only
    (com.microsoft) ops, as the `onnxruntime` optimization profile leaves: such a graph cannot go to TensorRT
    anyway, and gathering int8 rows spares onnxruntime CPU the per-run dequantization of the whole embedding
    table (albert-base's 30000 x 128: 0.66 ms per run whatever the batch, ~1.5% of the INT8 model at 1x128).
    Returns (int8 model, calibration table, counts of the QDQ pass)."""
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    quantized = onnx.ModelProto()
    quantized.CopyFrom(model)
    # (this also drops per-use Identity copies of weights, as insert_qdq does)
    tensors = quantization_targets(quantized, activation_products=activation_products)
    if not tensors:
        raise CalibrationError("the graph has no MatMul/Gemm with activation inputs: nothing to quantize")
    histograms = collect_histograms(quantized, tensors, batches, progress=progress,
                                    total=sum(examples_in(b) for b in batches), threads=threads)
    amax = ranges(histograms, method, percentile)
    if gather_int8_rows is None:
        gather_int8_rows = onnxruntime_only(quantized)
    counts = insert_qdq(quantized, amax, per_channel=per_channel, activation_products=activation_products,
                        unsigned_activations=unsigned_activations, gather_int8_rows=gather_int8_rows)
    table = CalibrationTable(
        method=method, percentile=percentile if method == "percentile" else None,
        samples=samples if samples is not None else sum(examples_in(b) for b in batches),
        batches=len(batches), amax=amax, layers=layers,
    )
    return quantized, table, counts


def onnxruntime_only(model: onnx.ModelProto) -> bool:
    """Whether the graph (Loop bodies included) has a com.microsoft op, i.e. runs on onnxruntime only."""
    return any(node.domain == ONNXRUNTIME_DOMAIN for graph in all_graphs(model.graph) for node in graph.node)


def _run_all(model: onnx.ModelProto, batches, threads: int, progress=None,
             desc: str = "") -> list[dict[str, np.ndarray]]:
    """The task outputs for every batch (hidden_states / attentions are not kept: they are large and validated
    against PyTorch anyway)."""
    session = calibration_session(model, threads)
    names = [o.name for o in session.get_outputs() if o.name not in OPTIONAL_OUTPUTS]
    inputs = {i.name for i in session.get_inputs()}
    if progress:
        batches = progress(batches, desc=desc, total=sum(examples_in(b) for b in batches), unit="example",
                           size=examples_in)
    return [dict(zip(names, session.run(names, {k: v for k, v in b.items() if k in inputs}))) for b in batches]


def _best_spans(start: np.ndarray, end: np.ndarray, mask: np.ndarray) -> list[tuple[int, int]]:
    spans = []
    for s_logits, e_logits, valid in zip(start, end, mask.astype(bool)):
        scores = s_logits[:, None] + e_logits[None, :]
        length = len(s_logits)
        i, j = np.indices((length, length))
        allowed = (j >= i) & (j - i < QA_MAX_ANSWER_TOKENS) & valid[:, None] & valid[None, :]
        scores = np.where(allowed, scores, -np.inf)
        spans.append(tuple(int(x) for x in np.unravel_index(np.argmax(scores), scores.shape)))
    return spans


def accuracy_report(reference: onnx.ModelProto, candidate: onnx.ModelProto, batches: Sequence[dict[str, np.ndarray]],
                    task: str, threads: int = 0, progress=None) -> dict:
    """How the candidate (INT8 or fp16) graph compares with the fp32 graph on `batches`:
    max_abs_diff per output, top1_agreement per logits output (over unpadded positions for token-level
    outputs, over the sequence for QA start/end), and qa_span_agreement (best span, as the QA head picks)."""
    expected = _run_all(reference, batches, threads, progress, "accuracy: fp32")
    actual = _run_all(candidate, batches, threads, progress, "accuracy: candidate")
    examples = int(sum(examples_in(b) for b in batches))
    report: dict = {"max_abs_diff": {}, "top1_agreement": {}, "examples": examples}
    metric = TASKS[task].accuracy
    if metric not in METRICS:
        raise CalibrationError(f"the {task} task's accuracy metric {metric!r} is not one of {', '.join(map(str, METRICS))}")
    for name in expected[0]:
        report["max_abs_diff"][name] = float(max(np.abs(e[name] - a[name]).max() for e, a in zip(expected, actual)))
        if metric is None:
            continue
        agree = total = 0
        for batch, e, a in zip(batches, expected, actual):
            x, y = e[name], a[name]
            mask = batch["attention_mask"].astype(bool)
            if metric == "span":
                x, y = np.where(mask, x, -np.inf), np.where(mask, y, -np.inf)
                same = np.argmax(x, -1) == np.argmax(y, -1)
            elif x.ndim == 3 and mask.ndim == 2 and x.shape[:2] == mask.shape:  # token level: unpadded tokens
                same = (np.argmax(x, -1) == np.argmax(y, -1))[mask]
            else:
                same = np.argmax(x, -1) == np.argmax(y, -1)
            agree += int(np.sum(same))
            total += int(np.size(same))
        report["top1_agreement"][name] = agree / max(total, 1)
    if metric == "span":
        agree = total = 0
        for batch, e, a in zip(batches, expected, actual):
            mask = batch["attention_mask"]
            spans_e = _best_spans(e["start_logits"], e["end_logits"], mask)
            spans_a = _best_spans(a["start_logits"], a["end_logits"], mask)
            agree += sum(s == t for s, t in zip(spans_e, spans_a))
            total += len(spans_e)
        report["qa_span_agreement"] = agree / max(total, 1)
    return report
