"""fp16 (mixed precision): weights and matrix products in fp16; normalization, softmax and sums in fp32.

Which nodes compute in fp16 is decided by dataflow, not by a list of everything:
  - MatMul / Gemm (and `fp16_ops`) compute in fp16;
  - an op that only moves or scales data (Reshape, Transpose, Gather, Mul, Div, Erf, Tanh, ...) follows its
    inputs: fp16 when every activation it reads is fp16;
  - Add / Sub are fp16 only as a bias add (one fp16 activation plus constants). A sum of two activations (the
    residual connections, the embedding sum, scores + attention bias) stays fp32;
  - everything else (LayerNormalization or its decomposition, Softmax, Pow, reductions, unknown ops) stays fp32.
A Gather from a weight table reads the table in fp16, so embeddings are stored in fp16 too.

So the attention bias, (1 - mask) * finfo(float32).min, is built and added in fp32 and never overflows to -inf;
a constant converted to fp16 is clamped to the finite fp16 range in any case.

Graph inputs and outputs keep their dtypes, in the main graph and in Loop bodies (a Cast at the boundary).
Weights are stored once: an initializer read in fp16 is stored in fp16; where some reader needs it in fp32, one
Cast sits next to the initializer (in the scope that owns it, so a Loop body's readers share it).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..infer import value_types
from ..names import Names, rename_uses
from ..nodes import MS_DOMAIN, ONNX_DOMAINS, constant_tensor
from ..walk import Scope, scopes, subgraphs
from .identities import remove_identities

FP16, FP32 = TensorProto.FLOAT16, TensorProto.FLOAT
FP16_MAX = float(np.finfo(np.float16).max)

FP16_OPS = frozenset({"MatMul", "Gemm", "Conv", "Einsum"})
# ops that compute in the precision of the activations they read
FOLLOW_OPS = frozenset({
    "Mul", "Div", "Neg", "Abs", "Relu", "Tanh", "Erf", "Sigmoid", "Gelu", "FastGelu", "BiasGelu", "QuickGelu",
    "Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Tile", "Slice", "Split",
    "Concat", "Gather", "GatherElements", "Where", "Max", "Min", "Clip", "Dropout",
})
SUM_OPS = frozenset({"Add", "Sub"})
# ops whose float input may have any type (they read only its shape)
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})
# fp32-only initializers (LayerNorm gamma/beta) this large or larger are stored in fp16 too, with one Cast to fp32
# next to them (folded by the runtime at load): every weight is stored in fp16; only scalars stay as they are
LARGE_INITIALIZER = 16


@dataclass
class _Plan:
    dtype: dict[str, int] = field(default_factory=dict)  # activation -> its dtype after the pass
    precision: dict[tuple, int] = field(default_factory=dict)  # node key -> FP16 | FP32
    requests: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))  # constant -> wanted dtypes
    fp16_constants: set[str] = field(default_factory=set)  # constants stored in fp16


def convert_to_fp16(model: onnx.ModelProto, fp16_ops: frozenset[str] | set[str] = FP16_OPS) -> dict[str, int]:
    """Rewrite `model` in place to mixed fp16. Returns counts: fp16_nodes, fp32_nodes, casts,
    fp16_initializers, fp32_initializers (float initializers left in fp32, all small)."""
    remove_identities(model, of_initializers=True)
    types = value_types(model)
    graphs = list(scopes(model))
    by_graph = {id(scope.graph): scope for scope in graphs}
    plan = _Plan()
    _analyse(graphs[0], by_graph, types, plan, frozenset(fp16_ops))
    names = Names(model)
    counts = {"fp16_nodes": 0, "fp32_nodes": 0, "casts": 0, "fp16_initializers": 0, "fp32_initializers": 0}
    reads_as = _plan_constants(graphs, plan, names)
    for scope in reversed(graphs):  # bodies first: rebuilding a node list copies the Loop nodes it holds
        _store_constants(scope, plan, names, reads_as, counts)
        _rewrite(scope, plan, types, names, reads_as, counts)
    counts["fp16_nodes"] = sum(p == FP16 for p in plan.precision.values())
    counts["fp32_nodes"] = sum(p == FP32 for p in plan.precision.values())
    return counts


# --- deciding ------------------------------------------------------------------------------------------

def _key(node: onnx.NodeProto) -> tuple:
    """A node's identity across passes over the graph (protobuf wrappers are not stable objects)."""
    return (node.op_type, node.name, tuple(node.output))


def _is_float(types: dict[str, int], name: str) -> bool:
    return bool(name) and types.get(name) == FP32


def _analyse(scope: Scope, by_graph: dict, types: dict[str, int], plan: _Plan, fp16_ops: frozenset) -> None:
    for value in scope.graph.input:
        if _is_float(types, value.name):
            plan.dtype[value.name] = FP32
    for node in scope.graph.node:
        if node.output and node.output[0] in scope.constant_nodes:
            continue
        for sub in subgraphs(node):
            _analyse(by_graph[id(sub)], by_graph, types, plan, fp16_ops)
        kinds = [
            "const" if scope.is_constant(name) else plan.dtype.get(name, FP32)
            for name in node.input if _is_float(types, name)
        ]
        precision = _decide(node, kinds, scope, fp16_ops)
        for name in node.output:
            if _is_float(types, name):
                plan.dtype[name] = precision if precision is not None else FP32
        if precision is None:
            continue
        plan.precision[_key(node)] = precision
        for name in node.input:
            if _is_float(types, name) and scope.is_constant(name):
                plan.requests[name].add(precision)


def _decide(node: onnx.NodeProto, kinds: list, scope: Scope, fp16_ops: frozenset) -> int | None:
    """FP16 or FP32 for a node that reads float values; None for a node the pass leaves alone."""
    op = node.op_type
    if not kinds or op == "Cast" or op in SHAPE_ONLY_OPS:
        return None
    if any(True for _ in subgraphs(node)):
        return FP32  # Loop / If keep their float interface; their bodies are decided on their own
    if node.domain not in (*ONNX_DOMAINS, MS_DOMAIN):
        return FP32
    if op in fp16_ops:
        return FP16
    activations = [kind for kind in kinds if kind != "const"]
    all_fp16 = bool(activations) and all(kind == FP16 for kind in activations)
    if op in SUM_OPS:
        return FP16 if all_fp16 and len(activations) == 1 else FP32
    if op == "Gather" and scope.is_constant(node.input[0]):
        return FP16  # an embedding table: stored and read in fp16
    if op in FOLLOW_OPS:
        return FP16 if all_fp16 else FP32
    return FP32


# --- rewriting -----------------------------------------------------------------------------------------

def _to_fp16(array: np.ndarray) -> np.ndarray:
    return np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16)


def _plan_constants(graph_scopes: list[Scope], plan: _Plan, names: Names) -> dict[tuple[str, int], str]:
    """Which float constants are stored in fp16, and {(constant, dtype): name to read} for the readers whose
    precision differs from the stored one (a Cast of an initializer, or an fp16 copy of a Constant)."""
    reads_as: dict[tuple[str, int], str] = {}
    for scope in graph_scopes:
        for tensor in scope.graph.initializer:
            wanted = plan.requests.get(tensor.name)
            if tensor.data_type != FP32 or not wanted:
                continue
            if FP16 in wanted or int(np.prod(tensor.dims)) >= LARGE_INITIALIZER:
                plan.fp16_constants.add(tensor.name)
                if FP32 in wanted:
                    reads_as[(tensor.name, FP32)] = names.fresh(f"{tensor.name}_fp32")
        for output, node in scope.constant_nodes.items():
            wanted = plan.requests.get(output, set())
            if constant_tensor(node).data_type == FP32 and FP16 in wanted:
                if FP32 in wanted:  # a scalar read both ways: a second Constant, not a Cast
                    reads_as[(output, FP16)] = names.fresh(f"{output}_fp16")
                else:
                    plan.fp16_constants.add(output)
    return reads_as


def _store_constants(scope: Scope, plan: _Plan, names: Names, reads_as: dict, counts: dict) -> None:
    """Convert this scope's constants as planned; add the Casts and fp16 copies that readers need."""
    casts: list[onnx.NodeProto] = []
    for tensor in scope.graph.initializer:
        if tensor.name in plan.fp16_constants:
            tensor.CopyFrom(numpy_helper.from_array(_to_fp16(numpy_helper.to_array(tensor)), tensor.name))
            counts["fp16_initializers"] += 1
            if (tensor.name, FP32) in reads_as:
                as_fp32 = reads_as[(tensor.name, FP32)]
                casts.append(helper.make_node("Cast", [tensor.name], [as_fp32], to=FP32,
                                              name=names.fresh(f"Cast_{as_fp32}")))
        elif tensor.data_type == FP32 and tensor.name in plan.requests:
            counts["fp32_initializers"] += 1
    nodes = list(casts)
    for node in scope.graph.node:
        nodes.append(node)
        output = node.output[0] if node.output else ""
        if output in scope.constant_nodes:
            value = numpy_helper.from_array(_to_fp16(numpy_helper.to_array(constant_tensor(node))))
            if output in plan.fp16_constants:
                constant_tensor(node).CopyFrom(value)
            elif (output, FP16) in reads_as:
                copy = reads_as[(output, FP16)]
                nodes.append(helper.make_node("Constant", [], [copy], value=value,
                                              name=names.fresh(f"Constant_{copy}")))
    counts["casts"] += len(casts)
    del scope.graph.node[:]
    scope.graph.node.extend(nodes)


def _stored_dtype(plan: _Plan, name: str) -> int:
    return FP16 if name in plan.fp16_constants else FP32


def set_value_type(graph: onnx.GraphProto, name: str, elem_type: int) -> None:
    """Set the element type of value `name` wherever the graph declares it."""
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == name and value.type.HasField("tensor_type"):
            value.type.tensor_type.elem_type = elem_type


def _rewrite(scope: Scope, plan: _Plan, types: dict[str, int], names: Names,
             reads_as: dict[tuple[str, int], str], counts: dict) -> None:
    graph = scope.graph
    cast_of: dict[tuple[str, int], str] = {}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        precision = plan.precision.get(_key(node))
        if precision is not None:
            for index, name in enumerate(node.input):
                if not _is_float(types, name):
                    continue
                if scope.is_constant(name):
                    if _stored_dtype(plan, name) != precision:
                        node.input[index] = reads_as[(name, precision)]
                    continue
                if plan.dtype.get(name, FP32) == precision:
                    continue
                if (name, precision) not in cast_of:
                    cast = names.fresh(f"{name}_{'fp16' if precision == FP16 else 'fp32'}")
                    nodes.append(helper.make_node("Cast", [name], [cast], to=precision,
                                                  name=names.fresh(f"Cast_{cast}")))
                    counts["casts"] += 1
                    cast_of[(name, precision)] = cast
                node.input[index] = cast_of[(name, precision)]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)

    own_values = {name for node in graph.node for name in node.output}
    for name in own_values:
        if plan.dtype.get(name) == FP16:
            set_value_type(graph, name, FP16)
    for output in graph.output:  # the interface keeps its dtype: an fp16 result gets a Cast back to fp32
        if output.name in own_values and plan.dtype.get(output.name) == FP16:
            internal = names.fresh(f"{output.name}_fp16")
            for node in graph.node:
                node.output[:] = [internal if n == output.name else n for n in node.output]
            rename_uses(graph, {output.name: internal})
            graph.node.append(helper.make_node("Cast", [internal], [output.name], to=FP32,
                                               name=names.fresh(f"Cast_{output.name}")))
            counts["casts"] += 1
            output.type.tensor_type.elem_type = FP32
