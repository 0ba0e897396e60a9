"""com.microsoft Attention from self-attention as exported (anchor: the Softmax):

    q = Transpose(Reshape(MatMul(x, Wq) + bq, [B, S, N, D]), 0 2 1 3)        k, v alike (k as 0 2 3 1)
    p = Softmax(MatMul(q, k) / c + mask);  y = Reshape(Transpose(MatMul(p, v), 0 2 1 3), [B, S, H])

becomes Attention(x, [Wq|Wk|Wv], [bq|bk|bv], attention_bias=mask expanded to (B, 1, S, S)), num_heads=N.

Sharing: the concatenated QKV weight and bias are built once per (Wq, Wk, Wv) and stored where those weights
live, so all unrolled layers and the Loop body read one copy, and Wq, Wk, Wv themselves drop out. A weight that
is read anywhere else than by fused attentions would then be stored twice, so those matches are refused. The
mask expansion is computed once, in the graph that defines the mask (outside the Loop for an outer mask).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..infer import value_shapes
from ..names import Names
from ..nodes import MS_DOMAIN, attribute_value, ensure_opset
from ..walk import scopes
from .fusion import Context, Fusion, Match, absorb_shape_reads, apply_fusion, other_input

HEADS_FIRST = [0, 2, 1, 3]  # (B, S, N, D) -> (B, N, S, D)
KEYS_TRANSPOSED = [0, 2, 3, 1]  # (B, S, N, D) -> (B, N, D, S)


@dataclass
class Projection:
    """Transpose(Reshape(Add(MatMul(x, weight), bias), shape)): one of query, key, value."""

    x: str
    weight: str
    bias: str | None
    reshape: onnx.NodeProto
    nodes: list[onnx.NodeProto]


@dataclass
class AttentionMatch(Match):
    """The projections, scores, mask, softmax and head merge of one self-attention block."""
    query: Projection
    key: Projection
    value: Projection
    scaler: onnx.NodeProto  # Div or Mul of the scores by a constant
    scores: onnx.NodeProto  # MatMul(q, k)
    mask: str | None  # the additive mask, if any
    nodes: list[onnx.NodeProto]  # the Softmax first
    merge: onnx.NodeProto  # the Transpose merging the heads back
    context: onnx.NodeProto  # MatMul(softmax, v)
    heads: int | None = None  # set by the check
    scale: float | None = None

    @property
    def weights(self) -> list[str]:
        """The query, key and value weight names."""
        return [self.query.weight, self.key.weight, self.value.weight]

    @property
    def biases(self) -> list[str | None]:
        """The query, key and value bias names (None where there is none)."""
        return [self.query.bias, self.key.bias, self.value.bias]


class AttentionFusion(Fusion):
    """Self-attention -> com.microsoft Attention with one QKV weight shared by every layer."""
    name = "attention"
    anchor = "Softmax"

    def prepare(self, model):
        self.shapes = value_shapes(model)
        self.weight_reads: Counter = Counter()  # weight name -> reads by matched attentions, whole model
        names = Names(model)
        for scope in scopes(model):
            ctx = Context(model, scope, {}, names, {})
            for node in scope.graph.node:
                if node.op_type == "Softmax":
                    match = self.pattern(ctx, node)
                    if match is not None and self.check_structure(ctx, match) is None:
                        self.weight_reads.update(match.weights + match.biases)

    def projection(self, ctx, name, perms):
        """x, weight, bias, Reshape for Transpose(Reshape(Add(MatMul(x, W), b), shape), perm in perms)."""
        transpose = ctx.producer(name, "Transpose")
        if transpose is None or attribute_value(transpose, "perm") not in perms:
            return None
        transposes = [transpose]
        if attribute_value(transpose, "perm") == [0, 1, 3, 2]:  # keys as Transpose(Transpose(k, 0 2 1 3), 0 1 3 2)
            transpose = ctx.producer(transpose.input[0], "Transpose")
            if transpose is None or attribute_value(transpose, "perm") != HEADS_FIRST:
                return None
            transposes.append(transpose)
        reshape = ctx.producer(transpose.input[0], "Reshape")
        add = reshape and ctx.producer(reshape.input[0], "Add")
        if add is None:
            return None
        matmul = next((ctx.producer(n, "MatMul") for n in add.input if ctx.producer(n, "MatMul")), None)
        if matmul is None:
            return None
        return Projection(x=matmul.input[0], weight=matmul.input[1], bias=other_input(add, matmul.output[0]),
                          reshape=reshape, nodes=[matmul, add, reshape, *transposes])

    def scores_of(self, ctx, scaler):
        """The Q K^T MatMul scaled by `scaler`: Div(scores, c), Mul(scores, c) or Mul(c, scores)."""
        candidates = scaler.input[:1] if scaler.op_type == "Div" else scaler.input
        return next((ctx.producer(name, "MatMul") for name in candidates if ctx.producer(name, "MatMul")), None)

    def pattern(self, ctx, softmax):
        scores_in = softmax.input[0]
        mask = None
        add = ctx.producer(scores_in, "Add")
        nodes = [softmax]
        if add is not None:
            for name in add.input:
                scaler = ctx.producer(name, "Div") or ctx.producer(name, "Mul")
                if scaler is not None and self.scores_of(ctx, scaler) is not None:
                    mask = other_input(add, name)
                    scores_in = name
                    nodes.append(add)
                    break
            else:
                return None
        scaler = ctx.producer(scores_in, "Div") or ctx.producer(scores_in, "Mul")
        if scaler is None:
            return None
        scores = self.scores_of(ctx, scaler)
        if scores is None:
            return None
        nodes += [scaler, scores]
        query = self.projection(ctx, scores.input[0], [HEADS_FIRST])
        key = self.projection(ctx, scores.input[1], [KEYS_TRANSPOSED, [0, 1, 3, 2]])
        context = next((node for node in ctx.readers_of(softmax.output[0])
                        if node.op_type == "MatMul" and node.input[0] == softmax.output[0]), None)
        if query is None or key is None or context is None:
            return None
        value = self.projection(ctx, context.input[1], [HEADS_FIRST])
        merge = ctx.single_reader(context.output[0], "Transpose")
        reshape = merge and next((node for node in ctx.readers_of(merge.output[0])
                                  if node.op_type == "Reshape" and node.input[0] == merge.output[0]), None)
        if value is None or reshape is None:
            return None
        nodes += [context, merge, reshape]
        for projection in (query, key, value):
            nodes += projection.nodes
        return AttentionMatch(last=reshape.output[0], query=query, key=key, value=value, scaler=scaler,
                              scores=scores, mask=mask, nodes=nodes, merge=merge, context=context)

    def heads(self, ctx, reshape) -> int | None:
        """N from the (B, S, N, D) target shape: a constant, or a Concat whose last two parts are constants."""
        shape = ctx.constants.value(reshape.input[1])
        if shape is not None and shape.size == 4:
            return int(shape.reshape(-1)[2])
        concat = ctx.producer(reshape.input[1], "Concat")
        if concat is not None and len(concat.input) == 4:
            heads = ctx.constants.value(concat.input[2])
            if heads is not None and heads.size == 1:
                return int(heads.reshape(-1)[0])
        return None

    def check(self, ctx, match):
        reason = self.check_structure(ctx, match)
        if reason is not None:
            return reason
        for name in match.weights + match.biases:
            if ctx.uses[name] != self.weight_reads[name]:
                return f"{name!r} is also read outside attention; a QKV concatenation would store it twice"
        return None

    def check_structure(self, ctx, match):
        """Why the matched nodes are not the attention the fused op computes, else None."""
        query, key, value = match.query, match.key, match.value
        if not query.x == key.x == value.x:
            return "query, key and value are projections of different inputs (not self-attention)"
        softmax = match.nodes[0]
        if ctx.read_outside([softmax.output[0]], [match.context]):
            return "the softmax is also read outside the attention (an attentions output); Attention hides it"
        axis = attribute_value(softmax, "axis", -1)
        if axis not in (-1, 3):
            return f"Softmax over axis {axis}, not the key axis"
        if attribute_value(match.merge, "perm") != HEADS_FIRST:
            return "the heads are not merged back as (B, S, N, D)"
        weights = [ctx.constants.value(name) for name in match.weights]
        biases = [ctx.constants.value(name) for name in match.biases]
        if any(w is None or w.ndim != 2 for w in weights):
            return "a query/key/value weight is not a constant matrix"
        if any(b is None or b.ndim != 1 for b in biases):
            return "a query/key/value projection has no constant bias vector"
        if len({w.shape for w in weights}) != 1 or weights[0].shape[0] != weights[0].shape[1]:
            return f"query/key/value weights of shapes {[list(w.shape) for w in weights]} are not equal squares"
        hidden = weights[0].shape[1]
        heads = {self.heads(ctx, p.reshape) for p in (query, key, value)}
        if len(heads) != 1 or None in heads:
            return "the number of heads is not a constant of the head split"
        match.heads = heads.pop()
        if hidden % match.heads:
            return f"hidden size {hidden} is not divisible by {match.heads} heads"
        scaler = match.scaler
        factor = ctx.constants.scalar(other_input(scaler, match.scores.output[0]))
        if factor is None or factor == 0:
            return "the score scale is not a constant"
        match.scale = 1.0 / factor if scaler.op_type == "Div" else factor
        if match.mask is not None:
            shape = self.shapes.get(match.mask)
            if shape is not None and len(shape) != 4:
                return f"the additive mask has rank {len(shape)}, not (B, 1|N, 1|S, S)"
        reason = absorb_shape_reads(ctx, match.nodes, match.last)
        if reason is not None:
            return reason
        inner = [out for node in match.nodes for out in node.output if out != match.last]
        name = ctx.read_outside(inner, match.nodes)
        if name is not None:
            return f"intermediate {name!r} is also read outside the attention"
        return None

    def rewrite(self, ctx, match):
        weights, biases = match.weights, match.biases
        qkv_weight = ctx.shared_initializer(
            ("qkv_weight", *weights), "attention.qkv.weight", weights,
            lambda: np.concatenate([ctx.constants.value(name) for name in weights], axis=1))
        qkv_bias = ctx.shared_initializer(
            ("qkv_bias", *biases), "attention.qkv.bias", biases,
            lambda: np.concatenate([ctx.constants.value(name) for name in biases]))
        inputs = [match.query.x, qkv_weight, qkv_bias]
        if match.mask is not None:
            inputs += ["", "", self.expanded_mask(ctx, match.mask)]
        node = helper.make_node("Attention", inputs, [match.last], domain=MS_DOMAIN,
                                num_heads=match.heads, scale=float(match.scale),
                                name=ctx.names.fresh(f"{match.nodes[0].name or 'Attention'}/fused"))
        ctx.replace(node, match.last)

    def expanded_mask(self, ctx: Context, mask: str) -> str:
        """(B, 1, 1, S) -> (B, 1, S, S), as Attention's attention_bias wants; built once per mask."""
        home = ctx.defining_scope([mask])

        def build(fresh):
            constants = {}
            for label, value in (("first", [0]), ("second", [1]), ("last", [3]), ("end", [4]), ("one", [1])):
                constants[label] = fresh(f"{mask}/expand_{label}")
                home.add_initializer(numpy_helper.from_array(np.array(value, np.int64), constants[label]))
            shape, batch, keys, target, expanded = (fresh(f"{mask}/{part}") for part in
                                                     ("shape", "batch", "keys", "target", "expanded"))
            return [
                helper.make_node("Shape", [mask], [shape]),
                helper.make_node("Slice", [shape, constants["first"], constants["second"]], [batch]),
                helper.make_node("Slice", [shape, constants["last"], constants["end"]], [keys]),
                helper.make_node("Concat", [batch, constants["one"], keys, keys], [target], axis=0),
                helper.make_node("Expand", [mask, target], [expanded]),
            ]

        return ctx.shared_nodes(("attention_bias", mask), [mask], build)


def fuse_attention(model: onnx.ModelProto) -> dict:
    """Self-attention blocks -> com.microsoft Attention with one shared QKV weight, in every graph."""
    report = apply_fusion(model, AttentionFusion())
    if report.fused:
        ensure_opset(model, MS_DOMAIN, 1)
    return report.as_dict()
