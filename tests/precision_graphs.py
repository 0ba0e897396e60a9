"""Tiny fp32 ALBERT graphs for the precision tests: unrolled (torch.onnx.export of the reference model, the
shared layer's initializers referenced by every layer) and Loop (the layer group traced alone and wrapped in an
ONNX Loop by hand, its weights in the outer scope), plus ORT helpers."""
from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from albert_export.config import AlbertConfig
from albert_export.modeling import model_for_task
from graphs.walk import all_graphs

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
QA_OUTPUTS = ["start_logits", "end_logits"]
OPSET = 17


def tiny_config(**overrides) -> AlbertConfig:
    settings = dict(
        vocab_size=120, embedding_size=16, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, hidden_act="gelu_new",
    )
    settings.update(overrides)
    return AlbertConfig(**settings)


def tiny_model(task: str = "question-answering", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = model_for_task(tiny_config(**overrides), task).eval()
    with torch.no_grad():  # larger than the 0.02 init so that activations have real ranges
        for name, parameter in model.named_parameters():
            if name.endswith("weight") and parameter.dim() == 2:
                parameter.normal_(0.0, 0.2)
    return model


def _export(module, args, input_names, output_names, dynamic) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(
        module, args, buffer, input_names=input_names, output_names=output_names, opset_version=OPSET,
        dynamic_axes={name: {i: a for i, a in enumerate(dynamic[name]) if a} for name in input_names + output_names},
        dynamo=False,
    )
    return onnx.load_from_string(buffer.getvalue())


def sample_inputs(batch: int = 2, sequence: int = 7, vocab: int = 120, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, sequence), dtype=np.int64)
    mask[-1, sequence // 2:] = 0  # padding in the last row
    return {
        "input_ids": rng.integers(0, vocab, (batch, sequence), dtype=np.int64),
        "attention_mask": mask,
        "token_type_ids": (np.arange(sequence)[None, :] >= sequence // 3).astype(np.int64).repeat(batch, 0),
    }


def unrolled_graph(model) -> onnx.ModelProto:
    example = {k: torch.from_numpy(v) for k, v in sample_inputs().items()}
    axes = {name: ("batch", "sequence") for name in INPUTS + QA_OUTPUTS}
    return _export(model, tuple(example[n] for n in INPUTS), INPUTS, QA_OUTPUTS, axes)


class _Embed(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model.albert.embed(input_ids, attention_mask, token_type_ids)


class _Head(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, hidden):
        outputs = self.model.head(hidden)
        return tuple(outputs[name] for name in QA_OUTPUTS)


def _prefixed(graph: onnx.GraphProto, prefix: str, keep: set[str]) -> None:
    rename = lambda name: name if (not name or name in keep) else prefix + name  # noqa: E731
    for node in graph.node:
        node.name = prefix + node.name
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    for collection in (graph.input, graph.output, graph.value_info, graph.initializer):
        for item in collection:
            item.name = rename(item.name)


def loop_graph(model) -> onnx.ModelProto:
    """embed -> Loop(num_hidden_layers){layer group; mask and weights from the outer scope} -> head."""
    example = {k: torch.from_numpy(v) for k, v in sample_inputs().items()}
    bs = ("batch", "sequence")
    embed = _export(_Embed(model), tuple(example[n] for n in INPUTS), INPUTS, ["hidden", "mask"],
                    {**{n: bs for n in INPUTS}, "hidden": bs, "mask": ("batch", None, None, "sequence")}).graph
    with torch.no_grad():
        hidden, mask = model.albert.embed(*(example[n] for n in INPUTS))
    group = model.albert.encoder.albert_layer_groups[0]
    body = _export(group, (hidden, mask), ["hidden_in", "mask"], ["hidden_out"],
                   {"hidden_in": bs, "mask": ("batch", None, None, "sequence"), "hidden_out": bs}).graph
    head = _export(_Head(model), (hidden,), ["hidden_final"], QA_OUTPUTS,
                   {"hidden_final": bs, **{n: bs for n in QA_OUTPUTS}}).graph
    _prefixed(embed, "embed/", set(INPUTS) | {"hidden", "mask"})
    _prefixed(body, "group/", {"hidden_in", "mask", "hidden_out"})
    _prefixed(head, "head/", {"hidden_final"} | set(QA_OUTPUTS))

    body_graph = helper.make_graph(
        list(body.node), "layer_group",
        [helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("hidden_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("hidden_out", TensorProto.FLOAT, None)],
    )
    body_graph.node.append(helper.make_node("Identity", ["cond_in"], ["cond_out"], name="group/cond"))
    trip = helper.make_tensor("num_layers", TensorProto.INT64, [], [model.config.num_hidden_layers])
    keep_going = helper.make_tensor("keep_going", TensorProto.BOOL, [], [True])
    loop = helper.make_node("Loop", ["num_layers", "keep_going", "hidden"], ["hidden_final"], name="layers",
                            body=body_graph)
    graph = helper.make_graph(
        list(embed.node) + [loop] + list(head.node), "albert_loop", list(embed.input), list(head.output),
        initializer=list(embed.initializer) + list(body.initializer) + list(head.initializer) + [trip, keep_going],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed)))


def all_nodes(graph: onnx.GraphProto):
    """Every node of the graph and of its Loop/If bodies."""
    return (node for sub in all_graphs(graph) for node in sub.node)


def op_count(model: onnx.ModelProto, op_type: str) -> int:
    return sum(node.op_type == op_type for node in all_nodes(model.graph))
