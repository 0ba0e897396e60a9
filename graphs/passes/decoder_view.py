"""Tied decoder view: the MLM decoder reads the word-embedding table through a run-time Reshape, so onnxruntime
keeps one copy of it.

onnxruntime CPU prepacks a Gemm's constant B into a second, GEMM-shaped buffer and frees the original only when
no other node reads it. The tied decoder's B is the table the embedding Gather reads too, so both stay: 2.05x
the parameter bytes resident for a table-heavy fill-mask bundle, 1.43x for albert-base's shape (measured on an
AMD Zen 4). `session.disable_prepacking` removes the copy but for every weight (5-25 % slower here).

pattern  Gather(T, ids) and Gemm(h, T, bias, transB=1) -> Reshape -> graph output (Shape reads of the Gemm's
         output aside), T an initializer
rewrite  Gemm(h, Reshape(T, [-1, Shape(x)[-1]]), transB=1) -> Reshape -> Add(bias) -> the same output, x the
         (B, S, E) input of the Flatten(axis=-1) that made h (h itself when there is none)
The Reshape's shape depends on the run-time x, so onnxruntime neither folds it into a constant nor prepacks
the Gemm's B: the Reshape is a view of T (no copy), and MLAS packs panels of B as it multiplies (measured: no
slower at 1x40..16x40 on albert-base's shape; 1.07x / 1.09x resident). OpenVINO knows x's last axis statically
and folds the view back into a constant weight (resident as without the view); taken from the flattened h it
cannot, holds 0.35x more, and with the bias inside the Gemm fails to compile ("data size: 30000 OC: 0"), which
is why the bias is added after the output's Reshape.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..names import Names
from ..nodes import ONNX_DOMAINS, attribute_value


def refusal(graph: onnx.GraphProto, gemm: onnx.NodeProto, gathered: set[str]) -> str | None:
    """Why `gemm` is not a tied decoder this pass rewrites (None: it is)."""
    if gemm.op_type != "Gemm" or gemm.domain not in ONNX_DOMAINS:
        return "not a Gemm"
    if len(gemm.input) < 2 or gemm.input[1] not in gathered:
        return "its B is not an initializer an embedding Gather also reads"
    if attribute_value(gemm, "transB", 0) != 1 or attribute_value(gemm, "transA", 0) != 0:
        return "not Gemm(h, T, transB=1)"
    if attribute_value(gemm, "alpha", 1.0) != 1.0 or (len(gemm.input) > 2 and attribute_value(gemm, "beta", 1.0) != 1.0):
        return "alpha or beta is not 1"
    readers = [node for node in graph.node if gemm.output[0] in node.input and node.op_type != "Shape"]
    outputs = {value.name for value in graph.output}
    if len(readers) != 1 or readers[0].op_type != "Reshape" or readers[0].output[0] not in outputs:
        return "its output is not reshaped straight into a graph output (Shape reads aside)"
    return None


def view_tied_decoders(model: onnx.ModelProto) -> dict[str, int]:
    """Rewrite each tied decoder Gemm of the top-level graph (the head; Loop bodies hold no decoder). Returns
    {"viewed": decoders rewritten, "refused": Gemms on a gathered table left as they were}."""
    graph = model.graph
    initializers = {tensor.name for tensor in graph.initializer}
    gathered = {node.input[0] for node in graph.node
                if node.op_type == "Gather" and node.domain in ONNX_DOMAINS and node.input[0] in initializers}
    names = Names(model)
    viewed = refused = 0
    for gemm in [node for node in graph.node if node.op_type == "Gemm" and len(node.input) > 1
                 and node.input[1] in gathered]:
        if refusal(graph, gemm, gathered) is not None:
            refused += 1
            continue
        table, hidden = gemm.input[1], gemm.input[0]
        # E from the last axis of what h was flattened from ((B, S, E): static for OpenVINO, which then folds the
        # view into its constant weight again; h's own (B*S, E) comes from a run-time shape there)
        producer = next((node for node in graph.node if hidden in node.output), None)
        flattened = (producer is not None and producer.op_type == "Flatten" and producer.domain in ONNX_DOMAINS
                     and attribute_value(producer, "axis", 1) == -1)  # (B, S, E) -> (B*S, E): the last axis kept
        source = producer.input[0] if flattened else hidden
        bias = gemm.input[2] if len(gemm.input) > 2 and gemm.input[2] else None
        constants = {}
        for label, value in (("start", [-1]), ("end", [np.iinfo(np.int64).max]), ("rows", [-1])):
            constants[label] = names.fresh(f"decoder_view/{label}")
            graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.int64), constants[label]))
        shape, width, dims, view = (names.fresh(f"decoder_view/{label}") for label in ("shape", "width", "dims", "view"))
        nodes = [
            helper.make_node("Shape", [source], [shape], name=names.fresh("decoder_view/Shape")),
            helper.make_node("Slice", [shape, constants["start"], constants["end"]], [width],
                             name=names.fresh("decoder_view/Slice")),
            helper.make_node("Concat", [constants["rows"], width], [dims], axis=0, name=names.fresh("decoder_view/Concat")),
            helper.make_node("Reshape", [table, dims], [view], name=names.fresh("decoder_view/Reshape")),
        ]
        position = list(graph.node).index(gemm)
        for offset, node in enumerate(nodes):
            graph.node.insert(position + offset, node)
        gemm.input[1] = view
        if bias is not None:
            del gemm.input[2]
            reshape = next(node for node in graph.node if gemm.output[0] in node.input and node.op_type == "Reshape")
            output = reshape.output[0]
            reshape.output[0] = names.fresh(f"{output}/without_bias")
            add = helper.make_node("Add", [reshape.output[0], bias], [output], name=names.fresh("decoder_view/Add"))
            graph.node.insert(list(graph.node).index(reshape) + 1, add)
        viewed += 1
    return {"viewed": viewed, "refused": refused}
