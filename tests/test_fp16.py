"""fp16 (mixed) pass: tiny ALBERT graph -> ORT fp32 -> convert -> op types and dtypes -> ORT -> allclose,
on the unrolled graph and on the Loop graph."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from graphs.infer import value_types
from graphs.passes.fp16 import FP16_MAX, convert_to_fp16
from tests.precision_graphs import (
    QA_OUTPUTS, all_nodes, loop_graph, op_count, run, sample_inputs, tiny_model, unrolled_graph,
)

torch.set_num_threads(1)
FP16_ATOL = 2e-2  # logits of magnitude ~4 on the tiny model; observed ~3e-3


@pytest.fixture(scope="module")
def model():
    return tiny_model()


BUILDERS = {"unrolled": unrolled_graph, "loop": loop_graph}


def input_types(graph, types, op_type):
    return [[types.get(name) for name in node.input if name] for node in all_nodes(graph) if node.op_type == op_type]


@pytest.mark.parametrize("mode", sorted(BUILDERS))
def test_fp16_matches_fp32_and_keeps_accuracy_critical_ops_in_fp32(model, mode):
    graph = BUILDERS[mode](model)
    feed = sample_inputs(batch=3, sequence=9)  # the last row is padded: the attention bias is in play
    reference = run(graph, feed)
    matmuls_before = op_count(graph, "MatMul")

    counts = convert_to_fp16(graph)
    onnx.checker.check_model(graph)

    assert op_count(graph, "MatMul") == matmuls_before
    assert counts["fp16_nodes"] > 0 and counts["casts"] > 0
    types = value_types(graph)
    assert all(t == [TensorProto.FLOAT16] * 2 for t in input_types(graph.graph, types, "MatMul"))
    assert all(t == [TensorProto.FLOAT] for t in input_types(graph.graph, types, "Softmax"))
    assert all(set(t) == {TensorProto.FLOAT} for t in input_types(graph.graph, types, "LayerNormalization"))
    adds = input_types(graph.graph, types, "Add")
    residual_adds = [t for t in adds if len(t) == 2 and t[0] == t[1] == TensorProto.FLOAT]
    assert residual_adds, "no Add left in fp32: residual sums must stay fp32"
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.graph.input] == [(n, TensorProto.INT64) for n in feed]
    outputs = [(o.name, o.type.tensor_type.elem_type) for o in graph.graph.output]
    assert outputs == [(n, TensorProto.FLOAT) for n in QA_OUTPUTS]

    result = run(graph, feed)
    for name in QA_OUTPUTS:
        assert result[name].dtype == np.float32
        assert np.isfinite(result[name]).all()
        np.testing.assert_allclose(result[name], reference[name], atol=FP16_ATOL)


@pytest.mark.parametrize("mode", sorted(BUILDERS))
def test_every_weight_is_stored_once_in_fp16(model, mode):
    graph = BUILDERS[mode](model)
    convert_to_fp16(graph)
    parameters = {id(p): p for p in model.parameters()}.values()
    fp16_parameter_bytes = 2 * sum(p.numel() for p in parameters)
    graphs = (graph.graph, *(n.attribute[0].g for n in graph.graph.node if n.op_type == "Loop"))
    stored = sum(numpy_helper.to_array(t).nbytes for g in graphs for t in g.initializer)
    assert stored <= 1.02 * fp16_parameter_bytes
    matrices = [t for t in graph.graph.initializer if len(t.dims) == 2]
    assert matrices and all(t.data_type == TensorProto.FLOAT16 for t in matrices)
    if mode == "loop":
        body = next(n for n in graph.graph.node if n.op_type == "Loop").attribute[0].g
        assert not body.initializer, "the body reads the shared weights from the outer scope"


def test_loop_body_keeps_its_float32_interface_and_reads_outer_weights_once(model):
    graph = loop_graph(model)
    convert_to_fp16(graph)
    loop = next(n for n in graph.graph.node if n.op_type == "Loop")
    body = loop.attribute[0].g
    assert [o.type.tensor_type.elem_type for o in body.output] == [TensorProto.BOOL, TensorProto.FLOAT]
    assert [i.type.tensor_type.elem_type for i in body.input][2:] == [TensorProto.FLOAT]
    outer = {t.name: t for t in graph.graph.initializer}
    body_weights = [n.input[1] for n in body.node if n.op_type == "MatMul" and n.input[1] in outer]
    assert len(body_weights) == 6  # q, k, v, dense, ffn, ffn_output: read directly, no per-use copy or cast
    assert all(outer[name].data_type == TensorProto.FLOAT16 for name in body_weights)


def test_the_attention_bias_never_becomes_minus_infinity(model):
    graph = unrolled_graph(model)
    convert_to_fp16(graph)
    for node in all_nodes(graph.graph):
        if node.op_type == "Constant" and node.attribute[0].t.data_type == TensorProto.FLOAT16:
            assert np.isfinite(numpy_helper.to_array(node.attribute[0].t)).all()
    for tensor in graph.graph.initializer:
        if tensor.data_type == TensorProto.FLOAT16:
            assert np.isfinite(numpy_helper.to_array(tensor)).all()
    feed = sample_inputs(batch=2, sequence=8)
    feed["attention_mask"][:] = 0
    feed["attention_mask"][:, 0] = 1  # everything but the first token masked
    assert all(np.isfinite(v).all() for v in run(graph, feed).values())


def _scaled_matmul_graph(scale: float) -> onnx.ModelProto:
    """x @ W * scale + bias_term: the constant scale lands in an fp16 Mul."""
    weight = numpy_helper.from_array(np.full((4, 4), 0.25, dtype=np.float32), "W")
    scale_value = numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Mul", ["y", "scale"], ["out"])]
    graph = helper.make_graph(
        nodes, "scaled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 4])], initializer=[weight, scale_value],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_constants_beyond_the_fp16_range_are_clamped_not_infinite():
    graph = _scaled_matmul_graph(float(np.finfo(np.float32).min))
    convert_to_fp16(graph)
    scale = next(t for t in graph.graph.initializer if t.name == "scale")
    assert scale.data_type == TensorProto.FLOAT16
    assert numpy_helper.to_array(scale) == -FP16_MAX
    out = run(graph, {"x": np.full((2, 4), -1e-3, dtype=np.float32)})["out"]
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_a_graph_without_matmul_is_left_in_fp32():
    gamma = numpy_helper.from_array(np.ones(4, dtype=np.float32), "gamma")
    beta = numpy_helper.from_array(np.zeros(4, dtype=np.float32), "beta")
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], axis=-1),
             helper.make_node("Softmax", ["n"], ["out"], axis=-1)]
    graph = helper.make_model(helper.make_graph(
        nodes, "no_matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 4])], initializer=[gamma, beta],
    ), opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    before = graph.SerializeToString()
    counts = convert_to_fp16(graph)
    assert counts["fp16_nodes"] == 0 and counts["casts"] == 0
    assert graph.SerializeToString() == before


@pytest.mark.parametrize("layers", ["unrolled", "loop"])
def test_fp16_export_validates_within_the_fp16_tolerance(tmp_path, layers):
    from albert_export.exporter import export
    from runtime.bundle import load_bundle
    from tests.export_helpers import save_checkpoint

    save_checkpoint(tmp_path / "checkpoint", "fill-mask", vocab_size=1010)
    path = export(tmp_path / "checkpoint", "mlm", tmp_path / "bundle", layers=layers, fp16=True, log=lambda m: None)
    manifest = load_bundle(path).manifest
    assert manifest.precision == "fp16" and manifest.extra["fp16"]["fp16_nodes"] > 0
    assert 0 < manifest.validation.max_abs_diff["logits"] <= manifest.validation.tolerance["logits"] == 2e-2
    graph = onnx.load(str(path / "model.onnx"))
    assert [o.type.tensor_type.elem_type for o in graph.graph.output] == [TensorProto.FLOAT]
    assert manifest.extra["graph"]["tensor_bytes"] <= 1.02 * manifest.extra["graph"]["parameter_bytes"] / 2
