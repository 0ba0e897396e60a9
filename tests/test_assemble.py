"""graphs.assemble: unrolled and Loop graphs from traced pieces, shared initializers, the storage proof."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from albert_export.config import AlbertConfig
from albert_export.exporter import pieces_from_torch
from albert_export.modeling import model_for_task
from albert_export.validate import reference_outputs, validation_inputs
from graphs.assemble import AssemblyError, assemble, layer_runs
from graphs.passes.constant_nodes import constants_to_initializers
from graphs.passes.dedupe import dedupe_initializers
from graphs.size import node_count, storage_report
from graphs.walk import all_graphs

torch.set_num_threads(1)


def reference(task: str, **overrides):
    settings = dict(vocab_size=120, embedding_size=8, hidden_size=16, num_hidden_layers=6, num_attention_heads=2,
                    intermediate_size=24, max_position_embeddings=16, id2label={0: "a", 1: "b", 2: "c"})
    torch.manual_seed(0)
    model = model_for_task(AlbertConfig(**{**settings, **overrides}), task)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


def session(model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, inputs: dict) -> list[np.ndarray]:
    return session(model).run(None, inputs)


def test_layer_runs_group_consecutive_layers():
    assert layer_runs([0, 0, 0]) == [(0, 3)]
    assert layer_runs([0, 0, 1, 1, 2, 2]) == [(0, 2), (1, 2), (2, 2)]
    assert layer_runs([0, 1, 0]) == [(0, 1), (1, 1), (0, 1)]


@pytest.mark.parametrize("groups, inner", [(1, 1), (3, 2)])
def test_loop_and_unrolled_agree_with_torch_and_each_other(groups, inner):
    model = reference("question-answering", num_hidden_groups=groups, inner_group_num=inner)
    pieces = pieces_from_torch(model)
    unrolled, loop = assemble(pieces, "unrolled"), assemble(pieces, "loop")
    onnx.checker.check_model(loop, full_check=True)
    for shape in [(1, 1), (3, 7), (2, 16)]:
        inputs = validation_inputs(shape, 120, 2)
        expected = reference_outputs(model, inputs)
        from_unrolled, from_loop = run(unrolled, inputs), run(loop, inputs)
        for name, a, b in zip(["start_logits", "end_logits"], from_unrolled, from_loop):
            np.testing.assert_allclose(a, expected[name], atol=1e-4, rtol=0)
            np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_node_counts_one_loop_per_group_run(groups):
    model = reference("feature-extraction", num_hidden_groups=groups)
    pieces = pieces_from_torch(model)
    unrolled, loop = assemble(pieces, "unrolled"), assemble(pieces, "loop")
    per_layer = [len(pieces.groups[g].graph.node) for g in pieces.layer_groups]
    outside = len(pieces.embed.graph.node) + len(pieces.head.graph.node)
    assert len(unrolled.graph.node) == outside + sum(per_layer)
    loops = [node for node in loop.graph.node if node.op_type == "Loop"]
    assert len(loops) == groups
    assert len(loop.graph.node) == outside + groups
    trip_counts = {t.name: int(numpy_helper.to_array(t)) for t in loop.graph.initializer if "trip_count" in t.name}
    assert [trip_counts[node.input[0]] for node in loops] == [6 // groups] * groups
    for node in loops:
        body = node.attribute[0].g
        assert len(body.initializer) == 0  # the weights live once, in the outer graph
        assert len(body.node) == 1 + len(pieces.groups[0].graph.node)  # + the cond Identity
    assert node_count(loop) < node_count(unrolled) / (6 / groups) + outside + 2 * groups


def test_unrolled_copies_read_the_same_initializers():
    model = reference("feature-extraction", num_hidden_groups=1)
    unrolled = assemble(pieces_from_torch(model), "unrolled")
    initializers = {tensor.name for tensor in unrolled.graph.initializer}
    matmul_weights = [node.input[1] for node in unrolled.graph.node
                      if node.op_type == "MatMul" and node.name.startswith("layer") and node.input[1] in initializers]
    per_layer = len(matmul_weights) // 6
    assert per_layer == 6  # query, key, value, dense, ffn, ffn_output
    assert all(matmul_weights[i] == matmul_weights[i % per_layer] for i in range(len(matmul_weights)))


def test_multiple_choice_takes_choices_from_the_input_shape():
    model = reference("multiple-choice", num_hidden_groups=2)
    for layers in ("unrolled", "loop"):
        graph = assemble(pieces_from_torch(model), layers)
        dims = [[d.dim_param for d in value.type.tensor_type.shape.dim] for value in graph.graph.input]
        assert dims == [["batch_size", "num_choices", "sequence_length"]] * 3
        for shape in [(1, 4, 5), (3, 2, 9)]:
            inputs = validation_inputs(shape, 120, 2)
            (logits,) = run(graph, inputs)
            assert logits.shape == shape[:2]
            np.testing.assert_allclose(logits, reference_outputs(model, inputs)["logits"], atol=1e-4, rtol=0)


def test_assemble_refuses_unknown_mode_and_mismatched_pieces():
    pieces = pieces_from_torch(reference("feature-extraction", num_hidden_layers=2))
    with pytest.raises(AssemblyError, match="unknown layers mode 'folded'"):
        assemble(pieces, "folded")
    pieces.layer_groups = [0, 1]
    with pytest.raises(AssemblyError, match="must name groups 0..0"):
        assemble(pieces, "loop")
    pieces.layer_groups = [0, 0]
    pieces.groups = [pieces.embed]
    with pytest.raises(AssemblyError, match="layer group 0 must map"):
        assemble(pieces, "unrolled")


def matmul_model(weights: dict[str, np.ndarray], constants: dict[str, np.ndarray] | None = None):
    """y = sum over weights w of x @ w (each w: 4 x 4); Constant nodes for `constants`."""
    nodes, terms = [], []
    for name in [*weights, *(constants or {})]:
        nodes.append(helper.make_node("MatMul", ["x", name], [f"{name}_out"]))
        terms.append(f"{name}_out")
    for name, array in (constants or {}).items():
        nodes.insert(0, helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array)))
    nodes.append(helper.make_node("Sum", terms, ["y"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_dedupe_merges_copies_and_transposes():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4)).astype(np.float32)
    b = rng.standard_normal((4, 4)).astype(np.float32)
    model = matmul_model({"a": a, "a_copy": a.copy(), "a_transposed": np.ascontiguousarray(a.T), "b": b})
    before = storage_report(model)
    assert len(before.duplicates) == 1 and len(before.transposed_duplicates) == 1 and not before.weights_once
    x = {"x": rng.standard_normal((2, 4)).astype(np.float32)}
    (expected,) = run(model, x)
    report = dedupe_initializers(model, transposes=True)  # as assemble runs it
    assert (report["merged"], report["transposed"]) == (1, 1)
    assert sorted(t.name for t in model.graph.initializer) == ["a", "b"]
    assert [n.op_type for n in model.graph.node].count("Transpose") == 1
    assert storage_report(model).weights_once
    np.testing.assert_allclose(run(model, x)[0], expected, rtol=1e-6, atol=1e-6)


def test_weights_in_constant_nodes_are_hoisted_and_shared():
    a = np.arange(16, dtype=np.float32).reshape(4, 4) / 16
    model = matmul_model({"a": a}, constants={"a_const": a.copy()})
    assert not storage_report(model).weights_once
    x = {"x": np.ones((2, 4), dtype=np.float32)}
    (expected,) = run(model, x)
    assert constants_to_initializers(model, min_elements=16, outermost=True) == 1  # as assemble runs it
    dedupe_initializers(model, transposes=True)
    assert [n.op_type for n in model.graph.node] == ["MatMul", "MatMul", "Sum"]
    assert storage_report(model).weights_once and len(model.graph.initializer) == 1
    np.testing.assert_allclose(run(model, x)[0], expected)


def test_identity_aliases_of_equal_parameters_are_dropped():
    torch.manual_seed(0)  # fresh init: every LayerNorm is ones/zeros, which the tracer aliases with Identity
    model = model_for_task(AlbertConfig(vocab_size=50, embedding_size=8, hidden_size=16, num_hidden_layers=3,
                                        num_attention_heads=2, intermediate_size=24, max_position_embeddings=16),
                           "feature-extraction").eval()
    pieces = pieces_from_torch(model)
    assert any(node.op_type == "Identity" for node in pieces.groups[0].graph.node)
    inputs = validation_inputs((2, 5), 50, 2)
    expected = reference_outputs(model, inputs)
    for layers in ("unrolled", "loop"):
        graph = assemble(pieces, layers)
        initializers = {tensor.name for tensor in graph.graph.initializer}
        identities = [node for g in all_graphs(graph.graph) for node in g.node
                      if node.op_type == "Identity" and node.input[0] in initializers]
        assert identities == []
        hidden, pooled = run(graph, inputs)
        np.testing.assert_allclose(hidden, expected["last_hidden_state"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(pooled, expected["pooler_output"], atol=1e-5, rtol=0)


def test_models_with_fewer_positions_than_the_trace_shape():
    model = reference("token-classification", max_position_embeddings=3, num_hidden_layers=2)
    loop = assemble(pieces_from_torch(model), "loop")
    for shape in [(1, 1), (3, 3)]:
        inputs = validation_inputs(shape, 120, 2)
        np.testing.assert_allclose(run(loop, inputs)[0], reference_outputs(model, inputs)["logits"], atol=1e-5)
