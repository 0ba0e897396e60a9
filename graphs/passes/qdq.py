"""INT8 by QuantizeLinear/DequantizeLinear pairs (QDQ) on the inputs of MatMul and Gemm.

  activations  symmetric int8 per tensor, scale = amax / 127 from calibration (`amax`: tensor name -> amax).
               In an unrolled graph every layer's tensors have their own names, so each layer gets its own
               scales; in a Loop body a tensor is one name for all iterations, so it gets one scale (the
               calibration takes the max over iterations).
  weights      symmetric int8 per output channel, stored as an int8 initializer (the file shrinks ~4x) with ONE
               DequantizeLinear per weight however many MatMuls read it: the N unrolled layers share the DQ
               output, and a weight read only inside a Loop body is dequantized once inside that body (the body
               is the one copy of the layer; onnxruntime fuses DQ + MatMul there into an integer MatMul).
Embedding gathers, LayerNorm and Softmax stay float, and so, by default, attention's activation x activation
MatMuls (see insert_qdq). `quantization_targets` lists the activations to calibrate.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import GraphError
from ..infer import value_types
from ..names import Names
from ..nodes import attribute_value, opset_of
from ..walk import Scope, scopes, use_counts
from .identities import remove_identities

QUANTIZED_OPS = frozenset({"MatMul", "Gemm"})
INT8_MAX = 127
MIN_QDQ_OPSET = 13  # per-axis DequantizeLinear


class QDQError(GraphError):
    """A model or calibration table the QDQ pass cannot use."""


def _float_activation_inputs(node: onnx.NodeProto, scope: Scope, types: dict[str, int]) -> list[int]:
    """Input positions of a MatMul/Gemm that carry float activations (Gemm's bias C excluded)."""
    positions = [0, 1] if node.op_type == "MatMul" else [0, 1][: min(2, len(node.input))]
    return [i for i in positions if types.get(node.input[i]) == TensorProto.FLOAT and not _weight(scope, node.input[i])]


def _weight(scope: Scope, name: str) -> onnx.TensorProto | None:
    """The 2-D float initializer `name` visible from scope, or None."""
    tensor = scope.initializer(name)
    if tensor is not None and tensor.data_type == TensorProto.FLOAT and len(tensor.dims) == 2:
        return tensor
    return None


def _quantized(node: onnx.NodeProto, scope: Scope, exclude: frozenset[str], activation_products: bool) -> bool:
    """Whether the pass quantizes this node: a MatMul/Gemm not excluded by name, and, unless
    `activation_products`, one that reads a weight (attention's Q.K^T and P.V read two activations)."""
    if node.op_type not in QUANTIZED_OPS or node.domain not in ("", "ai.onnx") or node.name in exclude:
        return False
    return activation_products or any(_weight(scope, name) is not None for name in node.input[:2])


def _targets(model: onnx.ModelProto, exclude: frozenset[str],
             activation_products: bool = False) -> tuple[list[Scope], list]:
    """Every graph as a Scope, and (scope, node, value types) for each MatMul/Gemm to quantize."""
    remove_identities(model, of_initializers=True)
    types = value_types(model)
    graphs = list(scopes(model))
    return graphs, [(scope, node, types) for scope in graphs for node in scope.graph.node
                    if _quantized(node, scope, exclude, activation_products)]


def quantization_targets(model: onnx.ModelProto, exclude: frozenset[str] = frozenset(),
                         activation_products: bool = False) -> list[str]:
    """Activation tensors whose ranges the QDQ pass needs, in graph order (Loop body tensors included)."""
    found: dict[str, None] = {}
    for scope, node, types in _targets(model, exclude, activation_products)[1]:
        for position in _float_activation_inputs(node, scope, types):
            found.setdefault(node.input[position])
    return list(found)


def _channel_axis(node: onnx.NodeProto) -> int:
    """The weight axis of output channels: B is (K, N) for MatMul and Gemm, (N, K) for Gemm with transB."""
    if node.op_type == "Gemm":
        trans_b = attribute_value(node, "transB", 0)
        return 0 if trans_b else 1
    return 1


def int8_scale(amax: float | np.ndarray) -> np.ndarray:
    """The symmetric int8 scale of a range: amax maps to 127 (a zero range to a tiny scale, never a zero one)."""
    return (np.maximum(np.asarray(amax, dtype=np.float64), 1e-12) / INT8_MAX).astype(np.float32)


def quantize_weight(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8: (int8 values, float32 scale per channel along `axis`)."""
    scale = int8_scale(np.abs(weight).max(axis=1 - axis))
    shape = [1, 1]
    shape[axis] = -1
    values = np.clip(np.rint(weight / scale.reshape(shape)), -INT8_MAX, INT8_MAX).astype(np.int8)
    return values, scale


def insert_qdq(model: onnx.ModelProto, amax: dict[str, float], per_channel: bool = True,
               exclude: frozenset[str] = frozenset(), tables: bool = True,
               activation_products: bool = False, activation_qdq_per_reader: bool = True,
               unsigned_activations: bool = False, gather_int8_rows: bool = False) -> dict[str, int]:
    """Rewrite `model` in place with Q/DQ on every MatMul/Gemm input (nodes named in `exclude` stay float).

    activation_products=False (default) leaves the MatMuls of two activations (attention scores Q.K^T and the
    context P.V) in float: quantizing them was measured to cost 10x the error (max |diff| 0.9 against 0.08 on
    hidden states of a 4-layer test model) for no speed on onnxruntime CPU; TensorRT can run them in int8.
    activation_qdq_per_reader gives each MatMul its own Q/DQ of a shared activation (same scale): onnxruntime
    fuses DQ+MatMul into an integer MatMul only where the activation's QuantizeLinear feeds that one DQ (the
    hidden state read by the query, key and value projections); weights keep one DQ however many readers.
    unsigned_activations stores activations as uint8 with zero point 128: the same symmetric grid (scale
    amax/127) shifted, for runtimes whose kernels want u8 x s8 (no difference measured on onnxruntime 1.32 here);
    TensorRT wants int8, the default.

    With `tables`, the other large weight matrices (embedding tables) are stored in int8 too, see
    `quantize_tables` (and its `gather_int8_rows`). Returns counts: matmuls, activation_qdq (Q/DQ pairs),
    weight_dq (one per distinct weight), tables, weight_bytes_saved.
    Raises QDQError when an activation has no amax (calibrate first) or the opset is too old.
    """
    opset = opset_of(model)
    if opset < MIN_QDQ_OPSET:
        raise QDQError(f"QDQ needs opset >= {MIN_QDQ_OPSET} (per-channel DequantizeLinear); the model has {opset}. "
                       "Re-export with --opset 13 or newer")
    graphs, targets = _targets(model, exclude, activation_products)
    names = Names(model)
    missing = sorted({node.input[p] for scope, node, types in targets
                      for p in _float_activation_inputs(node, scope, types)} - set(amax))
    if missing:
        raise QDQError(f"no calibrated range for {len(missing)} tensor(s), e.g. {missing[:3]}; "
                       "run the calibration on this same graph before inserting Q/DQ")

    counts = {"matmuls": len(targets), "activation_qdq": 0, "weight_dq": 0, "tables": 0, "weight_bytes_saved": 0}
    weight_dq, inserts, per_row = _dequantize_weights(targets, names, per_channel, tables)
    counts["weight_dq"] = len(weight_dq)
    for scope in reversed(graphs):  # bodies first: rebuilding a node list copies the Loop nodes it holds
        _rewrite_scope(scope, amax, weight_dq, inserts.get(id(scope), []), names, counts, exclude, activation_products,
                       activation_qdq_per_reader, unsigned_activations)

    for scope in scopes(model):  # anew: rewriting copied the Loop bodies
        for node in scope.graph.node:
            for position, name in enumerate(node.input):
                if name in per_row and per_row[name][1] is scope.graph:
                    node.input[position] = per_row[name][0]
    counts["weight_bytes_saved"] += _drop_float_weights(model, set(weight_dq))
    if tables:
        saved, quantized_tables = quantize_tables(model, names, gather_int8_rows)
        counts["weight_bytes_saved"] += saved
        counts["tables"] = quantized_tables
    return counts


def _dequantize_weights(targets: list, names: Names, per_channel: bool, tables: bool):
    """Each weight the targets read stored in int8 next to its float original, with ONE DequantizeLinear: in the
    readers' graph when they are all in one, else in the owner's. Returns ({weight: dequantized name},
    {id(scope): DQ nodes for the top of that graph}, the per-row weights (below))."""
    readers: dict[str, list[tuple[Scope, onnx.NodeProto]]] = {}
    for scope, node, _ in targets:
        if _weight(scope, node.input[1]) is not None:
            readers.setdefault(node.input[1], []).append((scope, node))
    inserts: dict[int, list[onnx.NodeProto]] = {}
    weight_dq: dict[str, str] = {}
    # weights quantized per row (Gemm transB=1: the tied MLM decoder) whose other readers are Gathers of the same
    # table: those read the one dequantized copy too, instead of a second int8 table from quantize_tables
    per_row: dict[str, tuple[str, onnx.GraphProto]] = {}
    for weight_name, uses in readers.items():
        owner = uses[0][0].owner_of(weight_name)
        axes = {_channel_axis(node) for _, node in uses}
        axis = axes.pop() if len(axes) == 1 and per_channel else None
        values, scale = _int8_weight(numpy_helper.to_array(owner.initializers[weight_name]), axis)
        quantized = names.fresh(f"{weight_name}_int8")
        scale_name = names.fresh(f"{weight_name}_scale")
        zero_name = names.fresh(f"{weight_name}_zero_point")
        owner.graph.initializer.extend([
            numpy_helper.from_array(values, quantized),
            numpy_helper.from_array(scale, scale_name),
            numpy_helper.from_array(np.zeros(scale.shape, dtype=np.int8), zero_name),
        ])
        home = uses[0][0] if len({id(scope) for scope, _ in uses}) == 1 else owner
        dequantized = names.fresh(f"{weight_name}_dequantized")
        attributes = {} if axis is None else {"axis": axis}
        inserts.setdefault(id(home), []).append(helper.make_node(
            "DequantizeLinear", [quantized, scale_name, zero_name], [dequantized],
            name=names.fresh(f"DequantizeLinear_{weight_name}"), **attributes))
        weight_dq[weight_name] = dequantized
        if tables and axis == 0:
            per_row[weight_name] = (dequantized, home.graph)
    return weight_dq, inserts, per_row


def _int8_weight(array: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per channel along `axis`, or per tensor when axis is None: (values, float32 scale)."""
    if axis is not None:
        return quantize_weight(array, axis)
    scale = int8_scale(np.abs(array).max())
    values = np.clip(np.rint(array / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    return values, scale


def _drop_float_weights(model: onnx.ModelProto, quantized: set[str]) -> int:
    """Remove the float originals of quantized weights that nothing reads any more; returns the bytes saved."""
    still_read = use_counts(model.graph)
    saved = 0
    for scope in scopes(model):
        unused = [t for t in scope.graph.initializer if t.name in quantized and t.name not in still_read]
        saved += sum(numpy_helper.to_array(t).nbytes * 3 // 4 for t in unused)
        for tensor in unused:
            scope.graph.initializer.remove(tensor)
    return saved


MIN_TABLE_ELEMENTS = 4096


def quantize_tables(model: onnx.ModelProto, names: Names | None = None,
                    gather_int8_rows: bool = False) -> tuple[int, int]:
    """Store the remaining large float matrices (embedding tables, a tied decoder) as int8, computing stays float.

    Each table is quantized per row and dequantized once, in the scope that owns it, for all its readers (the
    Gathers, and the MLM decoder tied to the word embeddings through a Transpose). TensorRT accepts int8
    constants only as DequantizeLinear inputs, so this is the portable form; onnxruntime CPU spends ~0.4 ms per
    run dequantizing albert-base's 30000 x 128 table. With `gather_int8_rows`, each Gather of a table read only
    by Gathers reads int8 rows and their per-row scales (the table's scales stored as a column, gathered by the
    same ids), and only those rows are scaled to float (Cast, Mul): onnxruntime only, same values as the
    dequantized table (per-column scales instead, tried first, cost QA top-1 agreement: 0.97 -> 0.84 on
    albert-base-shaped QA). Returns (bytes saved, tables quantized).
    """
    names = names or Names(model)
    graphs = list(scopes(model))
    readers: dict[str, list[tuple[Scope, onnx.NodeProto, int]]] = {}
    for scope in graphs:
        for node in scope.graph.node:
            for position, name in enumerate(node.input):
                readers.setdefault(name, []).append((scope, node, position))
    outputs = {o.name for scope in graphs for o in scope.graph.output}
    after: dict[str, list[onnx.NodeProto]] = {}  # int8 Gather output -> the DequantizeLinear that follows it
    top: dict[int, list[onnx.NodeProto]] = {}
    saved = quantized = 0
    for scope in graphs:
        for tensor in list(scope.graph.initializer):
            uses = readers.get(tensor.name, [])
            if (tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 2 or not uses or tensor.name in outputs
                    or int(np.prod(tensor.dims)) < MIN_TABLE_ELEMENTS):
                continue
            gathered = gather_int8_rows and all(
                node.op_type == "Gather" and position == 0
                and attribute_value(node, "axis", 0) == 0 for _, node, position in uses)
            array = numpy_helper.to_array(tensor)
            values, scale = quantize_weight(array, axis=0)  # per row: one scale per token
            int8_name = names.fresh(f"{tensor.name}_int8")
            scale_name, zero_name = names.fresh(f"{tensor.name}_scale"), names.fresh(f"{tensor.name}_zero_point")
            scope.graph.initializer.append(numpy_helper.from_array(values, int8_name))
            if gathered:  # the scales as a (V, 1) column: gathered by the same ids, they broadcast over the row
                scope.graph.initializer.append(numpy_helper.from_array(scale.reshape(-1, 1), scale_name))
                for _, node, _ in uses:
                    _gather_int8_rows(node, int8_name, scale_name, names, after)
            else:
                scope.graph.initializer.extend([numpy_helper.from_array(scale, scale_name),
                                                numpy_helper.from_array(np.zeros(scale.shape, np.int8), zero_name)])
                dequantized = names.fresh(f"{tensor.name}_dequantized")
                top.setdefault(id(scope), []).append(helper.make_node(
                    "DequantizeLinear", [int8_name, scale_name, zero_name], [dequantized], axis=0,
                    name=names.fresh(f"DequantizeLinear_{tensor.name}")))
                for _, node, position in uses:
                    node.input[position] = dequantized
            scope.graph.initializer.remove(tensor)
            saved += array.nbytes - values.nbytes
            quantized += 1
    for scope in reversed(graphs):  # bodies first: rebuilding a node list copies the Loop nodes it holds
        if id(scope) not in top and not any(o in after for node in scope.graph.node for o in node.output):
            continue
        nodes = list(top.get(id(scope), []))
        for node in scope.graph.node:
            nodes.append(node)
            for output in node.output:
                nodes.extend(after.get(output, []))
        del scope.graph.node[:]
        scope.graph.node.extend(nodes)
    return saved, quantized


def _gather_int8_rows(node: onnx.NodeProto, int8_name: str, scale_name: str, names: Names,
                      after: dict[str, list[onnx.NodeProto]]) -> None:
    """The Gather reads int8 rows of the table; its row scales, gathered by the same ids, scale them to float."""
    rows, scales, floats = (names.fresh(f"{node.output[0]}_{part}") for part in ("int8", "row_scales", "float"))
    after[rows] = [
        helper.make_node("Gather", [scale_name, node.input[1]], [scales], name=names.fresh(f"Gather_{scales}")),
        helper.make_node("Cast", [rows], [floats], to=TensorProto.FLOAT, name=names.fresh(f"Cast_{floats}")),
        helper.make_node("Mul", [floats, scales], [node.output[0]], name=names.fresh(f"Scale_{node.output[0]}")),
    ]
    node.input[0] = int8_name
    node.output[0] = rows


def _activation_zero_point(unsigned: bool, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(128, np.uint8) if unsigned else np.asarray(0, np.int8), name)


def _rewrite_scope(scope: Scope, amax: dict[str, float], weight_dq: dict[str, str],
                   top: list[onnx.NodeProto], names: Names, counts: dict, exclude: frozenset,
                   activation_products: bool, per_reader: bool, unsigned_activations: bool) -> None:
    graph = scope.graph
    qdq_of: dict[object, str] = {}
    scale_of: dict[object, tuple[str, str]] = {}
    nodes = list(top)
    for index, node in enumerate(graph.node):
        if _quantized(node, scope, exclude, activation_products):
            for position, name in enumerate(node.input[:2]):
                if name in weight_dq:
                    node.input[position] = weight_dq[name]
                    continue
                if name not in amax:
                    continue
                key = (name, index) if per_reader else name
                if key not in qdq_of:
                    if key not in scale_of:  # per reader: own scale tensors, or CSE passes merge the Qs again
                        scale = int8_scale(amax[name])
                        scale_of[key] = names.fresh(f"{name}_scale"), names.fresh(f"{name}_zero_point")
                        graph.initializer.extend([numpy_helper.from_array(scale, scale_of[key][0]),
                                                  _activation_zero_point(unsigned_activations, scale_of[key][1])])
                    scale_name, zero_name = scale_of[key]
                    quantized, dequantized = names.fresh(f"{name}_quantized"), names.fresh(f"{name}_dequantized")
                    nodes.append(helper.make_node("QuantizeLinear", [name, scale_name, zero_name], [quantized],
                                                  name=names.fresh(f"QuantizeLinear_{name}")))
                    nodes.append(helper.make_node("DequantizeLinear", [quantized, scale_name, zero_name], [dequantized],
                                                  name=names.fresh(f"DequantizeLinear_{name}")))
                    qdq_of[key] = dequantized
                    counts["activation_qdq"] += 1
                node.input[position] = qdq_of[key]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
