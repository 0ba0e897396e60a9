"""Initializer dedupe on unrolled and Loop graphs whose weights were written once per use."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphs.passes.dedupe import content_key, dedupe_initializers
from graphs.size import initializer_bytes, op_counts
from tests.passes_graphs import LAYOUTS, assert_same_outputs, body_of, group_cached, looped, unrolled


def copied_per_layer(model: onnx.ModelProto) -> onnx.ModelProto:
    """Layers 1.. of an unrolled graph read their own copy of every weight (a naive exporter's file)."""
    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    weights = {tensor.name: tensor for tensor in copied.graph.initializer if tensor.name != "layers"}
    for node in copied.graph.node:
        layer = node.name.split("/")[0]
        if layer in ("", "layer0"):
            continue
        for index, name in enumerate(node.input):
            if name in weights:
                node.input[index] = f"{name}@{layer}"
    used = {name for node in copied.graph.node for name in node.input}
    for name, tensor in weights.items():
        for copy_name in sorted(n for n in used if n.startswith(f"{name}@")):
            copied.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(tensor), copy_name))
    return copied


def copied_into_body(model: onnx.ModelProto) -> onnx.ModelProto:
    """The Loop body stores its own copy of every outer weight."""
    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    body = body_of(copied)
    for tensor in copied.graph.initializer:
        if tensor.name == "layers":
            continue
        body.initializer.append(numpy_helper.from_array(numpy_helper.to_array(tensor), f"{tensor.name}@body"))
        for node in body.node:
            for index, name in enumerate(node.input):
                if name == tensor.name:
                    node.input[index] = f"{name}@body"
    return copied


def test_unrolled_copies_merge_into_one_set_of_weights():
    shared = unrolled(group_cached(), 3)
    model = copied_per_layer(shared)
    assert initializer_bytes(model) > 2.9 * initializer_bytes(shared)
    before = onnx.ModelProto()
    before.CopyFrom(model)

    report = dedupe_initializers(model)

    assert report["merged"] == 2 * (len(shared.graph.initializer))
    assert report["bytes_saved"] == 2 * initializer_bytes(shared)
    assert initializer_bytes(model) == initializer_bytes(shared)
    assert op_counts(model) == op_counts(before)
    assert_same_outputs(before, model, atol=0.0)


def test_body_copies_become_reads_of_the_outer_weights():
    shared = looped(group_cached(), 3)
    model = copied_into_body(shared)
    before = onnx.ModelProto()
    before.CopyFrom(model)

    report = dedupe_initializers(model)

    assert report["merged"] == len(shared.graph.initializer) - 1  # all but the trip count
    assert len(body_of(model).initializer) == 0
    assert initializer_bytes(model) == initializer_bytes(shared)
    assert_same_outputs(before, model, atol=0.0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_already_shared_graphs_are_left_alone(layout):
    model = LAYOUTS[layout](group_cached(), 3)
    before = model.SerializeToString()
    assert dedupe_initializers(model) == {"merged": 0, "bytes_saved": 0}
    assert model.SerializeToString() == before


def test_an_initializer_that_is_also_a_graph_input_is_not_merged():
    model = copied_per_layer(unrolled(group_cached(), 2))
    overridable = next(t for t in model.graph.initializer if "@" in t.name)
    model.graph.input.append(helper.make_tensor_value_info(
        overridable.name, overridable.data_type, list(overridable.dims)))

    dedupe_initializers(model)

    assert overridable.name in {tensor.name for tensor in model.graph.initializer}


def test_a_body_copy_is_not_merged_into_an_outer_weight_the_caller_may_override():
    model = copied_into_body(looped(group_cached(), 2))
    overridable = next(t for t in model.graph.initializer if len(t.dims) == 2)
    model.graph.input.append(helper.make_tensor_value_info(
        overridable.name, overridable.data_type, list(overridable.dims)))

    report = dedupe_initializers(model)

    assert f"{overridable.name}@body" in {tensor.name for tensor in body_of(model).initializer}
    assert report["merged"] == len(model.graph.initializer) - 2  # all but the trip count and the overridable


def test_content_key_tells_dtype_and_shape_apart():
    zeros = np.zeros((4, 4), np.float32)
    keys = {content_key(numpy_helper.from_array(array, "t"))
            for array in (zeros, zeros.reshape(16), zeros.view(np.int32), zeros.copy())}
    assert len(keys) == 3
