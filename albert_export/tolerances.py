"""How far the exported graph may be from the PyTorch reference: one table, per precision and output.

A value passes when |onnx - reference| <= atol + rtol * |reference| (numpy.allclose). "*" is the default for
outputs a precision does not name. fp32 is measured (diffs ~1e-6 on albert-base); the fp16 and int8 rows are
placeholders for the optimization work to tune.
"""
from __future__ import annotations

from dataclasses import dataclass

ANY_OUTPUT = "*"


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float = 0.0


TOLERANCES: dict[str, dict[str, Tolerance]] = {
    "fp32": {ANY_OUTPUT: Tolerance(atol=1e-4)},
    "fp16": {ANY_OUTPUT: Tolerance(atol=5e-2, rtol=1e-2)},  # to be tuned with the fp16 pass
    "int8": {ANY_OUTPUT: Tolerance(atol=5e-1, rtol=1e-1)},  # to be tuned with calibration
}


def tolerance_for(precision: str, output: str, atol: float | None = None) -> Tolerance:
    """The table's tolerance for `output`; an explicit atol (--atol) replaces the table's atol."""
    try:
        table = TOLERANCES[precision]
    except KeyError:
        raise ValueError(f"no tolerances for precision {precision!r}; known: {', '.join(TOLERANCES)}") from None
    tolerance = table.get(output, table[ANY_OUTPUT])
    if atol is not None:
        if not atol >= 0:
            raise ValueError(f"atol must be a non-negative number, got {atol!r}")
        tolerance = Tolerance(atol=float(atol), rtol=tolerance.rtol)
    return tolerance
