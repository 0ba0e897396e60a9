"""Initializer dedupe: tensors with equal content (dtype, shape, bytes) are stored once.

A body may read an initializer of any enclosing graph, so a copy inside a Loop body is replaced by the outer one;
copies in sibling bodies (If branches) are each kept in their own graph. Initializers that are also graph inputs
can be overridden by the caller and are left alone. With `transposes`, a matrix that is the transpose of a kept
one (the tied MLM decoder: the embedding matrix V x E and the exporter's folded E x V copy) becomes a Transpose
node of it.
"""
from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

from ..names import rename_uses
from ..size import array_digest, tensor_nbytes, transposed_digest
from ..walk import scopes


def content_key(tensor: onnx.TensorProto) -> str | tuple:
    """Equal keys mean equal tensors (size.array_digest: dtype, shape and bytes)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return ("external", tensor.name)  # content not loaded: never merged
    return array_digest(numpy_helper.to_array(tensor))


def dedupe_initializers(model: onnx.ModelProto, transposes: bool = False) -> dict[str, int]:
    """Merge equal initializers, the first in graph order kept. Returns {"merged": tensors removed,
    "bytes_saved": their bytes}, and with `transposes` also "transposed": matrices made Transpose nodes."""
    merged = saved = transposed = 0
    keys: dict[int, dict] = {}  # id(scope) -> content key -> kept name, for that scope alone
    for scope in scopes(model):
        graph = scope.graph
        interface = {value.name for value in (*graph.input, *graph.output)}
        visible: dict = {}
        for outer in list(scope.chain)[1:][::-1]:
            visible.update(keys[id(outer)])
        own: dict = {}
        renames: dict[str, str] = {}
        transpose_nodes = []
        for tensor in graph.initializer:
            if tensor.name in interface:
                continue
            key = content_key(tensor)
            kept = own.get(key) or visible.get(key)
            if kept is not None:
                renames[tensor.name] = kept
                saved += tensor_nbytes(tensor)
                continue
            original = transposed_original(tensor, own, visible) if transposes else None
            if original is not None:
                transpose_nodes.append(helper.make_node("Transpose", [original], [tensor.name],
                                                        name=f"shared_transpose/{tensor.name}", perm=[1, 0]))
                continue
            own[key] = tensor.name
        keys[id(scope)] = own
        if renames:
            rename_uses(graph, renames)
            merged += len(renames)
        if renames or transpose_nodes:
            scope.remove_initializers(set(renames) | {node.output[0] for node in transpose_nodes})
        for node in reversed(transpose_nodes):
            graph.node.insert(0, node)
        transposed += len(transpose_nodes)
    report = {"merged": merged, "bytes_saved": saved}
    return {**report, "transposed": transposed} if transposes else report


def transposed_original(tensor: onnx.TensorProto, *kept: dict) -> str | None:
    """The kept matrix whose transpose `tensor` holds, if any."""
    if len(tensor.dims) != 2 or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    digest = transposed_digest(numpy_helper.to_array(tensor))
    return next((names[digest] for names in kept if digest in names), None) if digest else None
