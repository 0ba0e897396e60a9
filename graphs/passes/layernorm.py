"""LayerNormalization (ONNX opset >= 17) from its decomposition, as exporters write it below opset 17:

    mean = ReduceMean(x, axes=[-1]); d = Sub(x, mean); v = ReduceMean(Pow(d, 2), axes=[-1])
    y = Div(d, Sqrt(Add(v, eps)));   y = Mul(y, gamma); y = Add(y, beta)        (anchor: the Div)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..nodes import attribute_value
from .fusion import Context, Fusion, FusionReport, Match, apply_fusion, other_input


@dataclass
class LayerNormMatch(Match):
    """The nodes of a decomposed LayerNorm: mean, variance, normalization, scale and bias."""
    x: str
    div: onnx.NodeProto
    sub: onnx.NodeProto
    sqrt: onnx.NodeProto
    mean: onnx.NodeProto
    add_eps: onnx.NodeProto
    variance: onnx.NodeProto
    square: onnx.NodeProto  # Pow(d, 2) or Mul(d, d)
    eps: str | None
    scale: str | None = None
    shift: str | None = None
    mul: onnx.NodeProto | None = None  # y * scale
    add: onnx.NodeProto | None = None  # + shift

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        """Every node the fused LayerNormalization replaces."""
        core = [self.sub, self.mean, self.square, self.variance, self.add_eps, self.sqrt, self.div]
        return core + [node for node in (self.mul, self.add) if node is not None]


def reduce_axes(ctx: Context, node: onnx.NodeProto) -> list[int] | None:
    """A Reduce node's axes, from its attribute or its constant second input; None when unknown."""
    axes = attribute_value(node, "axes")
    if axes is not None:
        return axes
    if len(node.input) > 1 and node.input[1]:
        value = ctx.constants.value(node.input[1])
        return None if value is None else [int(axis) for axis in value.reshape(-1)]
    return None


def keeps_dims(node: onnx.NodeProto) -> bool:
    """The Reduce node keeps the reduced axes (keepdims, default 1)."""
    return attribute_value(node, "keepdims", 1) == 1


class LayerNormFusion(Fusion):
    """A decomposed LayerNorm -> LayerNormalization (opset >= 17)."""
    name = "layernorm"
    anchor = "Div"

    def pattern(self, ctx, div):
        sub = ctx.producer(div.input[0], "Sub")
        sqrt = ctx.producer(div.input[1], "Sqrt")
        if sub is None or sqrt is None:
            return None
        x, mean_name = sub.input
        mean = ctx.producer(mean_name, "ReduceMean")
        add_eps = ctx.producer(sqrt.input[0], "Add")
        if mean is None or mean.input[0] != x or add_eps is None:
            return None
        variance = next((ctx.producer(name, "ReduceMean") for name in add_eps.input
                         if ctx.producer(name, "ReduceMean")), None)
        if variance is None:
            return None
        square = ctx.producer(variance.input[0], "Pow") or ctx.producer(variance.input[0], "Mul")
        if square is None or square.input[0] != div.input[0]:
            return None
        match = LayerNormMatch(last=div.output[0], x=x, div=div, sub=sub, sqrt=sqrt, mean=mean, add_eps=add_eps,
                               variance=variance, square=square, eps=other_input(add_eps, variance.output[0]))
        mul = ctx.single_reader(match.last, "Mul")
        if mul is not None and other_input(mul, match.last) in ctx.constants:
            match.mul, match.scale, match.last = mul, other_input(mul, match.last), mul.output[0]
            add = ctx.single_reader(match.last, "Add")
            if add is not None and other_input(add, match.last) in ctx.constants:
                match.add, match.shift, match.last = add, other_input(add, match.last), add.output[0]
        return match

    def check(self, ctx, match):
        if ctx.opset() < 17:
            return f"opset {ctx.opset()} < 17 has no LayerNormalization"
        for reduce in (match.mean, match.variance):
            if reduce_axes(ctx, reduce) != [-1] or not keeps_dims(reduce):
                return f"{reduce.op_type} reduces axes {reduce_axes(ctx, reduce)}, not the last axis alone"
        square = match.square
        if square.op_type == "Pow" and ctx.constants.scalar(square.input[1]) != 2.0:
            return "the variance is not the mean of squares (Pow exponent is not 2)"
        if square.op_type == "Mul" and square.input[0] != square.input[1]:
            return "the variance is not the mean of squares"
        eps = ctx.constants.value(match.eps)
        if eps is None or eps.size != 1:
            return "epsilon is not a constant scalar"
        if match.scale is None:
            return "no constant scale follows the normalization (its width is unknown)"
        for key in ("scale", "shift"):
            name = getattr(match, key)
            value = ctx.constants.value(name) if name else None
            if value is not None and value.ndim != 1:
                return f"{key} has shape {list(value.shape)}, not one value per channel"
        if ctx.read_outside([match.sub.output[0]], match.nodes):
            return "the centred input is read outside the pattern"
        inner = [node.output[0] for node in match.nodes[1:] if node.output[0] != match.last]
        if ctx.read_outside(inner, match.nodes):
            return "an intermediate value is read outside the pattern"
        return None

    def rewrite(self, ctx, match):
        eps = float(np.asarray(ctx.constants.value(match.eps)).reshape(()))
        inputs = [match.x, match.scale] + ([match.shift] if match.shift else [])
        node = helper.make_node("LayerNormalization", inputs, [match.last], axis=-1, epsilon=eps,
                                name=ctx.names.fresh(f"{match.div.name or 'LayerNorm'}/fused"))
        ctx.replace(node, match.last)


def fuse_layernorm(model: onnx.ModelProto) -> dict:
    """Decomposed LayerNorms -> LayerNormalization, in every graph; returns {"fused": n, "refused": {...}}."""
    report: FusionReport = apply_fusion(model, LayerNormFusion())
    return report.as_dict()
