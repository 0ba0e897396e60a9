"""Visiting a model: every graph with its enclosing scopes, and who reads or produces each name.

A Loop body may read any value of an enclosing graph by name (that is how the body reaches the shared weights),
so "who uses this name" and "is this a constant" are questions about the scope chain, not one graph. Names are
assumed unique across the model (the exporter and the passes create them so).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import onnx

from .nodes import constant_tensor


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs a node holds in its attributes (a Loop's body, an If's branches)."""
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
    """One graph, the graphs that enclose it (outermost last), and the constants it stores: its initializers and
    its Constant nodes holding a tensor."""

    graph: onnx.GraphProto
    parent: Scope | None = None
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict, repr=False)
    constant_nodes: dict[str, onnx.NodeProto] = field(default_factory=dict, repr=False)  # by output name

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Re-read the graph's initializers and Constant nodes after a pass changed them."""
        self.initializers = {tensor.name: tensor for tensor in self.graph.initializer}
        self.constant_nodes = {node.output[0]: node for node in self.graph.node
                               if node.output and constant_tensor(node) is not None}

    @property
    def chain(self) -> Iterator[Scope]:
        """This scope and each enclosing one, innermost first."""
        scope: Scope | None = self
        while scope is not None:
            yield scope
            scope = scope.parent

    @property
    def depth(self) -> int:
        """0 for the main graph, 1 for a body in it, and so on."""
        return sum(1 for _ in self.chain) - 1

    @property
    def root(self) -> Scope:
        """The main graph's scope."""
        return list(self.chain)[-1]

    def owner_of(self, name: str) -> Scope | None:
        """The scope whose graph stores initializer `name`, searching outwards."""
        for scope in self.chain:
            if name in scope.initializers:
                return scope
        return None

    def initializer(self, name: str) -> onnx.TensorProto | None:
        """The initializer `name` of this graph or an enclosing one, else None."""
        owner = self.owner_of(name)
        return None if owner is None else owner.initializers[name]

    def is_constant(self, name: str) -> bool:
        """An initializer or a Constant node's tensor, of this graph or an enclosing one."""
        return any(name in scope.initializers or name in scope.constant_nodes for scope in self.chain)

    def add_initializer(self, tensor: onnx.TensorProto) -> None:
        """Store `tensor` in this graph and index it."""
        self.graph.initializer.append(tensor)
        self.initializers[tensor.name] = self.graph.initializer[-1]

    def remove_initializers(self, names: set[str]) -> None:
        """Drop the named initializers from this graph."""
        kept = [tensor for tensor in self.graph.initializer if tensor.name not in names]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)
        self.refresh()


def scopes(model: onnx.ModelProto) -> Iterator[Scope]:
    """Every graph of the model, enclosing graphs before the bodies they hold.

    Lazy on purpose: rebuilding a graph's node list copies the nodes (protobuf semantics), bodies included, so a
    body is looked up only after the caller is done with the graph that holds it. Callers may rewrite the
    current graph's nodes and add initializers to enclosing graphs, nothing else, while iterating. A pass that
    rewrites bodies after deciding over the whole model lists the scopes first and rewrites them innermost
    first (reversed)."""

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


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """The node of this graph that writes each value name."""
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
