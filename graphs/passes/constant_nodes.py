"""Constant nodes -> initializers, so dedupe, CSE and folding see one kind of constant."""
from __future__ import annotations

import onnx
from onnx import numpy_helper

from ..nodes import constant_node_value
from ..walk import scopes


def constants_to_initializers(model: onnx.ModelProto, min_elements: int = 0, outermost: bool = False) -> int:
    """Constant nodes holding `min_elements` or more become initializers: of their own graph, or with
    `outermost` of the main graph (a Constant reads nothing, so every body sees it there, and dedupe compares it
    with the shared weights). Constants that are graph outputs stay. Returns how many were converted."""
    converted = 0
    for scope in scopes(model):
        graph = scope.graph
        home = scope.root if outermost else scope
        outputs = {value.name for value in graph.output}
        kept = []
        for node in graph.node:
            value = constant_node_value(node)
            if value is None or value.size < min_elements or node.output[0] in outputs:
                kept.append(node)
                continue
            home.add_initializer(numpy_helper.from_array(value, node.output[0]))
            converted += 1
        if len(kept) != len(graph.node):
            del graph.node[:]
            graph.node.extend(kept)
    return converted
