"""com.microsoft SkipLayerNormalization: LayerNormalization(input + skip [+ bias]) in one kernel.

    s = Add(MatMul(...) + bias, residual); y = LayerNormalization(s, gamma, beta, axis=-1)   (anchor: the LN)

The bias Add before the residual sum is taken in when nothing else reads it; when the sum itself is read
elsewhere, the fused node's fourth output (input_skip_bias_sum) provides it.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

from ..infer import value_shapes
from ..nodes import MS_DOMAIN, attribute_value, ensure_opset
from .fusion import Fusion, Match, apply_fusion, other_input


@dataclass
class SkipMatch(Match):
    """The residual Add (and its bias Add) feeding a LayerNorm."""
    norm: onnx.NodeProto
    total: onnx.NodeProto  # Add(input, skip), the residual sum
    input: str
    skip: str
    bias: str | None = None  # taken in from bias_add = Add(input, bias)
    bias_add: onnx.NodeProto | None = None


class SkipLayerNormFusion(Fusion):
    """Add(input, skip [+ bias]) + LayerNormalization -> com.microsoft SkipLayerNormalization."""
    name = "skip_layernorm"
    anchor = "LayerNormalization"

    def prepare(self, model):
        self.shapes = value_shapes(model)

    def pattern(self, ctx, norm):
        total = ctx.producer(norm.input[0], "Add")
        if total is None or len(norm.input) < 2:
            return None
        first, second = total.input
        if first in ctx.constants or second in ctx.constants:
            return None  # a bias, not a residual
        match = SkipMatch(last=norm.output[0], norm=norm, total=total, input=first, skip=second)
        for candidate in (first, second):
            add = ctx.producer(candidate, "Add")
            if add is None or ctx.read_outside([candidate], [total]):
                continue
            for name in add.input:
                value = ctx.constants.value(name)
                if value is not None and value.ndim == 1 and other_input(add, name) not in ctx.constants:
                    match.input, match.skip = other_input(add, name), other_input(total, candidate)
                    match.bias, match.bias_add = name, add
                    return match
        return match

    def check(self, ctx, match):
        norm = match.norm
        axis = attribute_value(norm, "axis", -1)
        if axis != -1:
            return f"LayerNormalization over axis {axis}, not the last axis"
        if len(norm.output) > 1 and any(norm.output[1:]):
            return "the LayerNormalization's mean / inverse std outputs are read"
        gamma = ctx.constants.value(norm.input[1])
        if gamma is None or gamma.ndim != 1:
            return "the scale is not a constant vector"
        if len(norm.input) > 2 and norm.input[2] and ctx.constants.value(norm.input[2]) is None:
            return "the shift is not a constant"
        input_shape, skip_shape = self.shapes.get(match.input), self.shapes.get(match.skip)
        if input_shape is None or skip_shape is None:
            return "the shapes of the summed values are unknown (no broadcasting can be ruled out)"
        if len(input_shape) != 3 or len(skip_shape) not in (2, 3):
            return f"input rank {len(input_shape)} / skip rank {len(skip_shape)}; SkipLayerNormalization needs 3-D"
        if input_shape[-1] != gamma.size or skip_shape[-1] != gamma.size:
            return f"summed shapes {input_shape} and {skip_shape} do not both end in the {gamma.size} channels"
        if not dims_compatible(input_shape, skip_shape) and len(skip_shape) == 3 \
                and dims_compatible(skip_shape, input_shape) and match.bias is None:
            match.input, match.skip = match.skip, match.input  # the broadcast one is the skip
        elif not dims_compatible(input_shape, skip_shape):
            return f"skip shape {skip_shape} does not match input shape {input_shape}"
        return None

    def rewrite(self, ctx, match):
        norm, total = match.norm, match.total
        epsilon = attribute_value(norm, "epsilon", 1e-5)
        beta = norm.input[2] if len(norm.input) > 2 else ""
        inputs = [match.input, match.skip, norm.input[1], beta] + ([match.bias] if match.bias else [])
        summed = total.output[0]
        keeps_sum = ctx.read_outside([summed], [norm]) is not None
        outputs = [norm.output[0]] + (["", "", summed] if keeps_sum else [])
        node = helper.make_node("SkipLayerNormalization", inputs, outputs, domain=MS_DOMAIN, epsilon=epsilon,
                                name=ctx.names.fresh(f"{norm.name or 'LayerNorm'}/skip"))
        ctx.replace(node, *[name for name in outputs if name])


def dims_compatible(input_shape: list, skip_shape: list) -> bool:
    """Skip may be (B, S, H), (1, S, H) or (S, H): static dims equal (symbols prove nothing either way)."""
    aligned = input_shape[-len(skip_shape):]
    for position, (a, b) in enumerate(zip(aligned, skip_shape)):
        if not isinstance(a, int) or not isinstance(b, int) or a == b:
            continue
        if len(skip_shape) == 3 and position == 0 and b == 1:
            continue
        return False
    return True


def fuse_skip_layernorm(model: onnx.ModelProto) -> dict:
    """Residual Add (+ bias Add) + LayerNormalization -> SkipLayerNormalization, in every graph."""
    report = apply_fusion(model, SkipLayerNormFusion())
    if report.fused:
        ensure_opset(model, MS_DOMAIN, 1)
    return report.as_dict()
