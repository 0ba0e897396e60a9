"""Simplification that never copies a shared weight: constant folding, common subexpressions, dead code.

onnxsim 0.4, measured on the graphs here, merges identical per-layer Transposes of a weight, but folds a Transpose
of a weight that is also read directly into a second stored tensor (W and W^T both in the file), and unrolls a
Loop whose trip count is constant (the Loop, and with it the single copy of the body, is gone). Here:
  1. identical nodes are merged first (common subexpressions), so N per-layer Transposes of W become one;
  2. a node is folded only if its result is small or no larger than the inputs that die with it, so a weight
     that is still read elsewhere is never materialized a second time;
  3. the folded tensor is stored in the outermost graph that holds its inputs: a Transpose in a Loop body of an
     outer weight becomes one outer initializer, not a body constant; Loops stay Loops.
Q/DQ nodes are never folded (they carry the INT8 weights and TensorRT reads the pattern).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from ..constants import Constants
from ..infer import static_shapes
from ..names import rename_uses
from ..nodes import ONNX_DOMAINS, attribute_value
from ..order import toposort
from ..size import tensor_nbytes
from ..walk import Scope, scopes, subgraphs, use_counts
from .constant_nodes import constants_to_initializers
from .dead_code import remove_dead
from .dedupe import dedupe_initializers
from .identities import remove_identities

NOT_FOLDED = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
    "Loop", "If", "Scan", "Constant",
}
SMALL_BYTES = 1024  # a folded result this small is always worth storing (shape vectors, scalars)


def node_key(node: onnx.NodeProto) -> tuple | None:
    """What makes two nodes compute the same value (op, inputs, attributes); None for nodes never merged."""
    if node.op_type in NOT_FOLDED or any(True for _ in subgraphs(node)):
        return None
    attributes = tuple(sorted((a.name, a.SerializeToString()) for a in node.attribute))
    return (node.domain or "", node.op_type, tuple(node.input), attributes, len(node.output))


def merge_common_subexpressions(model: onnx.ModelProto) -> int:
    """Nodes with the same op, inputs and attributes in one graph are computed once."""
    merged = 0
    for scope in scopes(model):
        graph = scope.graph
        toposort(graph)
        outputs = {value.name for value in graph.output}
        seen: dict[tuple, onnx.NodeProto] = {}
        renames: dict[str, str] = {}
        kept = []
        for node in graph.node:
            for index, name in enumerate(node.input):
                if name in renames:
                    node.input[index] = renames[name]
            key = node_key(node)
            first = seen.get(key) if key is not None else None
            if first is None or any(name in outputs for name in node.output):
                if key is not None:
                    seen.setdefault(key, node)
                kept.append(node)
                continue
            renames.update({mine: theirs for mine, theirs in zip(node.output, first.output) if mine})
            merged += 1
        if renames:
            del graph.node[:]
            graph.node.extend(kept)
            rename_uses(graph, renames)
    return merged


def evaluate(node: onnx.NodeProto, inputs: list[np.ndarray | None], model: onnx.ModelProto) -> list[np.ndarray]:
    """The node's outputs for these constant inputs, computed by onnx's reference evaluator."""
    if node.op_type == "Transpose" and node.domain in ONNX_DOMAINS:
        perm = attribute_value(node, "perm")
        return [np.ascontiguousarray(np.transpose(inputs[0], perm))]
    names = [f"in{i}" if value is not None else "" for i, value in enumerate(inputs)]
    single = onnx.helper.make_node(node.op_type, names, [f"out{i}" for i in range(len(node.output))],
                                   domain=node.domain)
    single.attribute.extend(node.attribute)
    graph = onnx.helper.make_graph(
        [single], "fold",
        [onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
         for name, value in zip(names, inputs) if value is not None],
        [onnx.helper.make_empty_tensor_value_info(name) for name in single.output],
    )
    reference = ReferenceEvaluator(onnx.helper.make_model(graph, opset_imports=model.opset_import))
    return [np.asarray(value) for value in
            reference.run(None, {name: value for name, value in zip(names, inputs) if value is not None})]


class Folder:
    """Constant folding over one model; counts what it folded and what it refused to copy."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.folded = 0
        self.refused_copies = 0
        self.shapes = static_shapes(model)

    def run(self) -> int:
        """Fold every graph once; the number of nodes folded."""
        before = self.folded
        for scope in scopes(self.model):
            self.fold_graph(scope)
        return self.folded - before

    def fold_graph(self, scope: Scope) -> None:
        """Replace the nodes of one graph whose inputs are all constant (or shapes known) by initializers."""
        graph = scope.graph
        outputs = {value.name for value in graph.output}
        partial: dict[str, list[int | None]] = {}  # Shape outputs with some static dims
        kept = []
        constants = Constants(scope)
        for node in list(graph.node):
            if node.op_type == "Shape" and node.domain in ONNX_DOMAINS:
                dims = self.shape_of(node)
                if dims is not None:
                    partial[node.output[0]] = dims
            values = self.static_inputs(node, constants, partial)
            if values is None or node.op_type in NOT_FOLDED or any(True for _ in subgraphs(node)):
                kept.append(node)
                continue
            if any(name in outputs for name in node.output) or node.domain not in ONNX_DOMAINS:
                kept.append(node)
                continue
            if not self.store(node, values, scope):
                kept.append(node)
        if len(kept) != len(graph.node):
            del graph.node[:]
            graph.node.extend(kept)

    def shape_of(self, node: onnx.NodeProto) -> list[int | None] | None:
        """The dims a Shape node reads (its start/end slice), when shape inference knows them all."""
        dims = self.shapes.get(node.input[0])
        if dims is None:
            return None
        start = attribute_value(node, "start", 0)
        end = attribute_value(node, "end", len(dims))
        return dims[slice(start, end)]

    def static_inputs(self, node, constants: Constants, partial) -> list[np.ndarray | None] | None:
        """Input values when all are known; a Shape with static dims, or Gather of static dims, counts as known."""
        if node.op_type == "Shape" and node.output[0] in partial:
            dims = partial[node.output[0]]
            return [] if all(d is not None for d in dims) else None
        if node.op_type == "Gather" and node.input[0] in partial:
            indices = constants.value(node.input[1])
            dims = partial[node.input[0]]
            if indices is None or not np.issubdtype(indices.dtype, np.integer):
                return None
            chosen = [dims[int(i)] for i in indices.reshape(-1)]
            if any(d is None for d in chosen):
                return None
            return [np.array([-1 if d is None else d for d in dims], dtype=np.int64), indices]
        values = []
        for name in node.input:
            if not name:
                values.append(None)
                continue
            value = constants.value(name)
            if value is None:
                return None
            values.append(value)
        return values

    def store(self, node: onnx.NodeProto, values: list[np.ndarray | None], scope: Scope) -> bool:
        """Store the node's outputs as initializers where its inputs live; False when it cannot be evaluated or the
        result would take more bytes than folding frees."""
        if node.op_type == "Shape":
            results = [np.array(self.shape_of(node), dtype=np.int64)]
        else:
            try:
                results = evaluate(node, values, self.model)
            except Exception:  # an op the reference cannot run stays in the graph
                return False
        produced = sum(int(r.nbytes) for r in results)
        if produced > max(SMALL_BYTES, self.freed_bytes(node, scope)):
            self.refused_copies += 1
            return False
        owners = [scope.owner_of(name) for name in node.input if name]
        owners = [owner for owner in owners if owner is not None]
        home = max(owners, key=lambda owner: owner.depth) if owners else scope
        for name, result in zip(node.output, results):
            if name:
                home.add_initializer(numpy_helper.from_array(np.asarray(result), name))
        self.folded += 1
        return True

    def freed_bytes(self, node: onnx.NodeProto, scope: Scope) -> int:
        """Bytes of input initializers this node is the only reader of (they die when it is folded)."""
        counts = use_counts(self.model.graph)
        freed = 0
        for name in set(node.input):
            tensor = scope.initializer(name) if name else None
            if tensor is not None and counts[name] == list(node.input).count(name):
                freed += tensor_nbytes(tensor)
        return freed


def simplify(model: onnx.ModelProto, max_rounds: int = 8) -> dict[str, int]:
    """Fold, merge and prune in place until nothing changes; returns counts per step."""
    report = {"constants": constants_to_initializers(model), "identities": remove_identities(model)}
    report.update(merged=0, cse=0, folded=0, refused_copies=0)
    for _ in range(max_rounds):
        merged = dedupe_initializers(model)["merged"]
        common = merge_common_subexpressions(model)
        folder = Folder(model)
        folded = folder.run()
        report["merged"] += merged
        report["cse"] += common
        report["folded"] += folded
        report["refused_copies"] = folder.refused_copies
        remove_dead(model)
        if not (merged or common or folded):
            break
    report["identities"] += remove_identities(model)
    report["dead_nodes"], report["dead_initializers"] = remove_dead(model)
    for scope in scopes(model):
        toposort(scope.graph)
    return report
