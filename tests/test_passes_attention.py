"""com.microsoft Attention: every layer fused, one concatenated QKV weight shared by all layers / the Loop body."""
from __future__ import annotations

import onnx
import pytest
from onnx import helper

from graphs.passes.attention import fuse_attention
from graphs.size import op_counts
from graphs.walk import scopes
from tests.passes_graphs import (
    HIDDEN, LAYOUTS, assert_same_outputs, body_of, group_cached, unique_initializer_bytes,
)


def qkv_weights(model: onnx.ModelProto) -> list[tuple[str, list[int]]]:
    return [(scope.graph.name, list(t.dims)) for scope in scopes(model) for t in scope.graph.initializer
            if list(t.dims) == [HIDDEN, 3 * HIDDEN]]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fold_constants", [True, False])
def test_every_layer_fuses_with_one_shared_qkv_weight(layout, fold_constants):
    from graphs.passes.simplify import simplify

    model = LAYOUTS[layout](group_cached(fold_constants=fold_constants), 3)
    simplify(model)  # the pipeline runs it first: weight transposes folded once
    before = onnx.ModelProto()
    before.CopyFrom(model)
    layers = 3 if layout == "unrolled" else 1

    report = fuse_attention(model)

    counts = op_counts(model)
    assert report == {"fused": layers, "refused": {}}
    assert counts["Attention"] == layers
    assert counts["Softmax"] == 0
    assert counts["MatMul"] == op_counts(before)["MatMul"] - 5 * layers  # q, k, v, scores, context
    assert counts["Expand"] == 1  # the mask, broadcast to (B, 1, S, S) once for all layers
    assert qkv_weights(model) == [(model.graph.name, [HIDDEN, 3 * HIDDEN])]  # once, in the outer graph
    assert unique_initializer_bytes(model) <= 1.02 * unique_initializer_bytes(before)
    attention = next(n for s in scopes(model) for n in s.graph.node if n.op_type == "Attention")
    assert {a.name: helper.get_attribute_value(a) for a in attention.attribute}["num_heads"] == 4
    assert_same_outputs(before, model)


def test_the_loop_body_reads_the_outer_qkv_weight_and_mask():
    model = LAYOUTS["loop"](group_cached(), 3)
    fuse_attention(model)
    body = body_of(model)
    attention = next(node for node in body.node if node.op_type == "Attention")
    outer = {tensor.name for tensor in model.graph.initializer}
    outer_values = {name for node in model.graph.node for name in node.output}
    assert attention.input[1] in outer and attention.input[2] in outer
    assert attention.input[5] in outer_values  # the expanded mask is computed outside the Loop
    assert not body.initializer


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_query_weight_read_elsewhere_is_not_concatenated(layout):
    model = LAYOUTS[layout](group_cached(), 3)
    query = next(node for s in scopes(model) for node in s.graph.node
                 if node.op_type == "MatMul" and "query" in node.output[0])
    weight = query.input[1]
    model.graph.node.append(helper.make_node("MatMul", ["hidden", weight], ["probe"]))
    model.graph.output.append(helper.make_empty_tensor_value_info("probe"))
    before = onnx.ModelProto()
    before.CopyFrom(model)

    report = fuse_attention(model)

    layers = 3 if layout == "unrolled" else 1
    reason = f"{weight!r} is also read outside attention; a QKV concatenation would store it twice"
    assert report == {"fused": 0, "refused": {reason: layers}}
    assert op_counts(model)["Attention"] == 0
    assert_same_outputs(before, model)


def test_scores_scaled_by_a_multiplication_fuse_with_that_scale():
    import numpy as np
    from onnx import numpy_helper

    from graphs.passes.simplify import simplify

    model = LAYOUTS["unrolled"](group_cached(), 2)
    simplify(model)
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Div" and node.input[1] in constants:
            divisor = numpy_helper.to_array(constants[node.input[1]])
            name = f"{node.output[0]}/reciprocal"
            model.graph.initializer.append(numpy_helper.from_array((1 / divisor).astype(np.float32), name))
            node.op_type = "Mul"
            node.input[:] = [name, node.input[0]]  # constant first, to exercise operand order
    before = onnx.ModelProto()
    before.CopyFrom(model)

    assert fuse_attention(model) == {"fused": 2, "refused": {}}
    attention = next(n for n in model.graph.node if n.op_type == "Attention")
    scale = {a.name: helper.get_attribute_value(a) for a in attention.attribute}["scale"]
    assert scale == pytest.approx(1 / np.sqrt(HIDDEN // 4))
    assert_same_outputs(before, model)
