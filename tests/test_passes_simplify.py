"""Simplification keeps each weight once: per-layer transposes fold into one shared tensor, in the outer graph."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphs.passes.simplify import SMALL_BYTES, simplify
from graphs.size import initializer_bytes, op_counts
from graphs.walk import scopes
from tests.passes_graphs import (
    HIDDEN, LAYOUTS, assert_same_outputs, body_of, group_cached, unique_initializer_bytes,
)

WEIGHT_MATRICES = 6  # query, key, value, dense, ffn, ffn_output


def matrices(model: onnx.ModelProto) -> list[str]:
    return [t.name for scope in scopes(model) for t in scope.graph.initializer if len(t.dims) == 2]


def transposes_of_weights(model: onnx.ModelProto) -> int:
    found = 0
    for scope in scopes(model):
        for node in scope.graph.node:
            if node.op_type == "Transpose" and scope.initializer(node.input[0]) is not None:
                found += 1
    return found


@pytest.mark.parametrize("layout", LAYOUTS)
def test_per_layer_weight_transposes_fold_once(layout):
    model = LAYOUTS[layout](group_cached(fold_constants=False), 3)
    before = onnx.ModelProto()
    before.CopyFrom(model)
    assert transposes_of_weights(model) == WEIGHT_MATRICES * (3 if layout == "unrolled" else 1)

    report = simplify(model)

    assert transposes_of_weights(model) == 0
    assert op_counts(model)["Loop"] == (layout == "loop")  # a constant trip count is no reason to unroll
    assert report["folded"] >= WEIGHT_MATRICES
    assert len(matrices(model)) == WEIGHT_MATRICES
    assert unique_initializer_bytes(model) <= 1.02 * unique_initializer_bytes(before)
    assert initializer_bytes(model) <= 1.02 * initializer_bytes(before)
    assert sum(op_counts(model).values()) < sum(op_counts(before).values())
    assert_same_outputs(before, model, atol=1e-6)


def test_folded_weights_of_a_loop_body_live_in_the_outer_graph():
    model = LAYOUTS["loop"](group_cached(fold_constants=False), 3)
    simplify(model)
    assert len([t for t in model.graph.initializer if len(t.dims) == 2]) == WEIGHT_MATRICES
    body_bytes = [numpy_helper.to_array(t).nbytes for t in body_of(model).initializer]
    assert all(size <= SMALL_BYTES for size in body_bytes)


def weight_read_twice(layout: str) -> onnx.ModelProto:
    """out = hidden @ W + hidden @ W^T: folding the Transpose would store W twice."""
    weight = np.random.default_rng(0).standard_normal((HIDDEN, HIDDEN)).astype(np.float32)
    nodes = [
        helper.make_node("Identity", ["W"], ["W_alias"]),
        helper.make_node("MatMul", ["hidden", "W_alias"], ["direct"]),
        helper.make_node("Transpose", ["W"], ["W_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["hidden", "W_t"], ["transposed"]),
        helper.make_node("Add", ["direct", "transposed"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "group",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", HIDDEN]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, 1, "seq"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    group = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return LAYOUTS[layout](group, 2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_transpose_of_a_weight_that_is_also_read_directly_is_not_folded(layout):
    model = weight_read_twice(layout)
    before = onnx.ModelProto()
    before.CopyFrom(model)

    report = simplify(model)

    assert report["refused_copies"] >= 1
    assert op_counts(model)["Transpose"] == 1
    assert op_counts(model)["Identity"] == (1 if layout == "loop" else 0)  # the Loop's condition pass-through
    assert len(matrices(model)) == 1
    assert_same_outputs(before, model, atol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_simplify_is_idempotent(layout):
    model = LAYOUTS[layout](group_cached(), 3)
    simplify(model)
    once = model.SerializeToString()
    report = simplify(model)
    assert (report["folded"], report["cse"], report["merged"]) == (0, 0, 0)
    assert model.SerializeToString() == once
