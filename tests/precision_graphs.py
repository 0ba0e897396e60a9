"""Tiny fp32 ALBERT graphs for the precision tests, assembled as the exporter assembles them: unrolled (every
layer reads the shared layer's initializers) and Loop (the layer group as the body, its weights in the outer
scope), plus ORT helpers."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

from albert_export.config import AlbertConfig
from albert_export.exporter import pieces_from_torch
from albert_export.modeling import model_for_task
from graphs.assemble import assemble
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


def sample_inputs(batch: int = 2, sequence: int = 7, vocab: int = 120, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, sequence), dtype=np.int64)
    mask[-1, sequence // 2:] = 0  # padding in the last row
    return {
        "input_ids": rng.integers(0, vocab, (batch, sequence), dtype=np.int64),
        "attention_mask": mask,
        "token_type_ids": (np.arange(sequence)[None, :] >= sequence // 3).astype(np.int64).repeat(batch, 0),
    }


def assembled(model, layers: str) -> onnx.ModelProto:
    """The graph the exporter ships: the traced pieces composed by graphs.assemble (the Loop with its explicit
    condition, the weights once in the outer graph)."""
    return assemble(pieces_from_torch(model, opset=OPSET), layers)


def unrolled_graph(model) -> onnx.ModelProto:
    return assembled(model, "unrolled")


def loop_graph(model) -> onnx.ModelProto:
    """embed -> Loop(num_hidden_layers){layer group; mask and weights from the outer scope} -> head."""
    return assembled(model, "loop")


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
