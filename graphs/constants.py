"""Reading constant values: a Constant node's tensor, and every constant visible from a scope.

Graph-level imports stay out of this module (walk.Scope reads Constant nodes through it)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

if TYPE_CHECKING:
    from .walk import Scope

ONNX_DOMAINS = ("", "ai.onnx")


def constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor of a Constant node in the `value` form (the one exporters write), else None."""
    if node.op_type != "Constant" or node.domain not in ONNX_DOMAINS or len(node.attribute) != 1:
        return None
    attribute = node.attribute[0]
    return attribute.t if attribute.name == "value" and attribute.type == onnx.AttributeProto.TENSOR else None


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node in any plain form (value, value_float(s), value_int(s)), else None."""
    tensor = constant_tensor(node)
    if tensor is not None:
        return numpy_helper.to_array(tensor)
    if node.op_type != "Constant" or node.domain not in ONNX_DOMAINS or len(node.attribute) != 1:
        return None
    attribute = node.attribute[0]
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
    """Constant values visible from a scope: initializers and Constant nodes of it and every enclosing graph."""

    def __init__(self, scope: Scope):
        self.scope = scope
        self._cache: dict[str, np.ndarray | None] = {}

    def __contains__(self, name: str) -> bool:
        return self.value(name) is not None

    def value(self, name: str) -> np.ndarray | None:
        if not name:
            return None
        if name not in self._cache:
            self._cache[name] = self._read(name)
        return self._cache[name]

    def _read(self, name: str) -> np.ndarray | None:
        tensor = self.scope.initializer(name)
        if tensor is not None:
            return numpy_helper.to_array(tensor)
        for scope in self.scope.chain:
            if name in scope.constant_nodes:
                return numpy_helper.to_array(constant_tensor(scope.constant_nodes[name]))
        return None

    def scalar(self, name: str) -> float | None:
        """The value as a Python float when it holds exactly one element."""
        value = self.value(name)
        if value is None or value.size != 1:
            return None
        return float(value.reshape(()))
