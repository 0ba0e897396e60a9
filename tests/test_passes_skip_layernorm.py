"""com.microsoft SkipLayerNormalization: residual (+ bias) Add and LayerNormalization, in every layer."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphs.passes.skip_layernorm import fuse_skip_layernorm
from graphs.size import op_counts
from tests.passes_graphs import HIDDEN, LAYOUTS, assert_same_outputs, group_cached, unique_initializer_bytes


@pytest.mark.parametrize("layout", LAYOUTS)
def test_both_layernorms_of_every_layer_take_in_the_residual_and_bias(layout):
    model = LAYOUTS[layout](group_cached(), 3)
    before = onnx.ModelProto()
    before.CopyFrom(model)
    layers = 3 if layout == "unrolled" else 1

    report = fuse_skip_layernorm(model)

    counts = op_counts(model)
    assert report == {"fused": 2 * layers, "refused": {}}
    assert counts["SkipLayerNormalization"] == 2 * layers
    assert counts["LayerNormalization"] == 0
    assert counts["Add"] == op_counts(before)["Add"] - 4 * layers  # residual and bias Adds, twice per layer
    assert unique_initializer_bytes(model) <= 1.02 * unique_initializer_bytes(before)
    assert_same_outputs(before, model)


def broadcast_sum(layout: str) -> onnx.ModelProto:
    """out = LayerNorm(hidden + mean(hidden)): the (B, S, 1) summand is broadcast, not a skip."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("ReduceMean", ["hidden"], ["mean"], axes=[-1]),
        helper.make_node("Add", ["hidden", "mean"], ["sum"]),
        helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["out"], axis=-1, epsilon=1e-12),
    ]
    graph = helper.make_graph(
        nodes, "group",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", HIDDEN]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, 1, "seq"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
        initializer=[numpy_helper.from_array(rng.standard_normal(HIDDEN).astype(np.float32), name)
                     for name in ("gamma", "beta")],
    )
    return LAYOUTS[layout](helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), 2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_broadcast_summand_is_not_taken_for_a_skip(layout):
    model = broadcast_sum(layout)
    before = model.SerializeToString()

    report = fuse_skip_layernorm(model)

    assert report["fused"] == 0
    [reason] = report["refused"]
    assert "do not both end in the 32 channels" in reason
    assert model.SerializeToString() == before
