"""Initializer dedupe: tensors with equal content (dtype, shape, bytes) are stored once.

A body may read an initializer of any enclosing graph, so a copy inside a Loop body is replaced by the outer one;
copies in sibling bodies (If branches) are each kept in their own graph. Initializers that are also graph inputs
can be overridden by the caller and are left alone.
"""
from __future__ import annotations

import hashlib

import onnx

from ..walk import rename_uses, scopes, tensor_nbytes


def content_key(tensor: onnx.TensorProto) -> tuple:
    """Equal keys mean equal tensors (a sha256 of the bytes, with dtype and shape)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return ("external", tensor.name)  # content not loaded: never merged
    payload = onnx.numpy_helper.to_array(tensor).tobytes()
    return (tensor.data_type, tuple(tensor.dims), hashlib.sha256(payload).hexdigest())


def dedupe_initializers(model: onnx.ModelProto) -> dict[str, int]:
    """Merge equal initializers; returns {"merged": tensors removed, "bytes_saved": their bytes}."""
    merged = saved = 0
    keys: dict[int, dict[tuple, str]] = {}  # id(scope) -> content key -> kept name, for that scope alone
    for scope in scopes(model):
        graph = scope.graph
        interface = {value.name for value in (*graph.input, *graph.output)}
        visible: dict[tuple, str] = {}
        for outer in list(scope.chain)[1:][::-1]:
            visible.update(keys[id(outer)])
        own: dict[tuple, str] = {}
        renames: dict[str, str] = {}
        for tensor in graph.initializer:
            if tensor.name in interface:
                continue
            key = content_key(tensor)
            kept = own.get(key) or visible.get(key)
            if kept is None:
                own[key] = tensor.name
                continue
            renames[tensor.name] = kept
            saved += tensor_nbytes(tensor)
        keys[id(scope)] = own
        if renames:
            rename_uses(graph, renames)
            scope.remove_initializers(set(renames))
            merged += len(renames)
    return {"merged": merged, "bytes_saved": saved}

