"""Value names: fresh ones that collide with nothing, and pointing the reads of a name at another."""
from __future__ import annotations

import onnx

from .walk import scopes, subgraphs


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
        """`base`, or `base_1`, `base_2`... the first that nothing in the model uses; taken from then on."""
        name, index = base, 1
        while name in self.taken:
            name, index = f"{base}_{index}", index + 1
        self.taken.add(name)
        return name

    def claim(self, name: str) -> bool:
        """Take `name` as it is if nothing in the model uses it yet."""
        if name in self.taken:
            return False
        self.taken.add(name)
        return True


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
