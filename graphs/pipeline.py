"""Optimization profiles: one ordered list of passes each. Every pass visits Loop bodies and keeps weights shared.

    none         nothing: the graph as the exporter assembled it
    portable     + standard-op fusions (LayerNormalization at opset >= 17, Gelu at opset >= 20); runs anywhere
    onnxruntime  + com.microsoft fusions that only onnxruntime runs (Attention with one shared QKV weight,
                   FastGelu/BiasGelu); "onnxruntime-all" adds Skip- and EmbedLayerNormalization (see below)
    onnxruntime-without-attention
                 onnxruntime without the Attention fusion: for --int8 (see below)

`optimize` also takes "onnxruntime-all" (EXTRA_PROFILES), which the CLI does not offer: its two extra fusions
are slower on onnxruntime's CPU kernels; the pass tests run it so the fusions keep working for other providers.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import onnx

from .errors import GraphError
from .passes.attention import fuse_attention
from .passes.dedupe import dedupe_initializers
from .passes.embed_layernorm import fuse_embed_layernorm
from .passes.gelu import fuse_gelu
from .passes.layernorm import fuse_layernorm
from .passes.simplify import simplify
from .passes.skip_layernorm import fuse_skip_layernorm

Pass = tuple[str, Callable[[onnx.ModelProto], dict]]

CLEANUP: list[Pass] = [
    ("dedupe", dedupe_initializers),  # equal weights stored once, before anything compares names
    ("simplify", simplify),  # CSE, then folding that never copies a shared weight, then dead code
]

PORTABLE: list[Pass] = CLEANUP + [  # clean-up first: fusions match one form of each constant and weight
    ("layernorm", fuse_layernorm),  # decomposed LayerNorm (exports below opset 17) -> LayerNormalization
    ("gelu", partial(fuse_gelu, profile="portable")),  # Erf/Tanh decompositions -> Gelu (opset >= 20)
    ("cleanup", simplify),  # the constants the fusions left unread
]

ONNXRUNTIME: list[Pass] = CLEANUP + [
    ("layernorm", fuse_layernorm),  # first, so the fusions below see one LayerNorm form
    ("attention", fuse_attention),  # one QKV weight per layer group for all layers, the mask expanded once
    ("gelu", partial(fuse_gelu, profile="onnxruntime")),  # -> FastGelu / BiasGelu, bias Add taken in
    ("cleanup", simplify),  # merges the small constants the fusions added, drops the unread Q/K/V weights
]
# Two fusions are left out of that profile: onnxruntime's CPU kernels for them are slower than the ops they replace
# (docs/measurements.md). "onnxruntime-all" has them, for execution providers where the fused kernels may pay.
ONNXRUNTIME_ALL: list[Pass] = ONNXRUNTIME[:3] + [
    ("embed_layernorm", fuse_embed_layernorm),  # before skip_layernorm takes the embeddings' sum
    ("skip_layernorm", fuse_skip_layernorm),  # before attention: it proves the summed shapes equal by ONNX
    # shape inference, which cannot see through com.microsoft ops
] + ONNXRUNTIME[3:]

# For INT8: the QDQ pass quantizes MatMul/Gemm, and a fused com.microsoft Attention hides its QKV MatMuls, which
# then stay fp32; without that fusion every MatMul is quantized (the benchmark's INT8 rows, docs/bench.md).
ONNXRUNTIME_WITHOUT_ATTENTION: list[Pass] = [step for step in ONNXRUNTIME if step[0] != "attention"]

PROFILES: dict[str, list[Pass]] = {"none": [], "portable": PORTABLE, "onnxruntime": ONNXRUNTIME,
                                   "onnxruntime-without-attention": ONNXRUNTIME_WITHOUT_ATTENTION}
EXTRA_PROFILES: dict[str, list[Pass]] = {"onnxruntime-all": ONNXRUNTIME_ALL}


class OptimizeError(GraphError):
    """An unknown profile or a pass that broke the graph."""


def optimize(model: onnx.ModelProto, profile: str = "none") -> tuple[onnx.ModelProto, dict[str, dict]]:
    """A copy of `model` run through the profile's passes; the report maps each pass to its counts."""
    passes = {**PROFILES, **EXTRA_PROFILES}.get(profile)
    if passes is None:
        raise OptimizeError(f"unknown optimization profile {profile!r}; use one of {', '.join(PROFILES)}")
    optimized = onnx.ModelProto()
    optimized.CopyFrom(model)
    report: dict[str, dict] = {}
    for name, run in passes:
        report[name if name not in report else f"{name}#{len(report)}"] = run(optimized)
    try:
        onnx.checker.check_model(optimized)
    except onnx.checker.ValidationError as exc:
        raise OptimizeError(f"profile {profile!r} produced an invalid graph: {exc}") from exc
    return optimized, report
