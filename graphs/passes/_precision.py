"""What the precision passes (fp16, QDQ) share: graphs with their enclosing scopes, value types, fresh names.

A Loop body reads the shared weights and the attention bias from the outer scope by name, so a value's owner
and its element type are looked up along the scope chain. Names are unique across the model (ONNX SSA).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import TensorProto

from ..walk import all_graphs, subgraphs


def reads(graph: onnx.GraphProto) -> set[str]:
    """Every name this graph and the bodies inside it read (node inputs and graph outputs)."""
    names = {output.name for output in graph.output}
    for node in graph.node:
        names.update(name for name in node.input if name)
        for sub in subgraphs(node):
            names.update(reads(sub))
    return names


@dataclass(eq=False)
class Scope:
    """One graph, its parent scope, and the element type of each value it defines."""

    graph: onnx.GraphProto
    parent: "Scope | None" = None
    types: dict[str, int] = field(default_factory=dict)
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    constant_nodes: dict[str, onnx.NodeProto] = field(default_factory=dict)

    def owner_of(self, name: str) -> "Scope | None":
        scope = self
        while scope is not None:
            if name in scope.types:
                return scope
            scope = scope.parent
        return None

    def type_of(self, name: str) -> int:
        owner = self.owner_of(name)
        return TensorProto.UNDEFINED if owner is None else owner.types[name]

    def is_constant(self, name: str) -> bool:
        owner = self.owner_of(name)
        return owner is not None and (name in owner.initializers or name in owner.constant_nodes)


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named value, subgraphs included (from ONNX shape inference, falling back to
    declared types when inference cannot run, e.g. on contrib ops)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is a help here, not a requirement
        inferred = model
    types: dict[str, int] = {}
    for graph in all_graphs(inferred.graph):
        for value in (*graph.input, *graph.output, *graph.value_info):
            if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
                types[value.name] = value.type.tensor_type.elem_type
        for tensor in graph.initializer:
            types[tensor.name] = tensor.data_type
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
                types[node.output[0]] = node.attribute[0].t.data_type
            elif node.op_type == "Cast":
                to = next(a.i for a in node.attribute if a.name == "to")
                types[node.output[0]] = to
    _fill_unknown_types(inferred.graph, types)
    return types


# ops whose outputs are integer whatever their inputs; contrib ops (which shape inference may not type) keep
# float outputs except EmbedLayerNormalization's mask_index
_INTEGER_OUTPUT_OPS = {"Shape": TensorProto.INT64, "Size": TensorProto.INT64, "ArgMax": TensorProto.INT64,
                       "ArgMin": TensorProto.INT64, "NonZero": TensorProto.INT64}


def _fill_unknown_types(graph: onnx.GraphProto, types: dict[str, int]) -> None:
    """Give untyped node outputs a type by propagation, in node order (what shape inference left out)."""
    for node in graph.node:
        for sub in subgraphs(node):
            _fill_unknown_types(sub, types)
        for index, name in enumerate(node.output):
            if not name or types.get(name):
                continue
            if node.op_type in _INTEGER_OUTPUT_OPS:
                types[name] = _INTEGER_OUTPUT_OPS[node.op_type]
            elif node.op_type == "EmbedLayerNormalization" and index == 1:
                types[name] = TensorProto.INT32
            else:
                known = [types.get(i) for i in node.input if i and types.get(i)]
                floats = [t for t in known if t in (TensorProto.FLOAT, TensorProto.FLOAT16)]
                if floats:
                    types[name] = floats[0]


def build_scopes(model: onnx.ModelProto, types: dict[str, int]) -> list[Scope]:
    """Every graph as a Scope, enclosing graphs before their bodies."""
    found: list[Scope] = []

    def visit(graph: onnx.GraphProto, parent: Scope | None) -> None:
        scope = Scope(graph, parent)
        for value in graph.input:
            scope.types[value.name] = types.get(value.name, TensorProto.UNDEFINED)
        for tensor in graph.initializer:
            scope.types[tensor.name] = tensor.data_type
            scope.initializers[tensor.name] = tensor
        for node in graph.node:
            if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
                scope.constant_nodes[node.output[0]] = node
            for name in node.output:
                if name:
                    scope.types[name] = types.get(name, TensorProto.UNDEFINED)
        found.append(scope)
        for node in graph.node:
            for sub in subgraphs(node):
                visit(sub, scope)

    visit(model.graph, None)
    return found


def set_value_type(graph: onnx.GraphProto, name: str, elem_type: int) -> None:
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == name and value.type.HasField("tensor_type"):
            value.type.tensor_type.elem_type = elem_type


def rename_reads(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Point node inputs reading `old` (in this graph and bodies inside it) at `new`."""
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new
        for sub in subgraphs(node):
            rename_reads(sub, old, new)


def bypass_constant_identities(model: onnx.ModelProto) -> int:
    """Drop Identity nodes that copy an initializer (torch.onnx.export emits one per reuse of a shared weight),
    pointing their readers at the initializer itself. Returns how many were dropped."""
    dropped = 0

    def visit(graph: onnx.GraphProto, visible: set[str]) -> None:
        nonlocal dropped
        visible = visible | {tensor.name for tensor in graph.initializer}
        outputs = {value.name for value in graph.output}
        kept = []
        for node in graph.node:
            if node.op_type == "Identity" and node.input[0] in visible and node.output[0] not in outputs:
                rename_reads(graph, node.output[0], node.input[0])
                dropped += 1
            else:
                kept.append(node)
        del graph.node[:]
        graph.node.extend(kept)
        for node in graph.node:
            for sub in subgraphs(node):
                visit(sub, visible)

    visit(model.graph, set())
    return dropped
