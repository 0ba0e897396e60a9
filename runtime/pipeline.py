"""`pipeline(bundle)`: a callable like transformers' pipelines, served from a bundle without torch.

    from runtime import pipeline
    fill = pipeline("albert-fill-mask-fp32/")          # task from the manifest
    fill("Plants create [MASK] through photosynthesis.", top_k=3)

Keyword arguments given to `pipeline` that are not runtime options are defaults for every call; a call's own
keyword arguments win. The heads' arguments and results are transformers 4.57's (see runtime/tasks/*).
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from types import ModuleType
from typing import Any

from .backends import Backend, backend_from_bundle
from .bundle import Bundle, BundleError, load_bundle
from .errors import InputError, OptionError
from .runner import BatchRunner, sequence_axes
from .taskspec import TASKS, canonical_task
from .tasks.base import TaskContext
from .tokenizer import load_tokenizer

HEAD_MODULES = {
    "fill-mask": "fill_mask",
    "text-classification": "text_classification",
    "token-classification": "token_classification",
    "question-answering": "question_answering",
    "multiple-choice": "multiple_choice",
    "feature-extraction": "feature_extraction",
    "pretraining": "pretraining",
}
ALBERT_SPECIAL_TOKENS = {"cls": "[CLS]", "sep": "[SEP]", "pad": "<pad>", "mask": "[MASK]", "unk": "<unk>"}


def head_for(task: str) -> ModuleType:
    name = HEAD_MODULES[task]
    try:
        return importlib.import_module(f"{__package__}.tasks.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.tasks.{name}":
            raise
        raise OptionError(f"this runtime has no {task} head yet (runtime/tasks/{name}.py is missing)") from exc


def head_parameters(head: ModuleType) -> frozenset[str] | None:
    """The keyword arguments a head takes, or None when it does not say."""
    declared = getattr(head, "PARAMETERS", None)
    if declared is not None:
        return frozenset(declared)
    function = getattr(head, "run_each", None) or head.run
    params = list(inspect.signature(function).parameters.values())[2:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


class Pipeline:
    """A bundle's task head over a tokenizer and a batching backend; call it like an HF pipeline."""

    def __init__(
        self,
        bundle: str | Path | Bundle,
        task: str | None = None,
        *,
        backend: str = "onnxruntime",
        device: str = "cpu",
        batch_size: int = 8,
        threads: int | None = None,
        providers: list | None = None,
        graph_optimization_level: str = "all",
        backend_options: dict | None = None,
        verify: bool = True,
        engine: Backend | None = None,
        **defaults: Any,
    ):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, verify=verify)
        manifest = self.bundle.manifest
        bundle_task = canonical_task(manifest.task)
        self.task = bundle_task if task is None else canonical_task(task)
        if self.task != bundle_task:
            raise OptionError(
                f"the bundle at {self.bundle.root} was exported for {bundle_task}, not {self.task}; "
                "leave task out or export the model for that task"
            )
        self.head = head_for(self.task)
        self.parameters = head_parameters(self.head)
        self._check_parameters(defaults)
        self.defaults = defaults
        try:
            tokenizer = load_tokenizer(self.bundle.tokenizer_path)
        except Exception as exc:  # tokenizers raises plain Exception for a bad file
            raise BundleError(f"{self.bundle.tokenizer_path} cannot be loaded ({exc}); re-export the bundle") from exc
        special_tokens = dict(manifest.tokenizer.special_tokens) or {
            role: token for role, token in ALBERT_SPECIAL_TOKENS.items() if tokenizer.token_to_id(token) is not None
        }
        pad = special_tokens.get("pad")
        pad_id = tokenizer.token_to_id(pad) if pad else None
        if pad_id is None:
            pad_id = self.bundle.config.get("pad_token_id") or 0
        if engine is None:
            engine = backend_from_bundle(
                self.bundle,
                backend,
                device,
                threads=threads,
                providers=providers,
                graph_optimization_level=graph_optimization_level,
                backend_options=backend_options,
            )
        self.backend = engine
        outputs = manifest.outputs or []
        axes = sequence_axes(outputs) if outputs else {
            name: tuple(i for i, d in enumerate(dims) if d == "sequence")
            for name, dims in zip(TASKS[self.task].outputs, TASKS[self.task].output_dims)
        }
        self.runner = BatchRunner(engine, axes, batch_size=batch_size, pad_token_id=pad_id)
        max_length = manifest.tokenizer.max_length
        positions = self.bundle.config.get("max_position_embeddings")
        if isinstance(positions, int) and positions > 0:
            max_length = min(max_length, positions)
        self.context = TaskContext(
            tokenizer=tokenizer,
            runner=self.runner,
            config=self.bundle.config,
            max_length=max_length,
            special_tokens=special_tokens,
            clean_up_tokenization_spaces=manifest.tokenizer.clean_up_tokenization_spaces,
        )

    def _check_parameters(self, params: dict[str, Any]) -> None:
        if self.parameters is None:
            return
        unknown = sorted(set(params) - self.parameters - {"batch_size"})
        if unknown:
            raise OptionError(
                f"{self.task} does not take {', '.join(unknown)}; it takes {', '.join(sorted(self.parameters)) or 'no options'}"
            )

    def _context_and_params(self, params: dict[str, Any]) -> tuple[TaskContext, dict[str, Any]]:
        params = {**self.defaults, **params}
        self._check_parameters(params)
        batch_size = params.pop("batch_size", None)
        context = self.context
        if batch_size is not None and batch_size != self.runner.batch_size:
            context = TaskContext(**{**context.__dict__, "runner": self.runner.with_batch_size(batch_size)})
        return context, params

    def __call__(self, inputs: Any = None, **params: Any) -> Any:
        top_k_in_call = "top_k" in params
        if inputs is None and self.task == "multiple-choice" and {"prompt", "choices"} <= set(params):
            inputs = {"prompt": params.pop("prompt"), "choices": params.pop("choices")}
        if inputs is None and self.task != "question-answering":
            raise InputError(f"{self.task} needs an input: call the pipeline with a text or a list of texts")
        context, params = self._context_and_params(params)
        if self.task == "text-classification":
            params["_top_k_in_call"] = top_k_in_call
        return self.head.run(context, inputs, **params)

    def run_each(self, items: list, **params: Any) -> list:
        """One result per input, each shaped as `self(item)` would give it, computed in shared batches."""
        context, params = self._context_and_params(params)
        if hasattr(self.head, "run_each"):
            return self.head.run_each(context, list(items), **params)
        if len(items) == 1:
            return [self.head.run(context, items[0], **params)]
        return list(self.head.run(context, list(items), **params))

    @property
    def tokenizer(self):
        """The bundle's `tokenizers.Tokenizer` (truncation and padding off)."""
        return self.context.tokenizer

    @property
    def config(self) -> dict[str, Any]:
        return self.bundle.config

    def __repr__(self) -> str:
        return f"Pipeline(task={self.task!r}, bundle={str(self.bundle.root)!r}, backend={type(self.backend).__name__})"


def pipeline(bundle: str | Path | Bundle, task: str | None = None, **defaults: Any) -> Pipeline:
    """Load a bundle and return its task's pipeline.

    Runtime options: backend ("onnxruntime" | "openvino" | "tensorrt"), device ("cpu" | "cuda"), batch_size (8),
    threads, providers (onnxruntime execution providers), graph_optimization_level ("disable" | "basic" | "extended" |
    "all"), backend_options (onnxruntime: {"low_memory": bool}; openvino: {"hint": "latency" | "throughput",
    "precision": "f32" | "bf16"}), verify
    (check sha256 of every file, True), engine (a ready Backend to use instead of building one).
    Other keyword arguments are the head's defaults, checked against the head's PARAMETERS.
    """
    return Pipeline(bundle, task, **defaults)
