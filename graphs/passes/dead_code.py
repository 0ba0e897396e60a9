"""Dead code: nodes whose outputs nobody reads and initializers nobody reads, in every graph."""
from __future__ import annotations

import onnx

from ..walk import scopes, use_counts


def remove_dead(model: onnx.ModelProto) -> tuple[int, int]:
    """Drop dead nodes and initializers to a fixed point. Initializers that are also graph inputs are part of
    the interface and stay. Returns (nodes, initializers)."""
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
