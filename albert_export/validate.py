"""The exported graph against the PyTorch reference: onnxruntime CPU on odd shapes, with padding.

Shapes (optimum's habit, the task config's validation_shapes): batch 1 and 3; sequence 1, 7, 33 and the model's
maximum; rows of a batch of 3 are padded to different lengths. Multiple choice adds 3 choices at batch 1 and 2 at
batch 3.

Every output of the graph is compared, hidden_states and attentions included. Those are large (attentions:
L x heads x S^2 floats per example, 151 MB for albert-base at 1 x 512), so outputs are compared one slice of
the leading axis at a time: no float64 copy of a whole output is made.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from calibration.agreement import task_agreement, thresholds, worst_shortfall
from runtime.bundle import Validation
from runtime.taskspec import TASKS

from .errors import ExportError
from .tolerances import Tolerance, tolerance_for


class ValidationError(ExportError):
    """An output of the exported graph is further from the reference than its tolerance allows."""

    def __init__(self, output: str, max_abs_diff: float, max_rel_diff: float, atol: float, shape: tuple[int, ...]):
        self.output, self.max_abs_diff, self.max_rel_diff, self.atol, self.shape = (
            output, max_abs_diff, max_rel_diff, atol, shape)
        super().__init__(
            f"output {output!r} differs from the PyTorch reference: max abs diff {max_abs_diff:.3g} "
            f"(tolerance {atol:g}), max rel diff {max_rel_diff:.3g}, at input shape {list(shape)}"
        )


class NonFiniteOutputError(ValidationError):
    """The reference or the exported graph gives NaN or Inf: no diff against it means anything."""

    def __init__(self, output: str, source: str, values: np.ndarray, shape: tuple[int, ...]):
        nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
        self.output, self.source, self.nan, self.inf, self.shape = output, source, nan, inf, shape
        self.max_abs_diff = self.max_rel_diff = float("nan")
        cause = ("the checkpoint's weights or config.json produce non-finite numbers"
                 if source == "the PyTorch reference" else "the exported graph overflows where PyTorch does not")
        Exception.__init__(self, f"output {output!r}: {source} gives {nan} NaN and {inf} Inf among its {values.size} "
                                 f"values at input shape {list(shape)}; {cause}")


class AgreementError(ValidationError):
    """The INT8 graph's top-1 answers agree with the fp32 graph's less often than the task's threshold."""

    def __init__(self, measure: str, agreement: float, minimum: float, examples: int):
        self.measure, self.agreement, self.minimum, self.examples = measure, agreement, minimum, examples
        self.output, self.atol, self.shape = measure, None, ()  # ValidationError's fields: no diff against PyTorch
        self.max_abs_diff = self.max_rel_diff = float("nan")
        Exception.__init__(
            self, f"the INT8 graph's top-1 {measure} agrees with fp32 on {agreement:.1%} of {examples} held-out "
                  f"examples, below the {minimum:.1%} required; calibrate on more or other data "
                  "(--calibration-data, --calibration-method), or lower --min-agreement")


@dataclass
class Comparison:
    """One output's largest differences from the reference over the validated shapes, and whether all were within
    tolerance."""
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst_shape: tuple[int, ...] = ()
    passed: bool = True


def validation_inputs(shape: tuple[int, ...], vocab_size: int, type_vocab_size: int, seed: int = 0):
    """Random ids and token types; row r of a batch keeps a shrinking prefix unmasked (padding at the end)."""
    rng = np.random.default_rng(seed + sum(shape))
    input_ids = rng.integers(0, vocab_size, size=shape, dtype=np.int64)
    token_type_ids = rng.integers(0, type_vocab_size, size=shape, dtype=np.int64)
    attention_mask = np.ones(shape, dtype=np.int64)
    rows = attention_mask.reshape(-1, shape[-1])
    for row in range(1, rows.shape[0]):
        rows[row, max(1, shape[-1] - (shape[-1] * row) // rows.shape[0]):] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def reference_outputs(model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The PyTorch model's outputs for `inputs`, as float32 numpy arrays, computed without gradients."""
    with torch.no_grad():
        outputs = model(**{name: torch.from_numpy(array) for name, array in inputs.items()})
    return {name: tensor.float().numpy() for name, tensor in outputs.items()}


def onnx_session(model_path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session of the model (`threads`: its intra-op threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


COMPARE_CHUNK = 1 << 20  # elements compared at once in float64


def compare(actual: np.ndarray, expected: np.ndarray, tolerance: Tolerance) -> tuple[float, float, bool]:
    """(max abs diff, max rel diff, within tolerance), computed over slices of the leading axis."""
    if actual.shape != expected.shape:
        raise ValueError(f"shape {actual.shape} where the reference has {expected.shape}")
    if actual.ndim == 0:
        actual, expected = actual.reshape(1), expected.reshape(1)
    step = max(1, COMPARE_CHUNK // max(1, actual[:1].size))
    max_abs = max_rel = 0.0
    passed = True
    for start in range(0, len(actual), step):
        want = expected[start:start + step].astype(np.float64)
        diff = np.abs(actual[start:start + step].astype(np.float64) - want)
        magnitude = np.abs(want)
        max_abs = max(max_abs, float(diff.max(initial=0.0)))
        max_rel = max(max_rel, float((diff / np.maximum(magnitude, 1e-6)).max(initial=0.0)))
        passed &= bool(np.all(diff <= tolerance.atol + tolerance.rtol * magnitude))
    return max_abs, max_rel, passed


def validate_onnx(
    model_path: str | Path,
    reference: torch.nn.Module,
    task: str,
    *,
    precision: str = "fp32",
    atol: float | None = None,
    shapes: list[tuple[int, ...]] | None = None,
    threads: int | None = None,
    outputs: list[str] | None = None,
    progress=None,
) -> Validation:
    """Run the graph and the reference on every shape, comparing `outputs` (default: every graph output: the
    task's, then hidden_states / attentions when the graph has them); raise ValidationError for the worst failing
    output. progress: albert_export.progress.bar (or alike) to show a bar per shape."""
    config = reference.config
    shapes = shapes or TASKS[task].validation_shapes(config.max_position_embeddings)
    session = onnx_session(model_path, threads)
    names = list(outputs or (output.name for output in session.get_outputs()))
    tolerances = {name: tolerance_for(precision, name, atol) for name in names}
    results = {name: Comparison() for name in names}
    for shape in progress(shapes, desc="validating", total=len(shapes), unit="shape") if progress else shapes:
        inputs = validation_inputs(shape, config.vocab_size, config.type_vocab_size)
        expected = reference_outputs(reference, inputs)
        actual = dict(zip(names, session.run(names, inputs)))
        for name in names:
            for source, values in (("the PyTorch reference", expected[name]), ("the exported graph", actual[name])):
                if not np.all(np.isfinite(values)):
                    raise NonFiniteOutputError(name, source, values, shape)
            try:
                max_abs, max_rel, passed = compare(actual[name], expected[name], tolerances[name])
            except ValueError as exc:
                raise ValidationError(name, float("inf"), float("inf"), tolerances[name].atol, shape) from exc
            result = results[name]
            if max_abs >= result.max_abs:
                result.worst_shape = shape
            result.max_abs, result.max_rel = max(result.max_abs, max_abs), max(result.max_rel, max_rel)
            result.passed &= passed
    for name, result in results.items():
        if not result.passed:
            raise ValidationError(name, result.max_abs, result.max_rel, tolerances[name].atol, result.worst_shape)
    return Validation(
        tolerance={name: tolerance.atol for name, tolerance in tolerances.items()},
        max_abs_diff={name: result.max_abs for name, result in results.items()},
        max_rel_diff={name: result.max_rel for name, result in results.items()},
        shapes=[list(shape) for shape in shapes],
        reference="pytorch",
    )


def validate_agreement(report: dict, task: str, validation: Validation, min_agreement: float | None = None,
                       ) -> Validation:
    """The INT8 gate: the task's top-1 agreement with fp32 on held-out examples (report: calibration's
    accuracy_report on them) against its thresholds (calibration.agreement.MIN_AGREEMENT, or min_agreement for
    each). Returns `validation` with both recorded; raises AgreementError for the measure furthest below."""
    measured, minimum = task_agreement(report, task), thresholds(task, min_agreement)
    failing = worst_shortfall(measured, minimum)
    if failing is not None:
        raise AgreementError(failing, measured[failing], minimum[failing], report["examples"])
    validation.agreement, validation.min_agreement = measured, minimum
    return validation
