"""Tiny ALBERT graphs for the pass tests: one traced layer group, unrolled N times or kept as a Loop body.

Both forms store every weight once, the way the exporter assembles them: the unrolled copies read the same
initializers, the Loop body reads them from the outer graph.
"""
from __future__ import annotations

import io

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper

from albert_export.config import AlbertConfig
from albert_export.modeling import AlbertLayerGroup
from graphs.assemble import copy_nodes, loop_body, renamer
from graphs.walk import scopes

HIDDEN, HEADS, INTERMEDIATE = 32, 4, 64


def tiny_config(hidden_act: str = "gelu_new", **overrides) -> AlbertConfig:
    fields = dict(vocab_size=100, embedding_size=16, hidden_size=HIDDEN, num_hidden_layers=3,
                  num_attention_heads=HEADS, intermediate_size=INTERMEDIATE, hidden_act=hidden_act)
    return AlbertConfig(**{**fields, **overrides})


def layer_group_onnx(config: AlbertConfig, opset: int = 17, fold_constants: bool = True,
                     seed: int = 0) -> onnx.ModelProto:
    """One layer group traced with the TorchScript exporter; inputs hidden (B,S,H), mask (B,1,1,S); output out."""
    torch.manual_seed(seed)
    group = AlbertLayerGroup(config).eval()
    with torch.no_grad():  # LayerNorm weights away from 1/0, so they are distinct tensors
        for module in group.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.1)
                module.bias.normal_(0.0, 0.1)
    hidden = torch.randn(2, 5, config.hidden_size)
    mask = torch.zeros(2, 1, 1, 5)
    buffer = io.BytesIO()
    torch.onnx.export(
        group, (hidden, mask), buffer, dynamo=False, opset_version=opset, do_constant_folding=fold_constants,
        input_names=["hidden", "mask"], output_names=["out"],
        dynamic_axes={"hidden": {0: "batch", 1: "seq"}, "mask": {0: "batch", 3: "seq"},
                      "out": {0: "batch", 1: "seq"}},
    )
    return onnx.load_from_string(buffer.getvalue())


def unrolled(group: onnx.ModelProto, layers: int) -> onnx.ModelProto:
    """The group inlined `layers` times as graphs.assemble inlines it (copy_nodes); every copy reads the same
    initializers."""
    weights = {tensor.name: tensor.name for tensor in group.graph.initializer}
    nodes = []
    for layer in range(layers):
        fixed = {"mask": "mask", "hidden": "hidden" if layer == 0 else f"layer{layer - 1}/out"}
        if layer == layers - 1:
            fixed["out"] = "out"
        prefix = f"layer{layer}/"
        nodes += copy_nodes(group.graph, renamer(prefix, fixed, weights), prefix)
    graph = helper.make_graph(nodes, "unrolled", list(group.graph.input), list(group.graph.output),
                              initializer=list(group.graph.initializer))
    return helper.make_model(graph, opset_imports=list(group.opset_import), ir_version=group.ir_version)


def looped(group: onnx.ModelProto, layers: int) -> onnx.ModelProto:
    """An ONNX Loop whose body is the group, built as graphs.assemble builds it (its loop_body, and the explicit
    always-true condition the exporter emits for TensorRT); the weights are outer initializers the body reads."""
    weights = list(group.graph.initializer)
    body = loop_body(group.graph, "body/", {tensor.name: tensor.name for tensor in weights}, "layer_group",
                     bias="mask")
    loop = helper.make_node("Loop", ["layers", "keep_going", "hidden"], ["out"], name="encoder_loop", body=body)
    initializers = weights + [numpy_helper.from_array(np.array(layers, np.int64), "layers"),
                              numpy_helper.from_array(np.array(True), "keep_going")]
    graph = helper.make_graph([loop], "looped", list(group.graph.input), list(group.graph.output),
                              initializer=initializers)
    return helper.make_model(graph, opset_imports=list(group.opset_import), ir_version=group.ir_version)


def feeds(batch: int = 2, seq: int = 7, hidden: int = HIDDEN, seed: int = 1) -> dict[str, np.ndarray]:
    """Hidden states and an additive mask with padding at the end of the second row."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((batch, 1, 1, seq), np.float32)
    mask[-1, ..., seq - 2:] = np.finfo(np.float32).min
    return {"hidden": rng.standard_normal((batch, seq, hidden)).astype(np.float32), "mask": mask}


def run(model: onnx.ModelProto, inputs: dict[str, np.ndarray], optimize: bool = False) -> list[np.ndarray]:
    """ORT CPU; optimizations off unless asked, so what runs is the graph as written."""
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def unique_initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of distinct initializer contents across all graphs."""
    seen = {}
    for scope in scopes(model):
        for tensor in scope.graph.initializer:
            array = numpy_helper.to_array(tensor)
            seen[(array.dtype.str, array.shape, array.tobytes())] = array.nbytes
    return sum(seen.values())


def group_cached(hidden_act: str = "gelu_new", opset: int = 17, fold_constants: bool = True,
                 target_opset: int | None = None) -> onnx.ModelProto:
    """A traced group (cached per arguments; callers get a copy), optionally converted to `target_opset`."""
    key = (hidden_act, opset, fold_constants, target_opset)
    if key not in _GROUPS:
        group = layer_group_onnx(tiny_config(hidden_act), opset, fold_constants)
        if target_opset is not None:
            group = onnx.version_converter.convert_version(group, target_opset)
        _GROUPS[key] = group
    copy = onnx.ModelProto()
    copy.CopyFrom(_GROUPS[key])
    return copy


_GROUPS: dict[tuple, onnx.ModelProto] = {}
LAYOUTS = {"unrolled": unrolled, "loop": looped}


def body_of(model: onnx.ModelProto) -> onnx.GraphProto:
    """The Loop body of a looped() graph."""
    loop = next(node for node in model.graph.node if node.op_type == "Loop")
    return loop.attribute[0].g


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, atol: float = 1e-5) -> None:
    """Both graphs run in ORT with optimizations off and agree to `atol` (plus a sweep of odd shapes)."""
    for batch, seq in ((2, 7), (1, 1), (3, 33)):
        inputs = feeds(batch, seq)
        expected, actual = run(before, inputs), run(after, inputs)
        for want, got in zip(expected, actual):
            np.testing.assert_allclose(got, want, atol=atol, rtol=1e-5)
