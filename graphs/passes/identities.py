"""Identity removal: readers of an Identity's output read its input instead."""
from __future__ import annotations

import onnx

from ..names import rename_uses
from ..nodes import ONNX_DOMAINS
from ..walk import scopes


def remove_identities(model: onnx.ModelProto, of_initializers: bool = False) -> int:
    """Identity(x) -> y: readers of y read x; chains resolve to the first source. Kept where y is a graph output
    (the interface names it). With `of_initializers`, only Identities that alias an initializer go (the exporter
    emits one per reuse of a shared weight or per parameter of equal value): node counts then do not depend on
    weight values. Returns how many were removed."""
    removed = 0
    for scope in scopes(model):
        graph = scope.graph
        outputs = {value.name for value in graph.output}
        renames: dict[str, str] = {}
        kept = []
        for node in graph.node:
            source = renames.get(node.input[0], node.input[0]) if node.input else ""
            if (node.op_type == "Identity" and node.domain in ONNX_DOMAINS and node.output[0] not in outputs
                    and (not of_initializers or scope.owner_of(source) is not None)):
                renames[node.output[0]] = source
                continue
            kept.append(node)
        if renames:
            for name, source in renames.items():  # an Identity listed before the one it reads
                while source in renames:
                    source = renames[source]
                renames[name] = source
            del graph.node[:]
            graph.node.extend(kept)
            rename_uses(graph, renames)
            removed += len(renames)
    return removed
