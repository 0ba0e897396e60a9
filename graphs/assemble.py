"""Traced pieces -> one ALBERT graph, the layer groups unrolled or kept as ONNX Loops, each weight stored once.

The exporter traces three pieces: embeddings (ids, mask, types -> hidden, additive attention bias), one graph per
layer group (hidden, bias -> hidden) and the task head (hidden -> outputs). Here they are joined:

  unrolled  layer i inlines the graph of its group; every copy reads the SAME initializers (only node and
            value names are made unique per copy).
  loop      one ONNX Loop per consecutive run of layers that use the same group. ALBERT uses group
            int(i / (N / G)) at layer i, so the N layers are G runs of N/G layers: G Loops in a row, Loop g with
            trip count N/G and the body of group g. The hidden state is loop-carried; the attention bias and
            the weights are read from the outer scope (the body owns no initializer). G = 1 is one Loop.

Multiple choice: inputs (batch, choices, sequence) are flattened to (batch*choices, sequence) before the
embeddings, and the head's (batch*choices, 1) scores are reshaped to logits (batch, choices), C read from the
input shape.

Optional outputs, as transformers returns them stacked (the choices stay folded into the batch):
  hidden_states (L+1, B, S, H)  the embedding output, then the output of each of the L layers (layer-group calls)
  attentions    (L*I, B, N, S, S)  the softmax of each of the I inner layers of each of the L calls; the group
                pieces then return their inner softmaxes stacked (I, B, N, S, S) as a second output.
Unrolled, they are concatenations of the layers' tensors; in a Loop, scan outputs of the body (the Loop stacks
them over the iterations) concatenated over the Loops.

Afterwards the ordinary clean-up passes store each weight once: large Constant nodes become initializers,
dedupe merges tensors of equal content and makes a tensor that is another's transpose (the tied MLM decoder) a
Transpose node, and the Identity aliases the tracer writes for parameters of equal value go.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import GraphError
from .names import rename_uses
from .passes.constant_nodes import constants_to_initializers
from .passes.dedupe import dedupe_initializers
from .passes.identities import remove_identities
from .size import array_digest
from .walk import all_graphs, subgraphs

LAYER_MODES = ("unrolled", "loop")
ATTENTION_BIAS = "attention_bias"
HIDDEN_STATES, ATTENTIONS = "hidden_states", "attentions"  # runtime.taskspec.OPTIONAL_OUTPUTS


class AssemblyError(GraphError):
    """Pieces that do not fit together (wrong inputs/outputs, mismatched opsets, unknown mode)."""


@dataclass
class Pieces:
    embed: onnx.ModelProto  # (input_ids, attention_mask, token_type_ids) -> (hidden, attention bias)
    groups: list[onnx.ModelProto]  # one per layer group: (hidden, attention bias) -> hidden
    head: onnx.ModelProto  # hidden -> task outputs
    layer_groups: list[int]  # the group used at each layer, len == num_hidden_layers
    # (output, choices dim) for a task whose inputs have a choices axis, (B, C, S): the encoder runs on (B*C, S),
    # the head returns (B*C, 1) scores, reshaped into the output (B, C); None: inputs (B, S)
    choices: tuple[str, str] | None = None
    output_hidden_states: bool = False  # add the hidden_states output
    output_attentions: bool = False  # the groups return (hidden, (I, B, N, S, S) softmaxes); add attentions


def layer_runs(layer_groups: list[int]) -> list[tuple[int, int]]:
    """[0, 0, 1, 1] -> [(0, 2), (1, 2)]: consecutive layers that use the same group."""
    runs: list[tuple[int, int]] = []
    for group in layer_groups:
        if runs and runs[-1][0] == group:
            runs[-1] = (group, runs[-1][1] + 1)
        else:
            runs.append((group, 1))
    return runs


def copy_nodes(graph: onnx.GraphProto, rename: Callable[[str], str], prefix: str) -> list[onnx.NodeProto]:
    """The graph's nodes with every value renamed (subgraphs included) and node names prefixed."""
    copies = []
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        rename_node(copy, rename)
        copy.name = prefix + (node.name or node.output[0])
        copies.append(copy)
    return copies


def rename_node(node: onnx.NodeProto, rename: Callable[[str], str]) -> None:
    node.input[:] = [rename(name) if name else name for name in node.input]
    node.output[:] = [rename(name) if name else name for name in node.output]
    for sub in subgraphs(node):
        for value in list(sub.input) + list(sub.output) + list(sub.value_info):
            value.name = rename(value.name)
        for tensor in sub.initializer:
            tensor.name = rename(tensor.name)
        for inner in sub.node:
            rename_node(inner, rename)


def renamer(prefix: str, fixed: dict[str, str], initializers: dict[str, str]) -> Callable[[str], str]:
    def rename(name: str) -> str:
        if name in fixed:
            return fixed[name]
        if name in initializers:
            return initializers[name]
        return prefix + name

    return rename


def value_info(name: str, like: onnx.ValueInfoProto, dims: Iterable[str | int] | None = None) -> onnx.ValueInfoProto:
    elem_type = like.type.tensor_type.elem_type
    if dims is None:
        dims = dims_of(like)
    return helper.make_tensor_value_info(name, elem_type, list(dims))


def check_pieces(pieces: Pieces) -> None:
    def io(model):
        return len(model.graph.input), len(model.graph.output)

    if io(pieces.embed) != (3, 2):
        raise AssemblyError(f"the embeddings piece must map 3 inputs to (hidden, attention bias), has {io(pieces.embed)}")
    group_io = (2, 2) if pieces.output_attentions else (2, 1)
    for index, group in enumerate(pieces.groups):
        if io(group) != group_io:
            returns = "(hidden, attentions)" if pieces.output_attentions else "hidden"
            raise AssemblyError(f"layer group {index} must map (hidden, attention bias) to {returns}, has {io(group)}")
    if len(pieces.head.graph.input) != 1:
        raise AssemblyError("the head piece must take the hidden state as its only input")
    if pieces.choices and len(pieces.head.graph.output) != 1:
        raise AssemblyError("a multiple-choice head must return one (batch*choices, 1) score tensor")
    used = set(pieces.layer_groups)
    if not pieces.layer_groups or not used <= set(range(len(pieces.groups))):
        raise AssemblyError(f"layer_groups {pieces.layer_groups} must name groups 0..{len(pieces.groups) - 1}")
    opsets = {opset_of(model) for model in [pieces.embed, *pieces.groups, pieces.head]}
    if len(opsets) != 1:
        raise AssemblyError(f"the pieces were traced at different opsets: {sorted(opsets)}")


def opset_of(model: onnx.ModelProto) -> int:
    return next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))


def assemble(pieces: Pieces, layers: str = "unrolled") -> onnx.ModelProto:
    """One model from the pieces; `layers` is "unrolled" or "loop" (see the module docstring)."""
    if layers not in LAYER_MODES:
        raise AssemblyError(f"unknown layers mode {layers!r}; use one of {', '.join(LAYER_MODES)}")
    check_pieces(pieces)
    initializers: list[onnx.TensorProto] = []

    def take_initializers(model: onnx.ModelProto, prefix: str) -> dict[str, str]:
        names = {}
        for tensor in model.graph.initializer:
            copy = onnx.TensorProto()
            copy.CopyFrom(tensor)
            copy.name = names[tensor.name] = prefix + tensor.name
            initializers.append(copy)
        return names

    nodes: list[onnx.NodeProto] = []
    embed_graph = pieces.embed.graph
    graph_inputs, embed_inputs = model_inputs(embed_graph, pieces.choices, nodes)
    hidden, bias = embed_graph.output[0].name, embed_graph.output[1].name
    embed_names = take_initializers(pieces.embed, "embed/")
    fixed = {**embed_inputs, hidden: "hidden_0", bias: ATTENTION_BIAS}
    nodes += copy_nodes(embed_graph, renamer("embed/", fixed, embed_names), "embed/")
    group_names = [take_initializers(group, f"group{index}/") for index, group in enumerate(pieces.groups)]

    compose = unrolled_layers if layers == "unrolled" else loop_layers
    hidden_parts = [unsqueezed("hidden_0", nodes, initializers)] if pieces.output_hidden_states else []
    current, hidden_layers, attention_parts = compose(pieces, group_names, nodes, initializers)
    hidden_parts += hidden_layers

    head_names = take_initializers(pieces.head, "head/")
    graph_outputs = head_and_outputs(pieces, current, head_names, graph_inputs, hidden_parts, attention_parts, nodes,
                                     initializers)
    graph = helper.make_graph(nodes, "albert", graph_inputs, graph_outputs, initializers)
    model = helper.make_model(graph, opset_imports=list(pieces.embed.opset_import),
                              producer_name="albert-export", ir_version=pieces.embed.ir_version)
    share_weights(model)
    return model


def head_and_outputs(pieces: Pieces, current: str, head_names: dict[str, str], graph_inputs: list,
                     hidden_parts: list[str], attention_parts: list[str], nodes: list[onnx.NodeProto],
                     initializers: list[onnx.TensorProto]) -> list[onnx.ValueInfoProto]:
    """The head on the last hidden state, the multiple-choice reshape and the stacked optional outputs (appends
    the nodes); returns the graph outputs."""
    head_graph = pieces.head.graph
    fixed = {head_graph.input[0].name: current}
    if pieces.choices:
        scores = "head/choice_scores"
        fixed[head_graph.output[0].name] = scores
    else:
        fixed.update({output.name: output.name for output in head_graph.output})
    nodes += copy_nodes(head_graph, renamer("head/", fixed, head_names), "head/")
    if pieces.choices:
        output, choices = pieces.choices
        nodes += unflatten_choices(scores, graph_inputs[0].name, output)
        batch = graph_inputs[0].type.tensor_type.shape.dim[0].dim_param
        graph_outputs = [value_info(output, head_graph.output[0], [batch, choices])]
    else:
        graph_outputs = [value_info(output.name, output) for output in head_graph.output]
    rows = flattened_batch(graph_inputs[0]) if pieces.choices else None
    if pieces.output_hidden_states:
        nodes.append(helper.make_node("Concat", hidden_parts, [HIDDEN_STATES], name=HIDDEN_STATES, axis=0))
        graph_outputs.append(stacked(HIDDEN_STATES, pieces.embed.graph.output[0], len(pieces.layer_groups) + 1, rows))
    if pieces.output_attentions:
        like = pieces.groups[0].graph.output[1]  # (I, B, N, S, S)
        nodes += merged_attentions(attention_parts, initializers)
        layer_calls = len(pieces.layer_groups) * dims_of(like)[0]
        graph_outputs.append(stacked(ATTENTIONS, like, layer_calls, rows, drop_first=True))
    return graph_outputs


def unrolled_layers(pieces: Pieces, group_names: list[dict[str, str]], nodes: list[onnx.NodeProto],
                    initializers: list[onnx.TensorProto]) -> tuple[str, list[str], list[str]]:
    """Layer i inlines the graph of its group, reading the group's initializers. Appends the nodes; returns the
    last hidden state and the (1, ...) parts of hidden_states and attentions."""
    current, hidden_parts, attention_parts = "hidden_0", [], []
    for layer, group in enumerate(pieces.layer_groups):
        graph = pieces.groups[group].graph
        out = f"hidden_{layer + 1}"
        fixed = {graph.input[0].name: current, graph.input[1].name: ATTENTION_BIAS, graph.output[0].name: out}
        if pieces.output_attentions:
            fixed[graph.output[1].name] = f"attentions_{layer}"
        prefix = f"layer{layer}/"
        nodes += copy_nodes(graph, renamer(prefix, fixed, group_names[group]), prefix)
        current = out
        if pieces.output_hidden_states:
            hidden_parts.append(unsqueezed(out, nodes, initializers))
        if pieces.output_attentions:
            attention_parts.append(unsqueezed(f"attentions_{layer}", nodes, initializers))
    return current, hidden_parts, attention_parts


def loop_layers(pieces: Pieces, group_names: list[dict[str, str]], nodes: list[onnx.NodeProto],
                initializers: list[onnx.TensorProto]) -> tuple[str, list[str], list[str]]:
    """One Loop per run of layers of one group. Appends the nodes; returns the last hidden state and the scan
    outputs of hidden_states and attentions."""
    current, hidden_parts, attention_parts = "hidden_0", [], []
    layer = 0
    for run, (group, count) in enumerate(layer_runs(pieces.layer_groups)):
        layer += count
        out = f"hidden_{layer}"
        trip_count, keep_going = f"loop{run}/trip_count", f"loop{run}/keep_going"
        initializers.append(numpy_helper.from_array(np.array(count, dtype=np.int64), trip_count))
        # an explicit (always true) condition: TensorRT's parser needs one to register the body's cond input
        initializers.append(numpy_helper.from_array(np.array(True), keep_going))
        body = loop_body(pieces.groups[group].graph, f"loop{run}/", group_names[group], f"layer_group_{group}",
                         pieces.output_hidden_states, pieces.output_attentions)
        scans = [f"loop{run}/{HIDDEN_STATES}"] if pieces.output_hidden_states else []
        scans += [f"loop{run}/{ATTENTIONS}"] if pieces.output_attentions else []
        nodes.append(helper.make_node("Loop", [trip_count, keep_going, current], [out, *scans],
                                      name=f"loop{run}", body=body))
        current = out
        if pieces.output_hidden_states:
            hidden_parts.append(scans[0])
        if pieces.output_attentions:
            attention_parts.append(scans[-1])
    return current, hidden_parts, attention_parts


def share_weights(model: onnx.ModelProto) -> None:
    """Each weight stored once: weights in Constant nodes (16 elements or more) join the main graph's
    initializers, equal ones and transposed copies are merged, and Identity aliases of initializers go."""
    constants_to_initializers(model, min_elements=16, outermost=True)
    dedupe_initializers(model, transposes=True)
    remove_identities(model, of_initializers=True)


def model_inputs(embed_graph: onnx.GraphProto, choices: tuple[str, str] | None, nodes: list[onnx.NodeProto]):
    """The graph inputs, and how the embeddings piece's inputs map onto them (flattened where they have choices)."""
    if not choices:
        inputs = [value_info(value.name, value) for value in embed_graph.input]
        return inputs, {value.name: value.name for value in embed_graph.input}
    inputs, mapping = [], {}
    for value in embed_graph.input:
        batch, sequence = (dim.dim_param for dim in value.type.tensor_type.shape.dim)
        inputs.append(value_info(value.name, value, [batch, choices[1], sequence]))
        flat = mapping[value.name] = f"flat/{value.name}"
        nodes.append(helper.make_node("Flatten", [value.name], [flat], name=flat, axis=2))  # (B*C, S)
    return inputs, mapping


def dims_of(value: onnx.ValueInfoProto) -> list[str | int | None]:
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in
            value.type.tensor_type.shape.dim]


def flattened_batch(input_ids: onnx.ValueInfoProto) -> str:
    """The name of the (batch*choices) axis the multiple-choice encoder runs on."""
    batch, choices = dims_of(input_ids)[:2]
    return f"{batch}*{choices}"


def stacked(name: str, like: onnx.ValueInfoProto, count: int, batch: str | None,
            drop_first: bool = False) -> onnx.ValueInfoProto:
    """The value info of `count` tensors like `like` stacked on a new first axis (or on its first axis)."""
    dims = dims_of(like)[1:] if drop_first else dims_of(like)
    if batch is not None:
        dims[0] = batch
    return value_info(name, like, [count, *dims])


def unsqueezed(name: str, nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]) -> str:
    """`name` with a new leading axis of 1 (appends the node; opset >= 13, axes as an input, shared later)."""
    axes, out = f"{name}/axes", f"{name}/unsqueezed"
    initializers.append(numpy_helper.from_array(np.array([0], dtype=np.int64), axes))
    nodes.append(helper.make_node("Unsqueeze", [name, axes], [out], name=out))
    return out


def merged_attentions(parts: list[str], initializers: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    """(k, I, B, N, S, S) parts -> attentions (L*I, B, N, S, S): concatenated, then the first two axes merged."""
    stacked_name, shape, tail, target = (f"{ATTENTIONS}/{part}" for part in ("stacked", "shape", "tail", "target"))
    for label, value in (("first", [-1]), ("from", [2]), ("to", [6])):
        initializers.append(numpy_helper.from_array(np.array(value, dtype=np.int64), f"{ATTENTIONS}/{label}"))
    return [
        helper.make_node("Concat", parts, [stacked_name], name=stacked_name, axis=0),
        helper.make_node("Shape", [stacked_name], [shape], name=shape),
        helper.make_node("Slice", [shape, f"{ATTENTIONS}/from", f"{ATTENTIONS}/to"], [tail], name=tail),
        helper.make_node("Concat", [f"{ATTENTIONS}/first", tail], [target], name=target, axis=0),
        helper.make_node("Reshape", [stacked_name, target], [ATTENTIONS], name=ATTENTIONS),
    ]


def unflatten_choices(scores: str, input_ids: str, output: str) -> list[onnx.NodeProto]:
    """(B*C, 1) scores -> (B, C) `output`, C taken from the input's shape."""
    return [
        helper.make_node("Shape", [input_ids], ["choices/input_shape"], name="choices/shape"),
        helper.make_node("Constant", [], ["choices/axis"], name="choices/axis",
                         value=numpy_helper.from_array(np.array([1], dtype=np.int64))),
        helper.make_node("Gather", ["choices/input_shape", "choices/axis"], ["choices/count"], name="choices/gather",
                         axis=0),
        helper.make_node("Constant", [], ["choices/minus_one"], name="choices/minus_one",
                         value=numpy_helper.from_array(np.array([-1], dtype=np.int64))),
        helper.make_node("Concat", ["choices/minus_one", "choices/count"], ["choices/shape_out"],
                         name="choices/concat", axis=0),
        helper.make_node("Reshape", [scores, "choices/shape_out"], [output], name="choices/reshape"),
    ]


def loop_body(group: onnx.GraphProto, prefix: str, initializer_names: dict[str, str], name: str,
              scan_hidden: bool = False, scan_attentions: bool = False, bias: str = ATTENTION_BIAS) -> onnx.GraphProto:
    """The Loop body: (iteration, cond, hidden) -> (cond, hidden[, hidden][, attentions]); `bias` and the weights
    come from the outer scope. The optional outputs are scan outputs: the Loop stacks them over the iterations."""
    iteration, cond_in, cond_out = f"{prefix}iteration", f"{prefix}cond_in", f"{prefix}cond_out"
    hidden_in, hidden_out = f"{prefix}hidden_in", f"{prefix}hidden_out"
    fixed = {group.input[0].name: hidden_in, group.input[1].name: bias, group.output[0].name: hidden_out}
    outputs = [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []), value_info(hidden_out, group.output[0])]
    if scan_attentions:
        fixed[group.output[1].name] = f"{prefix}{ATTENTIONS}_scan"
    nodes = [helper.make_node("Identity", [cond_in], [cond_out], name=f"{prefix}cond")]
    nodes += copy_nodes(group, renamer(prefix, fixed, initializer_names), prefix)
    if scan_hidden:  # a body output is listed once, so the scanned copy of the carried hidden state is an Identity
        scanned = f"{prefix}hidden_scan"
        nodes.append(helper.make_node("Identity", [hidden_out], [scanned], name=scanned))
        outputs.append(value_info(scanned, group.output[0]))
    if scan_attentions:
        outputs.append(value_info(f"{prefix}{ATTENTIONS}_scan", group.output[1]))
    return helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(iteration, TensorProto.INT64, []),
         helper.make_tensor_value_info(cond_in, TensorProto.BOOL, []),
         value_info(hidden_in, group.input[0])],
        outputs,
    )


def name_initializers(model: onnx.ModelProto, names_by_digest: dict[str, str]) -> int:
    """Give initializers readable names (e.g. the checkpoint's parameter names) found by content digest."""
    taken = {name for graph in all_graphs(model.graph) for node in graph.node for name in node.output}
    taken |= {value.name for value in model.graph.input}
    taken |= {tensor.name for tensor in model.graph.initializer}
    mapping = {}
    for tensor in model.graph.initializer:
        name = names_by_digest.get(array_digest(numpy_helper.to_array(tensor)))
        if name and name not in taken:
            mapping[tensor.name] = name
            taken.add(name)
    for tensor in model.graph.initializer:
        tensor.name = mapping.get(tensor.name, tensor.name)
    rename_uses(model.graph, mapping)
    return len(mapping)
