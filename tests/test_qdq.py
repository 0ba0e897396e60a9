"""QDQ pass: tiny ALBERT graph -> ORT fp32 -> calibrate + insert Q/DQ -> op counts (one DequantizeLinear per
shared weight, int8 initializers) -> ORT -> close to fp32, on the unrolled graph and on the Loop graph."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from calibration import int8_from_fp32
from graphs.passes.qdq import QDQError, insert_qdq, quantization_targets, quantize_weight
from tests.precision_graphs import (
    QA_OUTPUTS, all_nodes, loop_graph, op_count, run, sample_inputs, tiny_model, unrolled_graph,
)

torch.set_num_threads(1)
INT8_ATOL = 0.3  # tiny random model, logits of magnitude ~4; observed ~0.1
BUILDERS = {"unrolled": unrolled_graph, "loop": loop_graph}
SHARED_WEIGHTS = 6  # query, key, value, dense, ffn, ffn_output
ALL_WEIGHTS = SHARED_WEIGHTS + 2  # + embedding_hidden_mapping_in, qa_outputs


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def batches():
    return [sample_inputs(batch=4, sequence=11, seed=seed) for seed in range(4)]


def _loop_body(graph: onnx.ModelProto) -> onnx.GraphProto:
    return next(n for n in graph.graph.node if n.op_type == "Loop").attribute[0].g


@pytest.mark.parametrize("mode", sorted(BUILDERS))
def test_int8_graph_has_one_dequantize_per_weight_and_stays_close(model, batches, mode):
    graph = BUILDERS[mode](model)
    feed = sample_inputs(batch=3, sequence=9, seed=42)
    reference = run(graph, feed)
    matmuls = op_count(graph, "MatMul")

    quantized, table, counts = int8_from_fp32(graph, batches, method="percentile", progress=False)
    onnx.checker.check_model(quantized)

    products = 2 * model.config.num_hidden_layers if mode == "unrolled" else 2  # Q.K^T and P.V stay float
    assert counts["matmuls"] == matmuls - products and op_count(quantized, "MatMul") == matmuls
    assert counts["weight_dq"] == ALL_WEIGHTS
    weight_dqs = [n for n in all_nodes(quantized.graph)
                  if n.op_type == "DequantizeLinear" and n.input[0].endswith("_int8")]
    assert len(weight_dqs) == ALL_WEIGHTS, "exactly one DequantizeLinear per weight, however many layers read it"
    activation_qs = op_count(quantized, "QuantizeLinear")
    from_activation = {n.output[0] for n in all_nodes(quantized.graph)
                       if n.op_type == "DequantizeLinear" and not n.input[0].endswith("_int8")}
    matmuls_after = [n for n in all_nodes(quantized.graph) if n.op_type == "MatMul"]
    readers = sum(name in from_activation for n in matmuls_after for name in n.input)
    assert activation_qs == counts["activation_qdq"] == readers  # one Q/DQ per MatMul input (same scale per tensor)
    assert len(table.amax) < activation_qs
    assert op_count(quantized, "DequantizeLinear") == ALL_WEIGHTS + activation_qs
    for op in ("Softmax", "LayerNormalization", "Gather"):  # stay float: nothing quantizes their inputs
        for node in all_nodes(quantized.graph):
            if node.op_type == op:
                assert not any(name.endswith("_dequantized") for name in node.input)

    int8 = [t for g in _graphs(quantized) for t in g.initializer
            if t.data_type == TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8) == ALL_WEIGHTS
    float_matrices = [t.name for g in _graphs(quantized) for t in g.initializer
                      if t.data_type == TensorProto.FLOAT and len(t.dims) == 2 and "embeddings" not in t.name]
    assert float_matrices == [], "the fp32 weights are gone, only their int8 copies remain"

    result = run(quantized, feed)
    for name in QA_OUTPUTS:
        np.testing.assert_allclose(result[name], reference[name], atol=INT8_ATOL)
        assert np.abs(result[name] - reference[name]).max() > 0  # it really runs quantized


def _initializer_value(model: onnx.ModelProto, name: str) -> float:
    return next(float(numpy_helper.to_array(t)) for g in _graphs(model) for t in g.initializer if t.name == name)


def _graphs(model: onnx.ModelProto):
    yield model.graph
    for node in model.graph.node:
        if node.op_type == "Loop":
            yield node.attribute[0].g


def test_unrolled_layers_get_their_own_activation_scales(model, batches):
    quantized, table, _ = int8_from_fp32(unrolled_graph(model), batches, method="minmax", activation_products=True,
                                         progress=False)
    softmax_inputs = [name for name in table.amax if name.endswith("Softmax_output_0")]
    assert len(softmax_inputs) == model.config.num_hidden_layers
    shared = [n for n in quantized.graph.node if n.op_type == "DequantizeLinear" and "query" in n.input[0]]
    assert len(shared) <= 1


def test_loop_body_dequantizes_each_weight_once_inside_the_body(model, batches):
    quantized, table, _ = int8_from_fp32(loop_graph(model), batches, method="minmax", progress=False)
    body = _loop_body(quantized)
    body_weight_dqs = [n for n in body.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_int8")]
    assert len(body_weight_dqs) == SHARED_WEIGHTS
    outer = {t.name for t in quantized.graph.initializer}
    assert all(n.input[0] in outer for n in body_weight_dqs), "the int8 weights live in the outer scope"
    assert not any(t.data_type == TensorProto.INT8 and len(t.dims) == 2 for t in body.initializer)
    # one scale per body tensor, taken over all iterations
    # hidden (for q, k, v), context, attended, gelu output; the attention products stay float
    assert len([n for n in body.node if n.op_type == "QuantizeLinear"]) == 6
    hidden_in = body.input[2].name  # the carried hidden state (after iteration and cond)
    hidden_scales = {n.input[1] for n in body.node if n.op_type == "QuantizeLinear" and n.input[0] == hidden_in}
    assert len(hidden_scales) == 3 and len({_initializer_value(quantized, s) for s in hidden_scales}) == 1
    assert hidden_in in table.amax


def test_int8_file_is_about_a_quarter_of_fp32(model, batches):
    graph = unrolled_graph(model)
    quantized, _, _ = int8_from_fp32(graph, batches, progress=False)
    fp32_weights = sum(numpy_helper.to_array(t).nbytes for t in graph.graph.initializer
                       if t.data_type == TensorProto.FLOAT and len(t.dims) == 2 and "embeddings" not in t.name)
    int8_weights = sum(numpy_helper.to_array(t).nbytes for t in quantized.graph.initializer
                       if t.data_type == TensorProto.INT8 and len(t.dims) == 2)
    assert int8_weights * 4 == fp32_weights


def test_per_channel_weight_quantization_is_symmetric_and_exact_at_the_extremes():
    weight = np.array([[1.0, -0.5], [-2.0, 0.25], [0.5, 0.125]], dtype=np.float32)  # (K=3, N=2)
    values, scale = quantize_weight(weight, axis=1)
    np.testing.assert_allclose(scale, [2.0 / 127, 0.5 / 127])
    assert values.dtype == np.int8 and values[1, 0] == -127 and values[0, 1] == -127
    np.testing.assert_allclose(values * scale, weight, atol=scale.max() / 2)


def _matmul_graph(opset: int = 17) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], initializer=[weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def test_missing_range_and_old_opset_are_clear_errors():
    with pytest.raises(QDQError, match="no calibrated range.*'x'"):
        insert_qdq(_matmul_graph(), {})
    with pytest.raises(QDQError, match="opset >= 13"):
        insert_qdq(_matmul_graph(opset=12), {"x": 1.0})


def test_excluded_matmul_stays_float():
    graph = _matmul_graph()
    assert quantization_targets(graph) == ["x"]
    counts = insert_qdq(graph, {"x": 1.0}, exclude=frozenset({"mm"}))
    assert counts["activation_qdq"] == counts["weight_dq"] == 0
    assert [n.op_type for n in graph.graph.node] == ["MatMul"]


def test_options_quantized_attention_products_and_unsigned_activations(model, batches):
    graph = unrolled_graph(model)
    feed = sample_inputs(batch=2, sequence=9, seed=7)
    reference = run(graph, feed)
    quantized, table, counts = int8_from_fp32(graph, batches, activation_products=True, unsigned_activations=True,
                                              progress=False)
    float_matmuls = [n for n in all_nodes(quantized.graph) if n.op_type == "MatMul"
                     and not any(i.endswith("_dequantized") for i in n.input)]
    assert float_matmuls == [] and counts["matmuls"] == op_count(graph, "MatMul")
    zero_points = [t for t in quantized.graph.initializer if t.name.endswith("_zero_point") and not t.dims]
    assert zero_points
    assert all(numpy_helper.to_array(t) == 128 and t.data_type == TensorProto.UINT8 for t in zero_points)
    np.testing.assert_allclose(run(quantized, feed)["start_logits"], reference["start_logits"], atol=INT8_ATOL)


def test_embedding_tables_are_stored_int8_and_dequantized_once_before_the_gather(batches):
    """TensorRT takes int8 constants only into DequantizeLinear: the table is dequantized, then gathered."""
    model = tiny_model(vocab_size=400)  # a 400 x 16 table: large enough to quantize
    for build in (unrolled_graph, loop_graph):
        graph = build(model)
        feed = sample_inputs(batch=2, sequence=9, seed=3, vocab=400)
        reference = run(graph, feed)
        calibration = [sample_inputs(4, 11, seed=s, vocab=400) for s in range(3)]
        quantized, _, counts = int8_from_fp32(graph, calibration, progress=False)
        assert counts["tables"] == 1  # word embeddings (positions 64 x 16 and types 2 x 16 are small)
        table_dq = [n for n in quantized.graph.node
                    if n.op_type == "DequantizeLinear" and "word_embeddings" in n.input[0]]
        assert len(table_dq) == 1
        readers = [n for n in quantized.graph.node if table_dq[0].output[0] in n.input]
        assert [n.op_type for n in readers] == ["Gather"]
        left = [t.name for t in quantized.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2]
        assert all("position" in name or "token_type" in name for name in left)  # under 4096 elements
        np.testing.assert_allclose(run(quantized, feed)["end_logits"], reference["end_logits"], atol=INT8_ATOL)

        rows = onnx.ModelProto()
        rows.CopyFrom(graph)
        from calibration.ranges import collect_histograms, ranges

        amax = ranges(collect_histograms(rows, quantization_targets(rows), calibration, progress=False), "minmax")
        table = onnx.ModelProto()
        table.CopyFrom(graph)
        insert_qdq(table, amax)
        insert_qdq(rows, amax, gather_int8_rows=True)
        gathers = [n for n in rows.graph.node if n.op_type == "Gather" and n.input[0].endswith("_int8")]
        assert len(gathers) == 1
        assert [n.op_type for n in rows.graph.node if gathers[0].output[0] in n.input] == ["Cast"]
        # per-row scales gathered with the rows: the same values as the dequantized table
        np.testing.assert_allclose(run(rows, feed)["end_logits"], run(table, feed)["end_logits"], atol=1e-5)


@pytest.mark.parametrize("mode", sorted(BUILDERS))
def test_onnxruntime_only_graphs_gather_int8_rows_by_default(mode):
    """A graph with com.microsoft ops cannot go to TensorRT: its tables are gathered as int8 rows (no per-run
    dequantization of the whole table); a portable graph keeps the TensorRT form (table DQ, then Gather)."""
    from graphs.pipeline import optimize

    model = tiny_model(vocab_size=400)
    graph = BUILDERS[mode](model)
    feed = sample_inputs(batch=2, sequence=9, seed=3, vocab=400)
    reference = run(graph, feed)
    calibration = [sample_inputs(4, 11, seed=s, vocab=400) for s in range(3)]
    for profile, rows_expected in (("onnxruntime", True), ("portable", False)):
        optimized = optimize(graph, profile)[0]
        quantized, _, counts = int8_from_fp32(optimized, calibration, progress=False)
        assert counts["tables"] == 1
        tables = [n for n in all_nodes(quantized.graph) if n.op_type == "Gather" and "word_embeddings" in n.input[0]
                  and not n.input[0].endswith("_scale")]
        assert len(tables) == 1
        assert tables[0].input[0].endswith("_int8") == rows_expected, profile
        np.testing.assert_allclose(run(quantized, feed)["end_logits"], reference["end_logits"], atol=INT8_ATOL)
