"""Batching: features in, per-feature outputs back, in order (the Runner of runtime.tasks.base).

Features are grouped by (choices, length) so a batch pads little: sort by length, cut into batches of
`batch_size`, pad each on the right to its longest feature (input_ids with the pad id, the rest with 0).
Outputs lose the batch axis and are cut back to the feature's own length on every axis the manifest
names the sequence axis. The batch axis is the first unless the manifest names another (hidden_states
(L+1, batch, sequence, H), attentions (L, batch, heads, sequence, sequence)); where it holds batch*choices
(multiple-choice hidden_states), each feature gets its block of C rows along it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .arguments import check_number
from .backends import Backend
from .errors import BackendError, OptionError, is_failure, one_line
from .taskspec import CHOICES, SEQUENCE, TASK_OUTPUTS_ON_REQUEST, TASKS
from .tasks.base import Feature
from .tokenizer import padded_batch

LEGACY_SEQUENCE = "sequence"  # the sequence axis' name in bundles written before optimum's names


@dataclass
class BatchRunner:
    """Runs features through a backend in padded batches and cuts each output back to its own length."""
    backend: Backend
    sequence_axes: dict[str, tuple[int, ...]]  # output name -> axes (batch axis included) to cut back
    batch_size: int = 8
    pad_token_id: int = 0
    batch_axes: dict[str, int] = field(default_factory=dict)  # output -> its batch axis, where not 0
    folded_batch: frozenset[str] = frozenset()  # outputs whose batch axis is batch*choices

    def __post_init__(self):
        check_number("batch_size", self.batch_size)  # bool refused too

    def with_batch_size(self, batch_size: int) -> "BatchRunner":
        """A copy of this runner with another batch size."""
        return replace(self, batch_size=batch_size)

    def run(self, features: list[Feature]) -> list[dict[str, np.ndarray]]:
        """The backend's outputs for each feature, in order, batching features of equal leading shape by length."""
        def key(index: int):
            shape = features[index]["input_ids"].shape
            return shape[:-1], shape[-1]

        results: list[dict[str, np.ndarray] | None] = [None] * len(features)
        order = sorted(range(len(features)), key=key)
        batches: list[list[int]] = []
        for index in order:
            if batches and len(batches[-1]) < self.batch_size and key(batches[-1][0])[0] == key(index)[0]:
                batches[-1].append(index)
            else:
                batches.append([index])
        for batch in batches:
            inputs = self._padded([features[i] for i in batch])
            try:
                outputs = self.backend.infer(inputs)
            except BaseException as exc:  # onnxruntime's, TensorRT's own error types: one line, never a traceback
                if isinstance(exc, BackendError) or not is_failure(exc):
                    raise
                shape = "x".join(map(str, inputs["input_ids"].shape)) if "input_ids" in inputs else "?"
                raise BackendError(f"the model failed on a batch of shape {shape}: {one_line(exc)}") from exc
            for row, index in enumerate(batch):
                length = features[index]["input_ids"].shape[-1]
                results[index] = {name: self._row(name, value, row, len(batch), length)
                                  for name, value in outputs.items()}
        return results  # type: ignore[return-value]

    def _padded(self, batch: list[Feature]) -> dict[str, np.ndarray]:
        for name in self.backend.input_names:
            if name not in batch[0]:
                raise OptionError(f"the model needs input {name!r}, which the task head does not produce")
        return padded_batch(batch, self.pad_token_id, self.backend.input_names)

    def _row(self, name: str, value: np.ndarray, row: int, rows: int, length: int) -> np.ndarray:
        """Feature `row`'s part of a batch output (a view): batch axis taken, sequence axes cut to `length`."""
        batch = self.batch_axes.get(name, 0)
        index: list = [slice(None)] * value.ndim
        if name in self.folded_batch:
            block = value.shape[batch] // rows
            index[batch] = slice(row * block, (row + 1) * block)
        else:
            index[batch] = row
        for axis in self.sequence_axes.get(name, ()):
            index[axis] = slice(0, length)
        return value[tuple(index)]


def runner_from_bundle(bundle, task: str, backend: Backend, batch_size: int = 8, pad_token_id: int = 0) -> BatchRunner:
    """A BatchRunner over `backend` laid out as the bundle's manifest names its outputs' axes (older manifests
    without outputs: the task's own outputs, batch first)."""
    manifest = bundle.manifest
    outputs = manifest.outputs or []
    axes = sequence_axes(outputs) if outputs else {
        name: tuple(i for i, d in enumerate(dims) if d == SEQUENCE)
        for name, dims in zip(TASKS[task].outputs, TASKS[task].output_dims)
    }
    layout = batch_layout(outputs, manifest.inputs[0].dims[0]) if outputs and manifest.inputs else {}
    return BatchRunner(backend, axes, batch_size=batch_size, pad_token_id=pad_token_id, **layout)


def sequence_axes(outputs: list) -> dict[str, tuple[int, ...]]:
    """{output: its sequence axes} from the manifest's output TensorSpecs."""
    return {spec.name: tuple(i for i, dim in enumerate(spec.dims) if dim in (SEQUENCE, LEGACY_SEQUENCE))
            for spec in outputs}


def check_model_outputs(task: str, runner: BatchRunner, config: dict, pad_token_id: int = 0) -> None:
    """Run one tiny input and refuse, before any real input, a model that does not give the task's outputs (a
    manifest naming another task, a model of another task re-hashed into the bundle) or whose label count is
    not config.json's id2label's."""
    spec = TASKS[task]
    id2label = config.get("id2label") or {}
    sizes = {dim: config.get(key) for dim, key in (("vocab", "vocab_size"), ("hidden", "hidden_size"))}
    shape = spec.input_shape(1, 4)[1:]  # one unbatched input of 4 tokens (2 choices where the task has them)
    feature = {"input_ids": np.full(shape, pad_token_id, dtype=np.int64),
               "attention_mask": np.ones(shape, dtype=np.int64), "token_type_ids": np.zeros(shape, dtype=np.int64)}
    try:
        outputs = runner.run([feature])[0]
    except BackendError as exc:
        raise BackendError(f"a {task} input fails ({exc}); is the bundle's task its model's? re-export the bundle") from exc
    expected = ", ".join(f"{name} {_dims(dims[1:])}" for name, dims in zip(spec.outputs, spec.output_dims))
    found = ", ".join(f"{name} {_dims(np.shape(value))}" for name, value in outputs.items()) or "nothing"
    mismatch = BackendError(
        f"the model gives {found} per input, a {task} model gives {expected}: the bundle's task is not its "
        "model's; re-export the bundle"
    )
    for name, dims in zip(spec.outputs, spec.output_dims):
        if name not in outputs and name in TASK_OUTPUTS_ON_REQUEST:
            continue
        if name not in outputs or np.ndim(outputs[name]) != len(dims) - 1:
            raise mismatch
        value = np.shape(outputs[name])
        for axis, dim in enumerate(dims[1:]):
            if dim in (SEQUENCE, CHOICES) and value[axis] != shape[axis if dim == CHOICES else -1]:
                raise mismatch
            if isinstance(sizes.get(dim), int) and value[axis] != sizes[dim]:
                raise mismatch
            if dim == "labels" and id2label and len(id2label) != value[axis]:
                raise BackendError(
                    f"config.json's id2label names {len(id2label)} labels, the model gives {value[axis]} logits; "
                    "fix id2label (one name per logit) or re-export the bundle"
                )


def _dims(dims) -> str:
    return "(" + ", ".join(map(str, dims)) + ")"


def batch_layout(outputs: list, batch: str) -> dict:
    """BatchRunner's batch_axes and folded_batch from the manifest's outputs; `batch` names the inputs' batch
    axis (the first dim of the input TensorSpecs), "batch*choices" a folded one."""
    axes, folded = {}, set()
    for spec in outputs:
        for axis, dim in enumerate(spec.dims):
            if dim == batch or (isinstance(dim, str) and dim.startswith(f"{batch}*")):
                if axis:
                    axes[spec.name] = axis
                if dim != batch:
                    folded.add(spec.name)
                break
    return {"batch_axes": axes, "folded_batch": frozenset(folded)}
