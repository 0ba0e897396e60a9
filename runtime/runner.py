"""Batching: features in, per-feature outputs back, in order (the Runner of runtime.tasks.base).

Features are grouped by (choices, length) so a batch pads little: sort by length, cut into batches of
`batch_size`, pad each on the right to its longest feature (input_ids with the pad id, the rest with 0).
Outputs lose the batch axis and are cut back to the feature's own length on every axis the manifest
names the sequence axis.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .backends import Backend
from .errors import OptionError
from .tasks.base import Feature
from .taskspec import SEQUENCE

LEGACY_SEQUENCE = "sequence"  # the sequence axis' name in bundles written before optimum's names


@dataclass
class BatchRunner:
    backend: Backend
    sequence_axes: dict[str, tuple[int, ...]]  # output name -> axes (batch axis included) to cut back
    batch_size: int = 8
    pad_token_id: int = 0

    def __post_init__(self):
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise OptionError(f"batch_size must be a positive integer, got {self.batch_size!r}")

    def with_batch_size(self, batch_size: int) -> "BatchRunner":
        return replace(self, batch_size=batch_size)

    def run(self, features: list[Feature]) -> list[dict[str, np.ndarray]]:
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
            outputs = self.backend.infer(self._padded([features[i] for i in batch]))
            for row, index in enumerate(batch):
                length = features[index]["input_ids"].shape[-1]
                results[index] = {name: self._cut(name, value[row], length) for name, value in outputs.items()}
        return results  # type: ignore[return-value]

    def _padded(self, batch: list[Feature]) -> dict[str, np.ndarray]:
        length = max(f["input_ids"].shape[-1] for f in batch)
        inputs = {}
        for name in self.backend.input_names:
            if name not in batch[0]:
                raise OptionError(f"the model needs input {name!r}, which the task head does not produce")
            fill = self.pad_token_id if name == "input_ids" else 0
            first = batch[0][name]
            padded = np.full((len(batch), *first.shape[:-1], length), fill, dtype=first.dtype)
            for row, feature in enumerate(batch):
                padded[row, ..., : feature[name].shape[-1]] = feature[name]
            inputs[name] = padded
        return inputs

    def _cut(self, name: str, value: np.ndarray, length: int) -> np.ndarray:
        index = [slice(None)] * value.ndim
        for axis in self.sequence_axes.get(name, ()):
            index[axis - 1] = slice(0, length)
        return value[tuple(index)]


def sequence_axes(outputs: list) -> dict[str, tuple[int, ...]]:
    """{output: its sequence axes} from the manifest's output TensorSpecs."""
    return {spec.name: tuple(i for i, dim in enumerate(spec.dims) if dim in (SEQUENCE, LEGACY_SEQUENCE))
            for spec in outputs}
