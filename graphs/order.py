"""Node order: each node after the producers of what it reads."""
from __future__ import annotations

import onnx

from .errors import GraphError
from .walk import subgraphs, use_counts


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
        raise GraphError(f"graph {graph.name!r} has a cycle; a pass produced an invalid rewrite")
    nodes = [graph.node[index] for index in order]
    del graph.node[:]
    graph.node.extend(nodes)
