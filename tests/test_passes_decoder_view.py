"""The tied decoder view: a tiny embedding + decoder graph -> ORT (optimizations off) -> apply -> op types and
counts -> ORT -> allclose; and graphs it must leave alone (an untied decoder, a bias the output reshape does not
follow)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graphs.passes.decoder_view import view_tied_decoders
from graphs.size import op_counts

V, E = 50, 8


def tied_graph(tied: bool = True, bias_after_reshape: bool = True) -> onnx.ModelProto:
    """ids (B, S) -> Gather(T) (B, S, E) -> Flatten to (B*S, E) -> Gemm(., T or W, bias, transB) -> (B, S, V)."""
    rng = np.random.default_rng(0)
    initializers = [numpy_helper.from_array(rng.standard_normal((V, E)).astype(np.float32), "T"),
                    numpy_helper.from_array(rng.standard_normal((V, E)).astype(np.float32), "W"),
                    numpy_helper.from_array(rng.standard_normal(V).astype(np.float32), "bias"),
                    numpy_helper.from_array(np.array([-1, 3, V], dtype=np.int64), "back")]
    nodes = [helper.make_node("Gather", ["T", "ids"], ["hidden"]),
             helper.make_node("Flatten", ["hidden"], ["rows"], axis=-1),  # as the traced head flattens
             helper.make_node("Gemm", ["rows", "T" if tied else "W", "bias"], ["scores"], transB=1),
             helper.make_node("Shape", ["scores"], ["scores_shape"])]  # as the traced head reads it
    nodes.append(helper.make_node("Reshape", ["scores", "back"], ["logits"]) if bias_after_reshape else
                 helper.make_node("Relu", ["scores"], ["logits"]))
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", V]),
                               helper.make_tensor_value_info("scores_shape", TensorProto.INT64, [2])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, ids: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        ["logits"], {"ids": ids})[0]


def test_the_tied_decoder_reads_the_table_through_a_run_time_view():
    model = tied_graph()
    ids = np.array([[1, 7, 49], [3, 0, 22]], dtype=np.int64)
    expected = run(model, ids)
    assert view_tied_decoders(model) == {"viewed": 1, "refused": 0}
    onnx.checker.check_model(model, full_check=True)
    counts = op_counts(model)
    assert (counts["Gemm"], counts["Reshape"], counts["Add"], counts["Shape"], counts["Slice"]) == (1, 2, 1, 2, 1)
    shape = next(node for node in model.graph.node if node.op_type == "Shape" and node.input[0] != "scores")
    assert shape.input[0] == "hidden"  # E from the (B, S, E) the Flatten read: static for OpenVINO
    gemm = next(node for node in model.graph.node if node.op_type == "Gemm")
    assert len(gemm.input) == 2 and gemm.input[1] != "T"  # the view; the bias moved after the output's Reshape
    assert [node.op_type for node in model.graph.node if "T" in node.input] == ["Gather", "Reshape"]
    assert [t.name for t in model.graph.initializer if t.dims == [V, E]] == ["T", "W"]  # no copy of the table
    np.testing.assert_allclose(run(model, ids), expected, rtol=1e-6, atol=1e-6)
    # fully optimized onnxruntime keeps one (V, E) table: the view is not folded into a constant
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["logits"], {"ids": ids})[0], expected, rtol=1e-6, atol=1e-6)


def test_an_untied_decoder_or_another_output_form_is_left_alone():
    for model in (tied_graph(tied=False), tied_graph(bias_after_reshape=False)):
        before = model.SerializeToString()
        report = view_tied_decoders(model)
        assert report == {"viewed": 0, "refused": 0 if model.graph.node[2].input[1] == "W" else 1}
        assert model.SerializeToString() == before
