"""What a graph stores: tensor bytes, op counts, content digests, and the proof that each weight is stored once.

A digest covers dtype, shape and the raw bytes, so two initializers with equal digests hold the same tensor.
Initializers of Loop bodies and large Constant nodes are counted too: a weight hidden in a Constant is still
a stored weight.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from .nodes import constant_tensor
from .walk import all_graphs, scopes


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes the tensor's values take (dims x item size), wherever they are stored."""
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every initializer in every graph (what the file stores for weights)."""
    return sum(tensor_nbytes(tensor) for scope in scopes(model) for tensor in scope.graph.initializer)


def op_counts(model: onnx.ModelProto) -> Counter:
    """op_type counts over every graph, Loop bodies included."""
    return Counter(node.op_type for scope in scopes(model) for node in scope.graph.node)


def array_digest(array: np.ndarray) -> str:
    """sha256 over dtype, shape and C-order bytes: equal digests mean equal tensors."""
    shape = np.shape(array)  # before ascontiguousarray, which makes a scalar a (1,) vector
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def transposed_digest(array: np.ndarray) -> str | None:
    """The digest a matrix's transpose has, to find a weight stored both ways; None for anything not a matrix."""
    return array_digest(array.T) if array.ndim == 2 and array.size > 1 else None


def stored_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """(where, tensor) for every initializer and Constant value in the model, subgraphs included."""
    for graph in all_graphs(model.graph):
        for tensor in graph.initializer:
            yield f"{graph.name}:{tensor.name}", tensor
        for node in graph.node:
            tensor = constant_tensor(node)
            if tensor is not None:
                yield f"{graph.name}:{node.name or node.output[0]}", tensor


def node_count(model: onnx.ModelProto, recursive: bool = True) -> int:
    """Nodes of the main graph, and with `recursive` of every Loop/If body too."""
    if not recursive:
        return len(model.graph.node)
    return sum(len(graph.node) for graph in all_graphs(model.graph))


@dataclass
class StorageReport:
    """What `storage_report` found: stored and distinct bytes, and each tensor stored twice."""
    tensor_bytes: int  # bytes of every stored tensor
    unique_bytes: int  # bytes of distinct tensors (by content)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (copy, original) with equal content
    transposed_duplicates: list[tuple[str, str]] = field(default_factory=list)  # (copy, original), copy == original.T

    @property
    def weights_once(self) -> bool:
        """True when no tensor is stored twice, neither as is nor transposed."""
        return not self.duplicates and not self.transposed_duplicates


def storage_report(model: onnx.ModelProto, min_elements: int = 16) -> StorageReport:
    """Hash every stored tensor; list those stored twice, directly or as a transpose.

    Tensors under `min_elements` (shape constants, scalars) are counted but not compared: equal scalars are not
    duplicated weights.
    """
    total = unique = 0
    first: dict[str, str] = {}  # digest -> where it is stored first
    matrices: list[tuple[str, np.ndarray]] = []
    duplicates = []
    for where, tensor in stored_tensors(model):
        nbytes = tensor_nbytes(tensor)
        total += nbytes
        array = numpy_helper.to_array(tensor)
        if array.size < min_elements:
            unique += nbytes
            continue
        digest = array_digest(array)
        if digest in first:
            duplicates.append((where, first[digest]))
            continue
        first[digest] = where
        unique += nbytes
        if array.ndim == 2:
            matrices.append((where, array))
    transposed, pairs = [], set()
    for where, array in matrices:
        original = first.get(transposed_digest(array))
        if original is not None and original != where and frozenset((where, original)) not in pairs:
            pairs.add(frozenset((where, original)))
            transposed.append((where, original))
    return StorageReport(total, unique, duplicates, transposed)
