"""Gelu from its decompositions (anchors: the Erf or the Tanh, or an ONNX Gelu for the onnxruntime profile).

    erf:  0.5 * x * (1 + Erf(x / sqrt(2)))                                    (hidden_act gelu)
    tanh: 0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))             (gelu_new, gelu_pytorch_tanh)

Targets: `portable` -> ONNX Gelu (opset >= 20, approximate "none" | "tanh"); below opset 20 the decomposition
stays. `onnxruntime` -> com.microsoft BiasGelu / Gelu (erf) or FastGelu (tanh, the same formula), taking in
the bias Add before it when nothing else reads the biased value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import onnx
from onnx import helper

from ..errors import GraphError
from ..nodes import MS_DOMAIN, attribute_value, ensure_opset
from .fusion import Context, Fusion, Match, apply_fusion, other_input

SQRT_2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
KAPPA = 0.044715


def close(value: float | None, expected: float, rel: float = 1e-4) -> bool:
    """`value` is known and within `rel` of `expected`."""
    return value is not None and abs(value - expected) <= rel * abs(expected)


def constant_operand(ctx: Context, node: onnx.NodeProto, name: str) -> float | None:
    """The scalar constant a binary node combines with `name`, else None."""
    other = other_input(node, name)
    return None if other is None else ctx.constants.scalar(other)


@dataclass
class GeluMatch(Match):
    """The nodes of one GELU (erf or tanh form) and its input, with the bias Add before it."""
    x: str
    nodes: list[onnx.NodeProto]
    approximate: str  # "none" (erf) | "tanh"
    bias: str | None = None  # the bias the onnxruntime ops take in, from bias_add = Add(x, bias)
    bias_add: onnx.NodeProto | None = None


class GeluFusion(Fusion):
    """GELU decompositions -> Gelu (portable, opset >= 20) or FastGelu / BiasGelu / Gelu (onnxruntime)."""
    name = "gelu"
    anchor = ("Erf", "Tanh", "Gelu")

    def __init__(self, profile: str):
        if profile not in ("portable", "onnxruntime"):
            raise GraphError(f"unknown Gelu fusion profile {profile!r}; use 'portable' or 'onnxruntime'")
        self.profile = profile

    def pattern(self, ctx, anchor):
        if anchor.op_type == "Gelu":
            if self.profile != "onnxruntime":
                return None
            approximate = attribute_value(anchor, "approximate", "none")
            match = self.with_bias(ctx, GeluMatch(last=anchor.output[0], x=anchor.input[0], nodes=[anchor],
                                                  approximate=approximate))
            return match if match.bias or approximate == "tanh" else None  # ORT runs ONNX Gelu as is
        if anchor.op_type == "Erf":
            inner = self.erf_argument(ctx, anchor)
        else:
            inner = self.tanh_argument(ctx, anchor)
        if inner is None:
            return None
        x, nodes = inner
        nodes.append(anchor)
        plus_one = ctx.single_reader(anchor.output[0], "Add")
        if plus_one is None or not close(constant_operand(ctx, plus_one, anchor.output[0]), 1.0):
            return None
        nodes.append(plus_one)
        tail = self.half_x_times(ctx, x, plus_one.output[0])
        if tail is None:
            return None
        nodes.extend(tail)
        match = GeluMatch(last=tail[-1].output[0], x=x, nodes=nodes,
                          approximate="none" if anchor.op_type == "Erf" else "tanh")
        return self.with_bias(ctx, match)

    def erf_argument(self, ctx, erf):
        """x for Erf(x / sqrt 2) or Erf(x * (1 / sqrt 2))."""
        node = ctx.producer(erf.input[0], "Div") or ctx.producer(erf.input[0], "Mul")
        if node is None:
            return None
        if node.op_type == "Div" and close(ctx.constants.scalar(node.input[1]), SQRT_2):
            return node.input[0], [node]
        if node.op_type == "Mul":
            for x in node.input:
                if close(constant_operand(ctx, node, x), 1.0 / SQRT_2):
                    return x, [node]
        return None

    def tanh_argument(self, ctx, tanh):
        """x for Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)), the cube as Pow(x, 3) or x*x*x."""
        scaled = ctx.producer(tanh.input[0], "Mul")
        if scaled is None:
            return None
        for name in scaled.input:
            total = ctx.producer(name, "Add")
            if total is None or not close(constant_operand(ctx, scaled, name), SQRT_2_OVER_PI):
                continue
            for x in total.input:
                term = ctx.producer(other_input(total, x), "Mul")
                if term is None:
                    continue
                for cube_name in term.input:
                    if not close(constant_operand(ctx, term, cube_name), KAPPA):
                        continue
                    cube = self.cube_nodes(ctx, cube_name, x)
                    if cube is not None:
                        return x, [*cube, term, total, scaled]
        return None

    def cube_nodes(self, ctx, name, x):
        """The nodes computing x**3 as Pow(x, 3) or x * x * x, else None."""
        power = ctx.producer(name, "Pow")
        if power is not None and power.input[0] == x and ctx.constants.scalar(power.input[1]) == 3.0:
            return [power]
        outer = ctx.producer(name, "Mul")
        if outer is None or x not in outer.input:
            return None
        square = ctx.producer(other_input(outer, x), "Mul")
        if square is not None and list(square.input) == [x, x]:
            return [square, outer]
        return None

    def half_x_times(self, ctx, x, factor):
        """The tail 0.5 * x * factor in any association: Mul(Mul(x, f), 0.5), Mul(Mul(x, 0.5), f), ..."""
        first = ctx.single_reader(factor, "Mul")
        if first is None:
            return None
        other = other_input(first, factor)
        if other == x:
            second = ctx.single_reader(first.output[0], "Mul")
            if second is not None and close(constant_operand(ctx, second, first.output[0]), 0.5):
                return [first, second]
            return None
        half = ctx.producer(other, "Mul")
        if half is not None and x in half.input and close(constant_operand(ctx, half, x), 0.5):
            return [half, first]
        if close(ctx.constants.scalar(other), 0.5):
            second = ctx.single_reader(first.output[0], "Mul")
            if second is not None and other_input(second, first.output[0]) == x:
                return [first, second]
        return None

    def with_bias(self, ctx, match):
        """Note the bias Add producing x (x = MatMul(...) + b), which the onnxruntime ops can take in."""
        add = ctx.producer(match.x, "Add")
        if add is None or self.profile != "onnxruntime" or ctx.read_outside([match.x], match.nodes):
            return match
        for name in add.input:
            value = ctx.constants.value(name)
            if value is not None and value.ndim == 1 and ctx.constants.value(other_input(add, name)) is None:
                match.bias, match.bias_add, match.x = name, add, other_input(add, name)
        return match

    def check(self, ctx, match):
        if self.profile == "portable" and ctx.opset() < 20:
            return f"opset {ctx.opset()} < 20 has no Gelu; the decomposition stays"
        produced = [name for node in match.nodes for name in node.output if name != match.last]
        name = ctx.read_outside(produced, match.nodes)
        if name is not None:
            return f"intermediate {name!r} is also read outside the Gelu"
        return None

    def rewrite(self, ctx, match):
        x, last, bias = match.x, match.last, match.bias
        name = ctx.names.fresh(f"{match.nodes[-1].name or 'Gelu'}/fused")
        if self.profile == "portable":
            node = helper.make_node("Gelu", [x], [last], name=name, approximate=match.approximate)
        elif match.approximate == "tanh":
            node = helper.make_node("FastGelu", [x] + ([bias] if bias else []), [last], name=name, domain=MS_DOMAIN)
        elif bias:
            node = helper.make_node("BiasGelu", [x, bias], [last], name=name, domain=MS_DOMAIN)
        else:
            node = helper.make_node("Gelu", [x], [last], name=name, domain=MS_DOMAIN)
        ctx.replace(node, last)


def fuse_gelu(model: onnx.ModelProto, profile: str = "portable") -> dict:
    """Gelu decompositions -> one op per profile, in every graph; returns {"fused": n, "refused": {...}}."""
    report = apply_fusion(model, GeluFusion(profile))
    if report.fused and profile == "onnxruntime":
        ensure_opset(model, MS_DOMAIN, 1)
    return report.as_dict()
