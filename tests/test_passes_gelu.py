"""Gelu fusions: ONNX Gelu (portable, opset >= 20) and FastGelu / BiasGelu (onnxruntime), in every layer."""
from __future__ import annotations

import onnx
import pytest

from graphs.passes.gelu import fuse_gelu
from graphs.size import op_counts
from graphs.walk import scopes
from tests.passes_graphs import LAYOUTS, assert_same_outputs, group_cached, unique_initializer_bytes


def fused(layout: str, profile: str, **group) -> tuple[onnx.ModelProto, onnx.ModelProto, dict, int]:
    model = LAYOUTS[layout](group_cached(**group), 3)
    before = onnx.ModelProto()
    before.CopyFrom(model)
    report = fuse_gelu(model, profile)
    return before, model, report, (3 if layout == "unrolled" else 1)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("hidden_act, opset, approximate", [
    ("gelu_new", 17, "tanh"), ("gelu", 14, "none"),
])
def test_portable_gelu_at_opset_20(layout, hidden_act, opset, approximate):
    before, model, report, layers = fused(layout, "portable", hidden_act=hidden_act, opset=opset, target_opset=20)

    counts = op_counts(model)
    assert report == {"fused": layers, "refused": {}}
    assert counts["Gelu"] == layers
    assert counts["Tanh"] == counts["Erf"] == 0
    gelu = next(node for scope in scopes(model) for node in scope.graph.node if node.op_type == "Gelu")
    assert onnx.helper.get_attribute_value(gelu.attribute[0]).decode() == approximate
    assert unique_initializer_bytes(model) <= 1.02 * unique_initializer_bytes(before)
    assert_same_outputs(before, model)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_portable_below_opset_20_keeps_the_decomposition(layout):
    before, model, report, layers = fused(layout, "portable", hidden_act="gelu_new", opset=17)
    assert report == {"fused": 0, "refused": {"opset 17 < 20 has no Gelu; the decomposition stays": layers}}
    assert model.SerializeToString() == before.SerializeToString()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("hidden_act, opset, op, adds", [  # adds gone per layer: the bias, 1 + ..., x + ...
    ("gelu_new", 17, "FastGelu", 3), ("gelu_pytorch_tanh", 17, "FastGelu", 3), ("gelu", 17, "BiasGelu", 2),
    ("gelu", 20, "BiasGelu", 1),  # from the ONNX Gelu op the exporter writes at opset 20
])
def test_onnxruntime_gelu_takes_the_bias_in(layout, hidden_act, opset, op, adds):
    before, model, report, layers = fused(layout, "onnxruntime", hidden_act=hidden_act, opset=opset)

    counts = op_counts(model)
    assert report == {"fused": layers, "refused": {}}
    assert counts[op] == layers
    assert counts["Add"] == op_counts(before)["Add"] - layers * adds
    assert counts["Tanh"] == counts["Erf"] == counts["Gelu"] == 0
    assert any(entry.domain == "com.microsoft" for entry in model.opset_import)
    assert unique_initializer_bytes(model) <= 1.02 * unique_initializer_bytes(before)
    assert_same_outputs(before, model)


@pytest.mark.parametrize("profile", ["portable", "onnxruntime"])
def test_a_different_formula_is_not_taken_for_gelu(profile):
    # gelu_fast: tanh(x * 0.79788 * (1 + 0.044715 * x * x)) - a different association, left as written
    before, model, report, _ = fused("unrolled", profile, hidden_act="gelu_fast", opset=17, target_opset=20)
    assert report == {"fused": 0, "refused": {}}
    assert op_counts(model) == op_counts(before)


def test_a_gelu_whose_inner_value_is_read_elsewhere_is_not_fused():
    model = LAYOUTS["unrolled"](group_cached(hidden_act="gelu_new"), 3)
    tanh = next(node for node in model.graph.node if node.op_type == "Tanh")
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tanh.input[0]))
    before = onnx.ModelProto()
    before.CopyFrom(model)

    report = fuse_gelu(model, "onnxruntime")

    assert report["fused"] == 2
    assert list(report["refused"]) == [f"intermediate {tanh.input[0]!r} is also read outside the Gelu"]
    assert_same_outputs(before, model)
