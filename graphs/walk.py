"""Visiting a model: every graph with its enclosing scopes, name uses across Loop/If bodies, constants, order.

A Loop body may read any value of an enclosing graph by name (that is how the body reaches the shared weights),
so "who uses this name" and "is this a constant" are questions about the scope chain, not one graph. Names are
assumed unique across the model (the exporter and the passes create them so).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            yield from attribute.graphs


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph (Loop/If bodies), depth first."""
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from all_graphs(sub)


@dataclass(eq=False)
class Scope:
    """One graph and the graphs that enclose it (outermost last)."""

    graph: onnx.GraphProto
    parent: Scope | None = None
    _initializers: dict[str, onnx.TensorProto] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        self._initializers = {tensor.name: tensor for tensor in self.graph.initializer}

    @property
    def chain(self) -> Iterator[Scope]:
        scope: Scope | None = self
        while scope is not None:
            yield scope
            scope = scope.parent

    @property
    def depth(self) -> int:
        return sum(1 for _ in self.chain) - 1

    def owner_of(self, name: str) -> Scope | None:
        """The scope whose graph stores initializer `name`, searching outwards."""
        for scope in self.chain:
            if name in scope._initializers:
                return scope
        return None

    def initializer(self, name: str) -> onnx.TensorProto | None:
        owner = self.owner_of(name)
        return None if owner is None else owner._initializers[name]

    def add_initializer(self, tensor: onnx.TensorProto) -> None:
        self.graph.initializer.append(tensor)
        self._initializers[tensor.name] = self.graph.initializer[-1]

    def remove_initializers(self, names: set[str]) -> None:
        kept = [tensor for tensor in self.graph.initializer if tensor.name not in names]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)
        self.refresh()


def scopes(model: onnx.ModelProto) -> Iterator[Scope]:
    """Every graph of the model, enclosing graphs before the bodies they hold.

    Lazy on purpose: rebuilding a graph's node list copies the nodes (protobuf semantics), bodies included, so a
    body is looked up only after the caller is done with the graph that holds it. Callers may rewrite the
    current graph's nodes and add initializers to enclosing graphs, nothing else, while iterating."""

    def visit(graph: onnx.GraphProto, parent: Scope | None) -> Iterator[Scope]:
        scope = Scope(graph, parent)
        yield scope
        for node in scope.graph.node:
            for sub in subgraphs(node):
                yield from visit(sub, scope)

    yield from visit(model.graph, None)


def use_counts(graph: onnx.GraphProto) -> Counter:
    """How often each name is read: node inputs and graph outputs, in this graph and every body inside it."""
    counts: Counter = Counter()
    for node in graph.node:
        counts.update(name for name in node.input if name)
        for sub in subgraphs(node):
            counts.update(use_counts(sub))
    counts.update(output.name for output in graph.output)
    return counts


def rename_uses(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Point every read of an old name (node inputs, graph outputs excepted) at the new one, bodies included."""
    if not renames:
        return
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in renames:
                node.input[index] = renames[name]
        for sub in subgraphs(node):
            rename_uses(sub, renames)


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {name: node for node in graph.node for name in node.output if name}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Nodes of this graph reading each name (a node holding a body counts once for what its body reads)."""
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        names = {name for name in node.input if name}
        for sub in subgraphs(node):
            names.update(use_counts(sub))
        for name in names:
            found.setdefault(name, []).append(node)
    return found


def ensure_opset(model: onnx.ModelProto, domain: str, version: int) -> None:
    if not any(entry.domain == domain for entry in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(domain, version))


class Names:
    """Fresh names that collide with nothing in the model (values, initializers, nodes, in every graph)."""

    def __init__(self, model: onnx.ModelProto):
        self.taken: set[str] = set()
        for scope in scopes(model):
            graph = scope.graph
            self.taken.update(tensor.name for tensor in graph.initializer)
            self.taken.update(value.name for value in (*graph.input, *graph.output, *graph.value_info))
            for node in graph.node:
                self.taken.update(node.input)
                self.taken.update(node.output)
                self.taken.add(node.name)

    def fresh(self, base: str) -> str:
        name, index = base, 1
        while name in self.taken:
            name, index = f"{base}_{index}", index + 1
        self.taken.add(name)
        return name


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node, or None for forms that are not plain tensors (sparse, none)."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
        return None
    attribute = node.attribute[0]
    if attribute.name == "value":
        return numpy_helper.to_array(attribute.t)
    if attribute.name == "value_float":
        return np.array(attribute.f, dtype=np.float32)
    if attribute.name == "value_floats":
        return np.array(list(attribute.floats), dtype=np.float32)
    if attribute.name == "value_int":
        return np.array(attribute.i, dtype=np.int64)
    if attribute.name == "value_ints":
        return np.array(list(attribute.ints), dtype=np.int64)
    return None


class Constants:
    """Constant values visible from a scope: initializers of it and every enclosing graph, and Constant nodes."""

    def __init__(self, scope: Scope):
        self.scope = scope
        self.constant_nodes: dict[str, onnx.NodeProto] = {}
        for outer in scope.chain:
            for node in outer.graph.node:
                if node.op_type == "Constant" and node.output:
                    self.constant_nodes.setdefault(node.output[0], node)
        self._cache: dict[str, np.ndarray | None] = {}

    def __contains__(self, name: str) -> bool:
        return self.value(name) is not None

    def value(self, name: str) -> np.ndarray | None:
        if not name:
            return None
        if name not in self._cache:
            tensor = self.scope.initializer(name)
            if tensor is not None:
                self._cache[name] = numpy_helper.to_array(tensor)
            elif name in self.constant_nodes:
                self._cache[name] = constant_node_value(self.constant_nodes[name])
            else:
                self._cache[name] = None
        return self._cache[name]

    def scalar(self, name: str) -> float | None:
        """The value as a Python float when it holds exactly one element."""
        value = self.value(name)
        if value is None or value.size != 1:
            return None
        return float(value.reshape(()))


def toposort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each follows the producers of what it reads (outer-scope names count as available)."""
    produced = {name for node in graph.node for name in node.output if name}
    readers: dict[str, list[int]] = {}
    waiting: list[int] = []
    for index, node in enumerate(graph.node):
        needs = {name for name in node.input if name in produced}
        for sub in subgraphs(node):
            needs.update(name for name in use_counts(sub) if name in produced)
        needs.difference_update(node.output)
        waiting.append(len(needs))
        for name in needs:
            readers.setdefault(name, []).append(index)
    ready = [index for index, count in enumerate(waiting) if count == 0]
    order: list[int] = []
    while ready:
        index = ready.pop(0)
        order.append(index)
        for name in graph.node[index].output:
            for reader in readers.get(name, ()):
                waiting[reader] -= 1
                if waiting[reader] == 0:
                    ready.append(reader)
    if len(order) != len(graph.node):
        raise ValueError(f"graph {graph.name!r} has a cycle; a pass produced an invalid rewrite")
    nodes = [graph.node[index] for index in order]
    del graph.node[:]
    graph.node.extend(nodes)


def remove_dead(model: onnx.ModelProto) -> tuple[int, int]:
    """Drop nodes whose outputs nobody reads and initializers nobody reads, in every graph, to a fixed point.

    Initializers that are also graph inputs are part of the interface and stay. Returns (nodes, initializers)."""
    dead_nodes = dead_initializers = 0
    while True:
        counts = use_counts(model.graph)
        removed = 0
        for scope in scopes(model):
            graph = scope.graph
            kept = [node for node in graph.node if any(counts[name] for name in node.output if name)]
            removed += len(graph.node) - len(kept)
            if len(kept) != len(graph.node):
                del graph.node[:]
                graph.node.extend(kept)
        dead_nodes += removed
        if not removed:
            break
    counts = use_counts(model.graph)
    for scope in scopes(model):
        interface = {value.name for value in scope.graph.input}
        unused = {t.name for t in scope.graph.initializer if not counts[t.name] and t.name not in interface}
        if unused:
            scope.remove_initializers(unused)
            dead_initializers += len(unused)
    return dead_nodes, dead_initializers


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every initializer in every graph (what the file stores for weights)."""
    return sum(tensor_nbytes(tensor) for scope in scopes(model) for tensor in scope.graph.initializer)


def op_counts(model: onnx.ModelProto) -> Counter:
    """op_type counts over every graph, Loop bodies included."""
    return Counter(node.op_type for scope in scopes(model) for node in scope.graph.node)


def inferred_values(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """name -> type and shape from ONNX shape inference, bodies included; {} when inference fails."""
    try:
        inferred = onnx.shape_inference.infer_shapes(inference_copy(model), strict_mode=False)
    except Exception:  # inference is an aid to optimization, never a requirement
        return {}
    return {value.name: value for scope in scopes(inferred)
            for value in (*scope.graph.input, *scope.graph.value_info, *scope.graph.output)}


def value_shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """name -> dims from ONNX shape inference, bodies included: an int when static, the symbol's name when
    symbolic, None when unknown. Names whose rank is unknown are absent; {} when inference fails."""
    shapes: dict[str, list[int | str | None]] = {}
    for name, value in inferred_values(model).items():
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            shapes[name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                            for d in tensor.shape.dim]
    return shapes


def inference_copy(model: onnx.ModelProto, max_elements: int = 64) -> onnx.ModelProto:
    """A copy for ONNX shape inference, which inside a Loop/If body does not read the values of initializers
    (the body's own or outer ones): each small initializer a body reads becomes a Constant node in it."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for scope in scopes(copy):
        if scope.parent is None:
            continue
        graph = scope.graph
        read = {name for node in graph.node for name in node.input if name}
        constants = []
        for name in sorted(read):
            tensor = scope.initializer(name)
            if tensor is not None and np.prod(tensor.dims, dtype=np.int64) <= max_elements:
                constants.append(onnx.helper.make_node("Constant", [], [name], value=tensor))
        if constants:
            names = {node.output[0] for node in constants}
            own = [tensor for tensor in graph.initializer if tensor.name not in names]
            del graph.initializer[:]
            graph.initializer.extend(own)
            nodes = constants + list(graph.node)
            del graph.node[:]
            graph.node.extend(nodes)
    return copy
