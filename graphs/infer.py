"""Types and shapes of values, from ONNX shape inference (the one inference path of graphs/).

Inside a Loop/If body, ONNX inference does not read the values of initializers (the body's own or outer ones),
so it runs on a copy where each small initializer a body reads is a Constant node in that body. Inference is an
aid to optimization, never a requirement: when it fails, the types and shapes the model declares are used.
Outputs of com.microsoft ops have no ONNX schema; the fusions that write them record their value infos.
"""
from __future__ import annotations

import numpy as np
import onnx

from .nodes import attribute_value, constant_tensor, dims_of
from .walk import scopes


def inferred_values(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """name -> type and shape from ONNX shape inference, bodies included; {} when inference fails."""
    try:
        inferred = onnx.shape_inference.infer_shapes(inference_copy(model), strict_mode=False)
    except Exception:  # inference is an aid to optimization, never a requirement
        return {}
    return declared_values(inferred)


def declared_values(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """name -> the value info the model itself holds (inputs, value_info, outputs), bodies included."""
    return {value.name: value for scope in scopes(model)
            for value in (*scope.graph.input, *scope.graph.value_info, *scope.graph.output)}


def value_shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """name -> dims, bodies included: an int when static, the symbol's name when symbolic, None when unknown.
    Names whose rank is unknown are absent; {} when inference fails."""
    shapes: dict[str, list[int | str | None]] = {}
    for name, value in inferred_values(model).items():
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            shapes[name] = dims_of(value)
    return shapes


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """value_shapes with None wherever a dim is not a number."""
    return {name: [d if isinstance(d, int) else None for d in dims] for name, dims in value_shapes(model).items()}


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """name -> element type (TensorProto enum) of every typed value, bodies included."""
    values = inferred_values(model) or declared_values(model)
    types = {name: value.type.tensor_type.elem_type for name, value in values.items()
             if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type}
    for scope in scopes(model):  # what is certain whatever inference managed
        types.update((tensor.name, tensor.data_type) for tensor in scope.graph.initializer)
        for node in scope.graph.node:
            tensor = constant_tensor(node)
            if tensor is not None:
                types[node.output[0]] = tensor.data_type
            elif node.op_type == "Cast":
                types[node.output[0]] = attribute_value(node, "to")
    return types


def inference_copy(model: onnx.ModelProto, max_elements: int = 64) -> onnx.ModelProto:
    """A copy for ONNX shape inference: each small initializer a body reads becomes a Constant node in it."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for scope in scopes(copy):
        if scope.parent is None:
            continue
        graph = scope.graph
        read = {name for node in graph.node for name in node.input if name}
        constants = []
        for name in sorted(read):
            tensor = scope.initializer(name)
            if tensor is not None and np.prod(tensor.dims, dtype=np.int64) <= max_elements:
                constants.append(onnx.helper.make_node("Constant", [], [name], value=tensor))
        if constants:
            names = {node.output[0] for node in constants}
            own = [tensor for tensor in graph.initializer if tensor.name not in names]
            del graph.initializer[:]
            graph.initializer.extend(own)
            nodes = constants + list(graph.node)
            del graph.node[:]
            graph.node.extend(nodes)
    return copy
