"""Facts about one node, one value or one model's opset imports: the ONNX domains, Constant nodes' tensors, a
value's dims, opset versions.

Nothing here walks a graph, so walk.py and every pass can import it."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

ONNX_DOMAINS = ("", "ai.onnx")
MS_DOMAIN = "com.microsoft"  # onnxruntime's contrib ops


def opset_of(model: onnx.ModelProto, domain: str = "") -> int:
    """The model's opset version for `domain` ("" is ONNX's own, also spelled "ai.onnx"); 0 when it imports none."""
    domains = ONNX_DOMAINS if domain in ONNX_DOMAINS else (domain,)
    return next((entry.version for entry in model.opset_import if entry.domain in domains), 0)


def ensure_opset(model: onnx.ModelProto, domain: str, version: int) -> None:
    """Import `domain` at `version` unless the model already imports it."""
    if not any(entry.domain == domain for entry in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(domain, version))


def attribute_value(node: onnx.NodeProto, name: str, default=None):
    """A node's attribute value (ints as a list, strings as str), or `default` when the node does not set it."""
    for attribute in node.attribute:
        if attribute.name == name:
            value = onnx.helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def dims_of(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """A value's dims: an int when static, the symbol's name when symbolic, None when unknown."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value.type.tensor_type.shape.dim]


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
