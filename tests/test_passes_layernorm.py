"""LayerNormalization fusion from the decomposition exporters write below opset 17."""
from __future__ import annotations

import onnx
import pytest
from onnx import helper

from graphs.passes.layernorm import fuse_layernorm
from graphs.size import op_counts
from tests.passes_graphs import LAYOUTS, assert_same_outputs, group_cached, unique_initializer_bytes

DECOMPOSITION = ("ReduceMean", "Sub", "Sqrt")  # Pow and Div also appear in Gelu and attention


def copy_of(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


@pytest.mark.parametrize("layout", LAYOUTS)
def test_decomposed_layernorms_fuse_in_every_layer(layout):
    model = LAYOUTS[layout](group_cached(opset=14, target_opset=17), 3)
    layers = 3 if layout == "unrolled" else 1
    before = copy_of(model)
    assert op_counts(model)["LayerNormalization"] == 0

    report = fuse_layernorm(model)

    counts = op_counts(model)
    assert report == {"fused": 2 * layers, "refused": {}}
    assert counts["LayerNormalization"] == 2 * layers
    assert not any(counts[op] for op in DECOMPOSITION)
    assert counts["Pow"] == op_counts(before)["Pow"] - 2 * layers
    assert unique_initializer_bytes(model) <= 1.02 * unique_initializer_bytes(before)
    assert_same_outputs(before, model)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_below_opset_17_the_decomposition_stays(layout):
    model = LAYOUTS[layout](group_cached(opset=14), 3)
    before = model.SerializeToString()

    report = fuse_layernorm(model)

    layers = 3 if layout == "unrolled" else 1
    assert report == {"fused": 0, "refused": {"opset 14 < 17 has no LayerNormalization": 2 * layers}}
    assert model.SerializeToString() == before


def test_a_layernorm_whose_intermediate_is_read_elsewhere_is_not_fused():
    model = LAYOUTS["unrolled"](group_cached(opset=14, target_opset=17), 3)
    sqrt = next(node for node in model.graph.node if node.op_type == "Sqrt")
    model.graph.output.append(helper.make_empty_tensor_value_info(sqrt.output[0]))
    before = copy_of(model)

    report = fuse_layernorm(model)

    assert report == {"fused": 5, "refused": {"an intermediate value is read outside the pattern": 1}}
    assert op_counts(model)["Sqrt"] == 1
    assert_same_outputs(before, model)
