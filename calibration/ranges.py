"""Activation ranges: run the fp32 graph in onnxruntime with the tensors to calibrate made visible, and reduce
each tensor's |values| to an amax by minmax, percentile or entropy (KL divergence, as TensorRT's calibrator).

Loop bodies: a body's intermediate values cannot be graph outputs, so each one is added to the body as a scan
output (an Identity, stacked over iterations by the Loop) and the Loop's new output becomes a graph output. The
statistics of a body tensor are therefore taken over all iterations: one range per body tensor (the max over
layers), which is what a Loop graph can use, since its body has one Q/DQ per tensor for every iteration. The
unrolled graph has one tensor per layer and so gets per-layer ranges. No unrolled copy of the graph is needed.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from graphs.names import Names
from graphs.walk import Scope, scopes, subgraphs

from .errors import CalibrationError

METHODS = ("minmax", "percentile", "entropy")
DEFAULT_PERCENTILE = 99.99
HISTOGRAM_BINS = 2048
INT8_LEVELS = 128  # symmetric int8: 0..127 on each side


class Histogram:
    """Counts of |x| in bins of fixed width from 0; the range grows (bins merge pairwise) as larger values come."""

    def __init__(self, bins: int = HISTOGRAM_BINS):
        self.bins = bins
        self.width = 0.0
        self.counts = np.zeros(0, dtype=np.int64)
        self.amax = 0.0
        self.zeros = 0  # values seen while every value so far was 0 (no width yet)

    def add(self, values: np.ndarray) -> None:
        """Count |values| into the bins, doubling the bin width when they exceed the range."""
        values = np.abs(values.astype(np.float32, copy=False)).ravel()
        if values.size == 0:
            return
        if not np.isfinite(values).all():
            raise CalibrationError("the fp32 graph produced inf/nan in a calibrated tensor; check the model and data")
        top = float(values.max())
        self.amax = max(self.amax, top)
        if self.width == 0.0:
            if top == 0.0:
                self.zeros += values.size
                return
            self.width = top / self.bins
            self.counts = np.zeros(self.bins, dtype=np.int64)
            self.counts[0] = self.zeros
        needed = int(math.floor(top / self.width)) + 1
        while needed > 2 * self.bins:  # keep the histogram small: merge bins pairwise, doubling the width
            if len(self.counts) % 2:
                self.counts = np.append(self.counts, 0)
            self.counts = self.counts.reshape(-1, 2).sum(axis=1)
            self.width *= 2
            needed = int(math.floor(top / self.width)) + 1
        if needed > len(self.counts):
            self.counts = np.pad(self.counts, (0, needed - len(self.counts)))
        index = np.minimum((values / self.width).astype(np.int64), len(self.counts) - 1)
        self.counts += np.bincount(index, minlength=len(self.counts))

    def percentile(self, percent: float) -> float:
        """The amax below which `percent` of the counted values lie."""
        total = self.counts.sum()
        if total == 0 or self.width == 0.0:
            return self.amax
        cdf = np.cumsum(self.counts) / total
        index = int(np.searchsorted(cdf, percent / 100.0))
        return min((index + 1) * self.width, self.amax)

    def entropy(self, stride: int | None = None) -> float:
        """The amax whose int8 quantization keeps the distribution closest in KL divergence (TensorRT's method:
        clip at each candidate bin, fold the tail into the last bin, requantize to 128 levels, compare)."""
        counts = self.counts.astype(np.float64)
        if self.width == 0.0 or len(counts) <= INT8_LEVELS:
            return self.amax
        counts[0] = counts[1]  # the exact zeros (padding, ReLU) would dominate; TensorRT does the same
        stop = len(counts)
        stride = stride or max(1, (stop - INT8_LEVELS) // 512)
        best, best_divergence = stop, math.inf
        for edge in range(INT8_LEVELS, stop + 1, stride):
            reference = counts[:edge].copy()
            reference[-1] += counts[edge:].sum()
            chunk = np.minimum((np.arange(edge) * INT8_LEVELS) // edge, INT8_LEVELS - 1)
            nonzero = counts[:edge] > 0
            sums = np.bincount(chunk, weights=counts[:edge], minlength=INT8_LEVELS)
            sizes = np.bincount(chunk, weights=nonzero, minlength=INT8_LEVELS)
            expanded = np.where(nonzero, (sums / np.maximum(sizes, 1))[chunk], 0.0)
            p, q = reference / reference.sum(), expanded / max(expanded.sum(), 1e-300)
            mask = p > 0
            if np.any(q[mask] == 0):
                continue
            divergence = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
            if divergence <= best_divergence:
                best, best_divergence = edge, divergence
        return min(best * self.width, self.amax)


def amax_from(histogram: Histogram, method: str, percentile: float = DEFAULT_PERCENTILE) -> float:
    """The amax `method` (minmax, percentile or entropy) chooses from one tensor's histogram."""
    if method == "minmax":
        return histogram.amax
    if method == "percentile":
        if not 0.0 < percentile <= 100.0:
            raise CalibrationError(f"percentile must be in (0, 100], got {percentile}")
        return histogram.percentile(percentile)
    if method == "entropy":
        return histogram.entropy()
    raise CalibrationError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")


def _loop_holding(graph: onnx.GraphProto, body: onnx.GraphProto) -> onnx.NodeProto | None:
    for node in graph.node:
        if node.op_type == "Loop" and any(sub is body for sub in subgraphs(node)):
            return node
    return None


def expose(model: onnx.ModelProto, tensors: Sequence[str]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of `model` whose graph outputs include every tensor (body tensors as Loop scan outputs).
    Returns (model, {tensor: graph output holding its values})."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    names = Names(exposed)
    where: dict[str, Scope] = {}  # value -> the graph defining it
    for scope in scopes(exposed):
        defined = [value.name for value in scope.graph.input]
        defined += [name for node in scope.graph.node for name in node.output]
        for name in defined:
            where.setdefault(name, scope)
    outputs: dict[str, str] = {}
    for tensor in tensors:
        if tensor not in where:
            raise CalibrationError(f"tensor {tensor!r} is not produced anywhere in the graph")
        scope, name = where[tensor], tensor
        while scope.parent is not None:  # innermost body outwards: a scan output per level
            body = scope.graph
            loop = _loop_holding(scope.parent.graph, body)
            if loop is None:
                raise CalibrationError(f"tensor {tensor!r} is inside a subgraph that is not a Loop body; "
                                       "only Loop bodies can be calibrated")
            scanned = names.fresh(f"{tensor}_calibration")
            body.node.append(helper.make_node("Identity", [name], [scanned], name=names.fresh(f"Identity_{scanned}")))
            body.output.append(helper.make_tensor_value_info(scanned, TensorProto.FLOAT, None))
            name = names.fresh(f"{tensor}_over_iterations")
            loop.output.append(name)
            scope = scope.parent
        if not any(o.name == name for o in exposed.graph.output):
            exposed.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        outputs[tensor] = name
    return exposed, outputs


def calibration_session(model: onnx.ModelProto, threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime CPU session for collecting activations: basic optimizations only, so no tensor is fused away."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def collect_histograms(model: onnx.ModelProto, tensors: Sequence[str], batches: Iterable[dict[str, np.ndarray]],
                       progress=None, total: int | None = None, threads: int = 0) -> dict[str, Histogram]:
    """Run the fp32 `model` over `batches` and histogram |x| of every tensor in `tensors`. progress: a bar
    (albert_export.progress.bar's signature) advanced per example; `total` counts examples."""
    exposed, outputs = expose(model, tensors)
    session = calibration_session(exposed, threads)
    inputs = {i.name for i in session.get_inputs()}
    fetch = list(dict.fromkeys(outputs.values()))
    histograms = {tensor: Histogram() for tensor in tensors}
    seen = 0
    if progress:
        batches = progress(batches, desc="calibrating", total=total, unit="example", size=examples_in)
    for batch in batches:
        values = dict(zip(fetch, session.run(fetch, {k: v for k, v in batch.items() if k in inputs})))
        for tensor, output in outputs.items():
            histograms[tensor].add(values[output])
        seen += 1
    if not seen:
        raise CalibrationError("no calibration batches: the calibration data gave no examples")
    return histograms


def examples_in(batch: dict[str, np.ndarray]) -> int:
    """Rows of a batch (multiple choice: (examples, choices, sequence), one example per row)."""
    return len(batch["input_ids"])


def ranges(histograms: dict[str, Histogram], method: str, percentile: float = DEFAULT_PERCENTILE) -> dict[str, float]:
    """Tensor -> amax for every histogram, by `method`."""
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    return {tensor: amax_from(histogram, method, percentile) for tensor, histogram in histograms.items()}
