"""com.microsoft EmbedLayerNormalization: the three embedding lookups, their sum and the LayerNorm in one op.

    e = Gather(W, ids) + Gather(T, types) + Gather(P, Unsqueeze(Range(0, S, 1)))    (any order of the sums)
    y = LayerNormalization(e, gamma, beta, axis=-1)                                  (anchor: the LN)

becomes EmbedLayerNormalization(int32 ids, int32 types, W, P, T, gamma, beta). The positions must be
0..S-1 with S the length of `ids` (what the op assumes without position_ids). The int32 casts of the inputs are
made once per input.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

from ..infer import value_shapes
from ..nodes import MS_DOMAIN, attribute_value, ensure_opset
from .fusion import Fusion, Match, apply_fusion


@dataclass
class EmbedMatch(Match):
    """The three embedding Gathers, the Adds summing them and the LayerNorm after them."""
    norm: onnx.NodeProto
    adds: list[onnx.NodeProto]  # the tree of Adds summing the lookups
    word: onnx.NodeProto  # Gather(W, ids)
    segment: onnx.NodeProto | None  # Gather(T, types)
    position: onnx.NodeProto  # Gather(P, positions)
    position_nodes: list[onnx.NodeProto]  # computing 0..S-1 from the ids' shape
    ids: str
    types: str | None

    @property
    def gathers(self) -> list[onnx.NodeProto]:
        """The word, position and (when there) segment lookups."""
        return [self.word, self.position] + ([self.segment] if self.segment else [])


class EmbedLayerNormFusion(Fusion):
    """Gathers + sum + LayerNormalization -> com.microsoft EmbedLayerNormalization."""
    name = "embed_layernorm"
    anchor = "LayerNormalization"

    def prepare(self, model):
        self.shapes = value_shapes(model)

    def summands(self, ctx, name, adds, depth=0):
        """The leaves of a tree of Adds (at most three leaves)."""
        add = ctx.producer(name, "Add")
        if add is None or depth > 2:
            return [name]
        adds.append(add)
        return [leaf for part in add.input for leaf in self.summands(ctx, part, adds, depth + 1)]

    def pattern(self, ctx, norm):
        adds: list[onnx.NodeProto] = []
        leaves = self.summands(ctx, norm.input[0], adds)
        gathers = [ctx.producer(name, "Gather") for name in leaves]
        if len(leaves) not in (2, 3) or any(g is None for g in gathers):
            return None
        tables = {}
        for gather in gathers:
            if gather.input[0] not in ctx.constants:
                return None
            positions = self.positions_of(ctx, gather.input[1])
            role = "position" if positions is not None else None
            tables.setdefault(role, []).append((gather, positions))
        if "position" not in tables or len(tables["position"]) != 1 or len(tables.get(None, [])) not in (1, 2):
            return None
        (position_gather, (length_of, position_nodes)), = tables["position"]
        lookups = tables[None]
        # the word lookup is the one indexed by the tensor whose length gives the positions
        word = next((g for g, _ in lookups if g.input[1] == length_of), None)
        if word is None:
            return None
        segment = next((g for g, _ in lookups if g is not word), None)
        return EmbedMatch(last=norm.output[0], norm=norm, adds=adds, word=word, segment=segment,
                          position=position_gather, position_nodes=position_nodes, ids=word.input[1],
                          types=segment.input[1] if segment else None)

    def positions_of(self, ctx, name):
        """(ids, nodes) when `name` is Unsqueeze(Range(0, Cast?(Gather(Shape(ids), 1)), 1), [0]), else None."""
        unsqueeze = ctx.producer(name, "Unsqueeze")
        if unsqueeze is None:
            return None
        axes = attribute_value(unsqueeze, "axes")
        if axes is None and len(unsqueeze.input) > 1:
            value = ctx.constants.value(unsqueeze.input[1])
            axes = None if value is None else [int(v) for v in value.reshape(-1)]
        range_node = ctx.producer(unsqueeze.input[0], "Range")
        if axes != [0] or range_node is None:
            return None
        start, limit, delta = range_node.input
        if ctx.constants.scalar(start) != 0 or ctx.constants.scalar(delta) != 1:
            return None
        nodes = [unsqueeze, range_node]
        cast = ctx.producer(limit, "Cast")
        if cast is not None:
            nodes.append(cast)
            limit = cast.input[0]
        gather = ctx.producer(limit, "Gather")
        shape = gather and ctx.producer(gather.input[0], "Shape")
        if shape is None or ctx.constants.scalar(gather.input[1]) != 1:
            return None
        return shape.input[0], nodes + [gather, shape]

    def check(self, ctx, match):
        norm = match.norm
        axis = attribute_value(norm, "axis", -1)
        if axis != -1 or len(norm.input) < 3:
            return "the LayerNormalization is not over the last axis with scale and shift"
        gathers = match.gathers
        tables = [ctx.constants.value(g.input[0]) for g in gathers]
        if any(t.ndim != 2 for t in tables) or len({t.shape[1] for t in tables}) != 1:
            return f"embedding tables of shapes {[list(t.shape) for t in tables]} do not share one width"
        if any(attribute_value(g, "axis", 0) != 0 for g in gathers):
            return "an embedding lookup does not gather rows"
        for name in (norm.input[1], norm.input[2]):
            value = ctx.constants.value(name)
            if value is None or value.shape != (tables[0].shape[1],):
                return "the LayerNorm scale/shift is not a constant of the embedding width"
        for name in filter(None, (match.ids, match.types)):
            shape = self.shapes.get(name)
            if shape is None or len(shape) != 2:
                return f"{name!r} is not known to be (batch, sequence)"
        if match.types:
            pairs = zip(self.shapes[match.ids], self.shapes[match.types])
            if any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in pairs):
                return "token types and ids do not have the same (batch, sequence) shape"
        inner = [node.output[0] for node in gathers + match.adds]
        name = ctx.read_outside(inner, gathers + match.adds + [norm])
        if name is not None:
            return f"intermediate {name!r} is also read outside the embeddings"
        return None

    def rewrite(self, ctx, match):
        norm = match.norm
        epsilon = attribute_value(norm, "epsilon", 1e-5)

        def as_int32(name: str) -> str:
            def build(fresh):
                return [helper.make_node("Cast", [name], [fresh(f"{name}/int32")], to=TensorProto.INT32)]
            return ctx.shared_nodes(("int32", name), [name], build)

        segment = match.segment
        inputs = [as_int32(match.ids), as_int32(match.types) if segment else "",
                  match.word.input[0], match.position.input[0], segment.input[0] if segment else "",
                  norm.input[1], norm.input[2]]
        outputs = [norm.output[0], ctx.names.fresh(f"{norm.output[0]}/mask_index")]
        node = helper.make_node("EmbedLayerNormalization", inputs, outputs, domain=MS_DOMAIN, epsilon=epsilon,
                                name=ctx.names.fresh(f"{norm.name or 'LayerNorm'}/embed"))
        ctx.replace(node, norm.output[0])


def fuse_embed_layernorm(model: onnx.ModelProto) -> dict:
    """Embedding lookups + sum + LayerNorm -> EmbedLayerNormalization; returns {"fused": n, "refused": {...}}."""
    report = apply_fusion(model, EmbedLayerNormFusion())
    if report.fused:
        ensure_opset(model, MS_DOMAIN, 1)
    return report.as_dict()

