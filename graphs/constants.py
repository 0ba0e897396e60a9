"""Every constant visible from a scope: initializers and Constant nodes of it and every enclosing graph."""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from .nodes import constant_tensor
from .walk import Scope


class Constants:
    """Constant values visible from a scope: initializers and Constant nodes of it and every enclosing graph."""

    def __init__(self, scope: Scope):
        self.scope = scope
        self._cache: dict[str, np.ndarray | None] = {}

    def __contains__(self, name: str) -> bool:
        return self.value(name) is not None

    def value(self, name: str) -> np.ndarray | None:
        """The constant's value as an array, or None when `name` is not a constant here."""
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
