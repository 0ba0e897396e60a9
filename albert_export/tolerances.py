"""How far the exported graph may be from the PyTorch reference: one table, per precision and output.

A value passes when |onnx - reference| <= atol + rtol * |reference| (numpy.allclose). "*" is the default for
outputs a precision does not name. fp32 is measured (diffs ~1e-6 on albert-base); fp16 and int8 are bounds on
logits only, loose enough for every CPU kind's kernels (int8's task-level agreement is checked apart from them).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ExportOptionError

ANY_OUTPUT = "*"


@dataclass(frozen=True)
class Tolerance:
    """How far an output may be from the reference: |actual - expected| <= atol + rtol * |expected|."""
    atol: float
    rtol: float = 0.0


TOLERANCES: dict[str, dict[str, Tolerance]] = {
    # fp32: atol 1e-4, plus 2e-5 of the value, because rounding grows with magnitude: peaked logits near 10 differ
    # by up to 1.9e-4 between onnxruntime and torch (measured on the runtime tests' sharp random models)
    # attentions (softmax probabilities in [0, 1]; measured 1.5e-7 fp32, 5e-4 fp16, 0.06 int8 on a 4-layer test
    # model with 2 groups x 2 inner layers); hidden_states are the scale of last_hidden_state and take "*"
    "fp32": {ANY_OUTPUT: Tolerance(atol=1e-4, rtol=2e-5), "attentions": Tolerance(atol=1e-5)},
    # fp16 (mixed): measured <= 1.5e-3 on the 4-layer test models, see docs/bench.md for albert-base
    "fp16": {ANY_OUTPUT: Tolerance(atol=2e-2, rtol=1e-2), "attentions": Tolerance(atol=5e-3)},
    # bf16 (OpenVINO's inference precision on CPUs with bf16): measured <= 1.5e-2 on the 2-layer test models'
    # hidden states (std 1) and <= 4e-3 on their logits, with ALBERT's initializer range (0.02)
    "bf16": {ANY_OUTPUT: Tolerance(atol=2e-2, rtol=1e-2)},
    # int8 (QDQ calibrated on text, validated on random ids): measured up to 0.14 on logits and 0.21 on hidden
    # states of the 4-layer test models (all tasks, both modes), 0.03 on albert-base-shaped QA logits, and 0.49 on
    # the trained default model's MLM logits (std 0.5) for a lone random token (1x1; 0.11 at 1x128, top-1 0.96);
    # top-1 and QA span agreement against fp32 are in the manifest (extra.accuracy_vs_fp32)
    # hidden_states under int8: every layer's output, up to 1.4 on those 2 x 2 models (token classification, QA;
    # both modes, with and without --optimize portable) where their task logits differ by 0.19
    "int8": {ANY_OUTPUT: Tolerance(atol=1.0, rtol=5e-2), "attentions": Tolerance(atol=0.2),
             "hidden_states": Tolerance(atol=2.0, rtol=5e-2)},
}


def tolerance_for(precision: str, output: str, atol: float | None = None) -> Tolerance:
    """The table's tolerance for `output`; an explicit atol (--atol) replaces the table's atol."""
    try:
        table = TOLERANCES[precision]
    except KeyError:
        raise ExportOptionError(f"no tolerances for precision {precision!r}; known: {', '.join(TOLERANCES)}") from None
    tolerance = table.get(output, table[ANY_OUTPUT])
    if atol is not None:
        if not atol >= 0:
            raise ExportOptionError(f"atol must be a non-negative number, got {atol!r}")
        tolerance = Tolerance(atol=float(atol), rtol=tolerance.rtol)
    return tolerance
