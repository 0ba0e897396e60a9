"""What every backend shares (Polygraphy's BaseRunner): activate / infer / deactivate, the model's own inputs and
outputs checked against the bundle's manifest when it is loaded, and every feed checked and cast once.

A backend subclass sets, when it loads the model, `input_names` / `output_names` and `model_inputs` /
`model_outputs` (what the engine itself reports: ModelTensor, dims an int, a symbolic name, "" for a dynamic dim
without a name, None where the engine does not say), and implements `run(feeds)`. `infer(inputs)` checks the
feeds (`feed_check`, set by backend_from_bundle from the bundle: names, dtype, rank, dims, id/type/mask ranges;
without one, names only), casts each to the dtype the model declares, and runs.

`FeedCheck.from_bundle(bundle).check(tensors)` is the check on its own, for a caller that takes tensors from a
client (albert-serve's KServe v2 requests): a TensorError (an InputError) naming the tensor, before any engine
sees it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..arguments import check_number, is_integer
from ..bundle import Bundle, BundleError, TensorSpec
from ..errors import BackendError, TensorError
from ..taskspec import DYNAMIC_DIMS, SEQUENCE

LEGACY_DIMS = ("batch", "sequence", "choices")  # the dynamic dims' names in bundles older than optimum's names
SEQUENCE_DIMS = (SEQUENCE, "sequence")


@dataclass(frozen=True)
class ModelTensor:
    """One input or output as the engine reports it."""

    name: str
    dtype: np.dtype | None  # None: a type numpy has no name for
    dims: list[int | str | None] | None  # None: rank unknown


def is_dynamic_name(dim: Any) -> bool:
    """A manifest dim that varies per call: batch_size, sequence_length, num_choices, their product, legacy names."""
    return isinstance(dim, str) and (dim in DYNAMIC_DIMS or dim in LEGACY_DIMS or "*" in dim)


def dims_agree(declared: Any, actual: Any) -> bool:
    """A manifest dim against the model's: a dynamic one must be dynamic there (and, both named, the same name), a
    fixed size must be fixed there (equal where both are numbers); what either side leaves open agrees."""
    if declared is None or actual is None:
        return True
    model_dynamic = isinstance(actual, str)
    if is_dynamic_name(declared):
        if not model_dynamic:
            return False
        named = {declared, actual} <= set(DYNAMIC_DIMS)
        return not named or declared == actual
    if isinstance(declared, bool):
        return False
    if isinstance(declared, int) or (isinstance(declared, str) and declared.isdigit()):
        return not model_dynamic and int(declared) == actual
    return True  # a fixed size by name (vocab, hidden, labels): config.json's, checked by a run at load


def _show(dtype: Any, dims: Any) -> str:
    shown = "?" if dims is None else "[" + ", ".join("?" if d in (None, "") else str(d) for d in dims) + "]"
    return f"{dtype if dtype is not None else '?'} {shown}"


def check_io(kind: str, declared: list[TensorSpec], actual: list[ModelTensor], source: str) -> None:
    """BundleError when the manifest's `kind` ("inputs"/"outputs") are not the model's: names, dtypes, ranks, dims."""
    if not declared:  # bundles written before the manifest listed outputs
        return
    names, found = [t.name for t in declared], {t.name: t for t in actual}
    if sorted(names) != sorted(found):
        raise BundleError(
            f"manifest.json lists {kind} {', '.join(names)}, {source} has {', '.join(found) or 'none'}; the manifest "
            "does not describe its model, re-export the bundle"
        )
    for spec in declared:
        model = found[spec.name]
        try:
            dtype_ok = model.dtype is None or np.dtype(spec.dtype) == model.dtype
        except TypeError:
            dtype_ok = False
        rank_ok = model.dims is None or len(spec.dims) == len(model.dims)
        if not (dtype_ok and rank_ok and all(dims_agree(d, a) for d, a in zip(spec.dims, model.dims or ()))):
            raise BundleError(
                f"manifest.json says {kind[:-1]} {spec.name} is {_show(spec.dtype, spec.dims)}, {source} has "
                f"{_show(model.dtype, model.dims)}; the manifest does not describe its model, re-export the bundle"
            )


def _config_int(config: dict, key: str) -> int | None:
    value = config.get(key)
    return value if is_integer(value) and value > 0 else None


@dataclass(frozen=True)
class FeedCheck:
    """The model inputs a bundle takes, as its manifest and config.json give them."""

    inputs: tuple[TensorSpec, ...]
    vocab_size: int | None = None  # input_ids in 0..vocab_size-1
    type_vocab_size: int | None = None  # token_type_ids in 0..type_vocab_size-1
    max_positions: int | None = None  # sequence_length at most max_position_embeddings

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "FeedCheck":
        """The check for a bundle's model: its manifest's inputs and the vocabulary sizes its config gives."""
        config = bundle.config if isinstance(bundle.config, dict) else {}
        return cls(tuple(bundle.manifest.inputs), _config_int(config, "vocab_size"),
                   _config_int(config, "type_vocab_size"), _config_int(config, "max_position_embeddings"))

    def check(self, tensors: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Every input the model takes, each an array of the manifest's dtype; TensorError naming the first tensor
        that is unknown, missing, of another kind, rank or size, or that holds an id, type or mask out of range."""
        specs = {spec.name: spec for spec in self.inputs}
        takes = ", ".join(specs)
        for name in tensors:
            if name not in specs:
                raise TensorError(str(name), f"the model has no input {name!r}; it takes {takes}")
        sizes: dict[str, tuple[int, str]] = {}  # dynamic dim -> (size, the input that set it)
        checked = {}
        for spec in self.inputs:
            if spec.name not in tensors:
                raise TensorError(spec.name, f"input {spec.name} is missing; the model takes {takes}")
            array = self._array(spec, tensors[spec.name])
            self._check_dims(spec, array, sizes)
            self._check_values(spec.name, array)
            checked[spec.name] = np.ascontiguousarray(array, dtype=spec.dtype)
        return checked

    @staticmethod
    def _array(spec: TensorSpec, value: Any) -> np.ndarray:
        try:
            array = np.asarray(value)
        except (ValueError, TypeError, OverflowError):  # a ragged list
            raise TensorError(spec.name, f"input {spec.name} is not a rectangular array of integers") from None
        if array.dtype.kind == "O":
            raise TensorError(spec.name, f"input {spec.name} holds values that are not {spec.dtype} integers "
                                         "(a number past 64 bits, a string, null, ...)")
        if array.dtype.kind not in "iu" and not (array.dtype.kind == "b" and spec.name == "attention_mask"):
            raise TensorError(spec.name, f"input {spec.name} must hold integers ({spec.dtype}), got {array.dtype}")
        return array

    def _check_dims(self, spec: TensorSpec, array: np.ndarray, sizes: dict[str, tuple[int, str]]) -> None:
        shape = tuple(array.shape)
        if len(shape) != len(spec.dims):
            raise TensorError(spec.name, f"input {spec.name} has shape {list(shape)}; the model takes "
                                         f"{len(spec.dims)} dimensions ({', '.join(map(str, spec.dims))})")
        for dim, size in zip(spec.dims, shape):
            if size == 0:
                raise TensorError(spec.name, f"input {spec.name} has shape {list(shape)}: its {dim} is empty")
            if is_integer(dim) and size != dim:
                raise TensorError(spec.name, f"input {spec.name} has {size} for {dim}-sized axis; shape "
                                             f"{list(shape)} does not fit the model's {spec.dims}")
            if not isinstance(dim, str):
                continue
            seen = sizes.setdefault(dim, (size, spec.name))
            if seen[0] != size:
                raise TensorError(spec.name, f"input {spec.name} has {dim} {size}, input {seen[1]} {seen[0]}; "
                                             f"every input must have the same {dim}")
            if dim in SEQUENCE_DIMS and self.max_positions is not None and size > self.max_positions:
                raise TensorError(spec.name, f"input {spec.name} has {size} positions; the model has "
                                             f"{self.max_positions} (config.json max_position_embeddings): cut the "
                                             "input to that length")

    def _check_values(self, name: str, array: np.ndarray) -> None:
        if name == "attention_mask":
            if array.dtype.kind == "b":
                return
            bad, allowed = (array != 0) & (array != 1), "0 (padding) or 1 (a token)"
        else:
            top = {"input_ids": (self.vocab_size, "the vocabulary's ids, config.json vocab_size"),
                   "token_type_ids": (self.type_vocab_size, "config.json type_vocab_size")}.get(name)
            if top is None or top[0] is None:
                if array.dtype.kind == "i" and array.size and array.min() < 0:
                    bad, allowed = array < 0, "non-negative integers"
                else:
                    return
            else:
                bad, allowed = (array < 0) | (array >= top[0]), f"0 to {top[0] - 1} ({top[1]} {top[0]})"
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise TensorError(name, f"input {name} holds {array[index].item()} at {list(index)}; it takes {allowed}")


def check_feeds(bundle: Bundle, tensors: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The bundle's model inputs checked (FeedCheck) and cast to the manifest's dtypes; TensorError names the tensor."""
    return FeedCheck.from_bundle(bundle).check(tensors)


def checked_threads(threads: Any) -> int | None:
    """threads: None (the engine's default), or an integer from 1 to the CPUs this process may use."""
    return None if threads is None else check_number("threads", threads)


class BaseBackend:
    """The shared part of every backend; subclasses load the model (setting the attributes below) and run feeds."""

    input_names: list[str]  # what the model takes, in order
    output_names: list[str]
    model_inputs: list[ModelTensor]
    model_outputs: list[ModelTensor]
    source = "the model"  # how errors name the model file ("model.onnx", "engine.plan")
    feed_check: FeedCheck | None = None  # set by backend_from_bundle
    active = True  # engines that hold no device resources are active from creation

    def activate(self) -> None:
        """Acquire what a run needs (no-op where creation did)."""
        self.active = True

    def deactivate(self) -> None:
        """Free what activate() acquired (no-op where there is nothing to free)."""
        self.active = False

    def close(self) -> None:
        """deactivate()."""
        self.deactivate()

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc_info) -> None:
        self.deactivate()

    def check_manifest(self, bundle: Bundle) -> None:
        """The bundle's manifest must describe this model's inputs and outputs (else BundleError naming both);
        from then on every feed is checked against the bundle (FeedCheck)."""
        check_io("inputs", bundle.manifest.inputs, self.model_inputs, self.source)
        check_io("outputs", bundle.manifest.outputs, self.model_outputs, self.source)
        self.feed_check = FeedCheck.from_bundle(bundle)

    def feeds(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Each input checked (feed_check, or names only) and cast to the dtype the model declares, once."""
        if self.feed_check is not None:
            inputs = self.feed_check.check(inputs)
        else:
            unknown = set(inputs) - set(self.input_names)
            if unknown:
                raise BackendError(f"model has no input(s) {sorted(unknown)}; it takes {self.input_names}")
            missing = [name for name in self.input_names if name not in inputs]
            if missing:
                raise BackendError(f"model needs input(s) {missing}; it takes {self.input_names}")
        dtypes = self._input_dtypes
        return {name: np.ascontiguousarray(array, dtype=dtypes.get(name)) if dtypes.get(name) is not None
                else np.asarray(array) for name, array in inputs.items()}

    @property
    def _input_dtypes(self) -> dict[str, np.dtype | None]:
        return {t.name: t.dtype for t in self.model_inputs}

    def infer(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run one batch: {input name: array} -> {output name: array}."""
        return self.run(self.feeds(inputs))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the engine on checked feeds, returning every output by name; each backend implements it."""
        raise NotImplementedError


__all__ = ["BaseBackend", "FeedCheck", "ModelTensor", "check_feeds", "check_io", "checked_threads", "dims_agree"]
