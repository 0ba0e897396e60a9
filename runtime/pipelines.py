"""`pipeline(bundle)`: a callable like transformers' pipelines, served from a bundle without torch.

    from runtime import pipeline
    fill = pipeline("albert-fill-mask-fp32/")          # task from the manifest
    fill("Plants create [MASK] through photosynthesis.", top_k=3)
    qa = pipeline("question-answering", model="albert-question-answering-fp32/", device="cuda:0")  # HF's form

Keyword arguments given to `pipeline` that are not runtime options are defaults for every call; a call's own
keyword arguments win. The heads' arguments and results are transformers 4.57's (see runtime/tasks/*).
"""
from __future__ import annotations

import importlib
import itertools
import logging
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from .arguments import check_number
from .backends import Backend, backend_from_bundle
from .bundle import Bundle, load_bundle
from .cpu import auto_backend
from .errors import (BackendError, BundleError, CallError, InputError, OptionError, UnknownParameterError,
                     UnknownTaskError)
from .runner import check_model_outputs, runner_from_bundle
from .taskspec import TASKS, canonical_task, task_table
from .tasks.base import Features, Head, Runner, TaskContext
from .tasks.common import check_option_values, is_stream, stream_items
from .tokenizer import ALBERT_SPECIAL_TOKENS, PipelineTokenizer, load_tokenizer, special_token_id

HEAD_MODULES = task_table(lambda spec: [(spec.name, spec.head)])  # task -> its runtime.tasks module (TaskConfig.head)
HF_TASK_ALIASES = task_table(lambda spec: [(alias, spec.name) for alias in spec.hf_aliases])  # transformers' own
CALL_OPTIONS = frozenset({"batch_size", "num_workers"})  # HF's Pipeline.__call__ takes them for every task
AUTO = "auto"  # backend="auto": runtime.cpu.auto_backend picks per CPU kind
logger = logging.getLogger(__name__)


def head_for(task: str) -> Head:
    """The task head module for `task` (runtime.tasks.<head>), imported on first use."""
    name = TASKS[task].head
    try:
        return importlib.import_module(f"{__package__}.tasks.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.tasks.{name}":
            raise
        raise OptionError(f"this runtime has no {task} head yet (runtime/tasks/{name}.py is missing)") from exc


def outputs_per_input(runner: Runner, features: list[Features]) -> list[list[dict[str, np.ndarray]]]:
    """One run of every window of every input (the runner batches them), split back per input, in order."""
    windows = [window for feature in features for window in feature.windows]
    return split_outputs(runner.run(windows) if windows else [], features)


def split_outputs(outputs: list, features: list[Features]) -> list[list]:
    """The outputs of the features' windows, in order, as one list per input."""
    split, start = [], 0
    for feature in features:
        split.append(outputs[start:start + len(feature.windows)])
        start += len(feature.windows)
    return split


def results_of(head: Head, ctx: TaskContext, items: list, settings: Any) -> list:
    """Each item's result through the head's stages: preprocess every item, one run of all their windows,
    postprocess each; `settings` is head.settings(ctx, params), checked once for all."""
    features = [head.preprocess(ctx, item, settings) for item in items]
    return [head.postprocess(ctx, feature, outputs)
            for feature, outputs in zip(features, outputs_per_input(ctx.runner, features))]


def call_head(head: Head, ctx: TaskContext, inputs: Any = None, /, *, called_with: Collection[str] | None = None,
              **params: Any) -> Any:
    """One call's answer, as the task's HF pipeline gives it: one input its result, a list a list of results
    (head.CALL says where a list of one gives its result). `called_with`: the keyword arguments the call itself
    passed, the pipeline's defaults apart (None: all of params)."""
    params = dict(params)
    items, single = head.CALL.items(inputs, params)
    results = results_of(head, ctx, items, head.settings(ctx, params))
    if single or (head.CALL.list_of_one_gives_its_result and len(results) == 1):
        return one_result(head, items[0], results[0], params if called_with is None else called_with)
    return results


def one_result(head: Head, item: Any, result: Any, called_with: Collection[str]) -> Any:
    """An item's result as a call with that item alone answers it."""
    listed = head.CALL.single_text_listed_unless_given
    if listed is not None and isinstance(item, str) and listed not in called_with:
        return [result]
    return result


@dataclass(frozen=True)
class Settings:
    """A call's parameters checked once (Pipeline.sanitize), for preprocessing any number of inputs."""

    head: Any  # what the head's settings() made of them: Features.settings
    params: dict[str, Any]  # as given, the pipeline's defaults merged (batch_size and num_workers left out)
    context: TaskContext  # the tokenizer at its model_max_length, the runner at the call's batch_size


def context_from_bundle(bundle: Bundle, task: str, engine: Backend | None = None, *, batch_size: int = 8,
                        **backend_options: Any) -> TaskContext:
    """The stage between a verified bundle and its task head: the tokenizer and its special tokens, a batching
    runner over the engine (built from the bundle with backend_options unless given; one built here is first
    checked to give the task's outputs), and the length the model takes."""
    manifest = bundle.manifest
    try:
        tokenizer = load_tokenizer(bundle.tokenizer_path)
    except Exception as exc:  # tokenizers raises plain Exception for a bad file
        raise BundleError(f"{bundle.tokenizer_path} cannot be loaded ({exc}); re-export the bundle") from exc
    special_tokens = dict(manifest.tokenizer.special_tokens) or {
        role: token for role, token in ALBERT_SPECIAL_TOKENS.items() if tokenizer.token_to_id(token) is not None
    }
    pad_id = special_token_id(tokenizer, special_tokens, "pad")
    if pad_id is None:
        pad_id = bundle.config.get("pad_token_id") or 0
    built_here = engine is None
    if engine is None:
        engine = backend_from_bundle(bundle, **backend_options)
    runner = runner_from_bundle(bundle, task, engine, batch_size, pad_id)
    if built_here:  # a caller's own engine (a test double, Triton's capturing one) answers for itself
        check_model_outputs(task, runner, bundle.config, pad_id)
    max_length = manifest.tokenizer.max_length
    positions = bundle.config.get("max_position_embeddings")
    if isinstance(positions, int) and positions > 0:
        max_length = min(max_length, positions)
    return TaskContext(
        tokenizer=tokenizer,
        runner=runner,
        config=bundle.config,
        max_length=max_length,
        special_tokens=special_tokens,
        clean_up_tokenization_spaces=manifest.tokenizer.clean_up_tokenization_spaces,
    )


class Pipeline:
    """A bundle's task head over a tokenizer and a batching backend; call it like an HF pipeline.

    The head is three stages, HF's Pipeline contract: `preprocess(item, **params) -> Features` (one input's
    windows), `forward(windows) -> outputs` (the only engine call, for the windows of one or many inputs),
    `postprocess(features, outputs) -> result`. `pipe(...)`, `run_each` and albert-run are these stages."""

    def __init__(
        self,
        bundle: str | Path | Bundle,
        task: str | None = None,
        *,
        backend: str = "onnxruntime",
        device: Any = "cpu",
        batch_size: int = 8,
        num_workers: int | None = None,
        threads: int | None = None,
        providers: list | None = None,
        graph_optimization_level: str = "all",
        backend_options: dict | None = None,
        verify: bool = True,
        engine: Backend | None = None,
        **defaults: Any,
    ):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, verify=verify)
        bundle_task = canonical_task(self.bundle.manifest.task)
        self.task = bundle_task if task is None else canonical_task(HF_TASK_ALIASES.get(task, task))
        if self.task != bundle_task:
            raise OptionError(
                f"the bundle at {self.bundle.root} was exported for {bundle_task}, not {self.task}; "
                "leave task out or export the model for that task"
            )
        self.spec = TASKS[self.task]
        self.head = head_for(self.task)
        self.parameters = self.spec.parameters
        self.num_workers = _num_workers(num_workers)
        self.check_parameters(defaults)
        self.defaults = defaults
        options = dict(device=device, threads=threads, providers=providers,
                       graph_optimization_level=graph_optimization_level, backend_options=backend_options)
        self.backend_reason = "asked for"  # backend="auto": why it picked self.backend_name
        if engine is not None:
            self.backend_name, self.backend_reason = type(engine).__name__, "the engine given"
            self.context = context_from_bundle(self.bundle, self.task, engine, batch_size=batch_size, backend=backend,
                                               **options)
        else:
            self.backend_name, self.context = self._built_context(backend, batch_size, options)
        self.runner = self.context.runner
        self.backend = self.runner.backend
        self.model = BundleModel(self.bundle)
        self._tokenizer = PipelineTokenizer(self.context.tokenizer, self.context.special_tokens,
                                            self.context.max_length, self.context.clean_up_tokenization_spaces)

    def _built_context(self, backend: str, batch_size: int, options: dict[str, Any]) -> tuple[str, TaskContext]:
        """(the backend's name, the context over an engine built from the bundle); backend="auto" is resolved
        here (runtime.cpu.auto_backend) and logged, falling back to onnxruntime where OpenVINO cannot load it."""
        if backend != AUTO:
            return backend, context_from_bundle(self.bundle, self.task, batch_size=batch_size, backend=backend, **options)
        manifest = self.bundle.manifest
        backend, self.backend_reason = auto_backend(manifest.precision, device=options["device"],
                                                    providers=options["providers"],
                                                    backend_options=options["backend_options"])
        logger.info("backend='auto' picked %s for this %s bundle: %s", backend, manifest.precision, self.backend_reason)
        try:
            return backend, context_from_bundle(self.bundle, self.task, batch_size=batch_size, backend=backend, **options)
        except BackendError as exc:
            if backend == "onnxruntime" or options["backend_options"]:
                raise
            self.backend_reason = f"{self.backend_reason}; but {backend} cannot run this bundle ({exc})"
            logger.info("backend='auto': %s cannot run this bundle (%s); using onnxruntime", backend, exc)
            return "onnxruntime", context_from_bundle(self.bundle, self.task, batch_size=batch_size,
                                                      backend="onnxruntime", **options)

    def check_parameters(self, params: dict[str, Any]) -> None:
        """OptionError for a keyword argument the task does not take or a value of the wrong type or range."""
        check_option_values(params)
        unknown = sorted(set(params) - self.parameters - CALL_OPTIONS)
        if unknown:
            raise UnknownParameterError(
                f"{self.task} does not take {', '.join(unknown)}; it takes {', '.join(sorted(self.parameters)) or 'no options'}",
                tuple(unknown),
            )

    def _context_and_params(self, params: dict[str, Any]) -> tuple[TaskContext, dict[str, Any]]:
        params = {**self.defaults, **params}
        self.check_parameters(params)
        batch_size = params.pop("batch_size", None)
        _num_workers(params.pop("num_workers", None))  # accepted as HF does; tokenizing runs in this process
        context = self.context
        if batch_size is not None and batch_size != self.runner.batch_size:
            context = replace(context, runner=self.runner.with_batch_size(batch_size))
        if self._tokenizer.model_max_length != context.max_length:
            context = replace(context, max_length=self._tokenizer.model_max_length)
        return context, params

    # ---- the stages ---------------------------------------------------------------------------------------

    def sanitize(self, **params: Any) -> Settings:
        """A call's parameters checked once, as `pipe(item, **params)` checks them (the pipeline's defaults merged;
        UnknownParameterError / OptionError / InputError, HF's warnings), to preprocess any number of inputs."""
        context, merged = self._context_and_params(params)
        return Settings(self.head.settings(context, merged), merged, context)

    def preprocess(self, item: Any, settings: Settings | None = None, **params: Any) -> Features:
        """ONE input (what one albert-run line holds: a text, {"text", "text_pair"}, {"question", "context"},
        {"prompt", "choices"}) as Features: `.windows`, its model inputs (unbatched int64 arrays, (S,) each,
        (C, S) for multiple-choice; a long QA or NER input is several windows), `.settings`, the checked
        parameters its postprocess reuses. params as `pipe(item, **params)` takes them, or settings from
        sanitize(**params) to check them once for many inputs."""
        if settings is None:
            settings = self.sanitize(**params)
        elif params:
            raise CallError("preprocess() takes the parameters or settings from sanitize(), not both")
        features = self.head.preprocess(settings.context, item, settings.head)
        features.item, features.params = item, settings.params
        return features

    def forward(self, windows: Sequence[dict[str, np.ndarray]], batch_size: int | None = None) -> list[dict[str, np.ndarray]]:
        """The model's outputs for windows of one or many inputs: one dict per window, in order, the batch axis
        removed and sequence axes cut back to the window's length. The only engine call: windows are grouped by
        (choices, length), padded per batch, in batches of `batch_size` (default: the pipeline's)."""
        runner = self.runner if batch_size is None else self.runner.with_batch_size(batch_size)
        return runner.run(list(windows)) if windows else []

    def postprocess(self, features: Features, outputs: Sequence[dict[str, np.ndarray]], **params: Any) -> Any:
        """The input's result from the outputs of features.windows, in order: what `pipe.run_each([item],
        **params)[0]` gives. params change the postprocessing parameters (top_k, ...); those that shape the
        windows (truncation, max_seq_len, doc_stride, stride, ...) acted in preprocess."""
        if len(outputs) != len(features.windows):
            raise InputError(f"postprocess() got {len(outputs)} outputs for {len(features.windows)} windows; give "
                             "forward()'s outputs of exactly these features' windows, in order")
        context = self.context
        if params:
            settings = self.sanitize(**{**features.params, **params})
            features = replace(features, settings=settings.head, params=settings.params)
            context = settings.context
        result = self.head.postprocess(context, features, list(outputs))
        return one_result(self.head, features.item, result, features.params)

    @property
    def batch_size(self) -> int:
        """Windows per engine run in forward()."""
        return self.runner.batch_size

    # ---- HF's call forms ------------------------------------------------------------------------------------

    def __call__(self, *args: Any, **params: Any) -> Any:
        """Call it as the task's HF pipeline: one input gives its result, a list a list of results, a generator
        or a torch Dataset an iterator that computes them a batch at a time as they are read."""
        inputs = (self.head.CALL.inputs or self._one_input)(args, params)
        called_with = frozenset(params)
        context, params = self._context_and_params(params)
        if is_stream(inputs):
            items, length = stream_items(inputs)
            return ResultStream(self._streamed(context, items, params), length)
        return call_head(self.head, context, inputs, called_with=called_with, **params)

    def _one_input(self, args: tuple, params: dict[str, Any]) -> Any:
        """The input of a call: positional, or `inputs=` as HF names it."""
        if len(args) > 1:
            if self.task != "feature-extraction":
                raise CallError(f"a {self.task} pipeline takes one input (a text, or a list of them), got {len(args)}")
            logging.getLogger(__name__).warning("Ignoring args : %s", args[1:])  # as HF's feature-extraction does
        if args and "inputs" in params:
            raise CallError("got multiple values for argument 'inputs'")
        inputs = args[0] if args else params.pop("inputs", None)
        if inputs is None and self.spec.multiple_choice and {"prompt", "choices"} <= set(params):
            inputs = {"prompt": params.pop("prompt"), "choices": params.pop("choices")}
        if inputs is None:
            raise InputError(f"{self.task} needs an input: call the pipeline with a text or a list of texts")
        return inputs

    def _streamed(self, context: TaskContext, items: Iterator, params: dict[str, Any]) -> Iterator:
        while chunk := list(itertools.islice(items, context.runner.batch_size)):
            chunk_params = dict(params)
            batch, _ = self.head.CALL.items(chunk, chunk_params)
            yield from results_of(self.head, context, batch, self.head.settings(context, chunk_params))

    def run_each(self, items: list, **params: Any) -> list:
        """One result per input, each shaped as `self(item)` would give it: the stages over all the inputs,
        their windows in shared batches."""
        settings = self.sanitize(**params)
        items = list(items)
        results = results_of(self.head, settings.context, items, settings.head)
        return [one_result(self.head, item, result, settings.params) for item, result in zip(items, results)]

    @property
    def tokenizer(self) -> PipelineTokenizer:
        """HF-like: model_max_length (set it to cut inputs shorter), the special tokens, __call__/encode/decode;
        `.backend_tokenizer` is the bundle's `tokenizers.Tokenizer`."""
        return self._tokenizer

    @property
    def config(self) -> dict[str, Any]:
        """The bundle's model config."""
        return self.bundle.config

    def __repr__(self) -> str:
        return f"Pipeline(task={self.task!r}, bundle={str(self.bundle.root)!r}, backend={type(self.backend).__name__})"

    @property
    def backend_choice(self) -> str:
        """Which engine runs the bundle and why (backend="auto" says what it read of the CPU)."""
        return f"{self.backend_name}: {self.backend_reason}"


class ResultStream(Iterator):
    """The results of a streamed input, computed a batch at a time as they are read (HF's PipelineIterator)."""

    def __init__(self, results: Iterator, length: int | None = None):
        self._results, self._length = results, length

    def __next__(self) -> Any:
        return next(self._results)

    def __len__(self) -> int:
        if self._length is None:
            raise TypeError("the results of a generator have no length")
        return self._length


class BundleModel:
    """`pipe.model`: what code written for HF pipelines reads from `pipe.model` — `config` (config.json with
    attribute access, id2label keyed by int as in transformers), `name_or_path`, `base_model_prefix` — and the
    bundle itself."""

    base_model_prefix = "albert"

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.name_or_path = str(bundle.root)
        config = dict(bundle.config)
        if "id2label" in config:
            config["id2label"] = bundle.id2label
            config.setdefault("num_labels", len(bundle.id2label))  # a property of transformers' config
        self.config = SimpleNamespace(**config)

    def __repr__(self) -> str:
        return f"BundleModel({self.name_or_path!r})"


def _num_workers(value: Any) -> int | None:
    return None if value is None else check_number("num_workers", value)


def _names_task(value: Any) -> bool:
    if not isinstance(value, str) or Path(value).is_dir():
        return False
    try:
        canonical_task(HF_TASK_ALIASES.get(value, value))
    except UnknownTaskError:
        return False
    return True


def pipeline(*args: Any, task: str | None = None, model: str | Path | Bundle | None = None, **options: Any) -> Pipeline:
    """Load a bundle and return its task's pipeline.

    The bundle and the task, either way round: ours `pipeline("bundle/")`, `pipeline("bundle/", "qa")`, and
    transformers' `pipeline("question-answering", model="bundle/")`, `pipeline(model="bundle/")`. The task may be
    left out (the manifest's); given, it must be the bundle's task (any alias, or transformers' own). A bundle
    carries its tokenizer: `tokenizer=` may only name the bundle itself.

    Runtime options: backend ("onnxruntime" | "openvino" | "tensorrt" | "auto": picked per CPU kind, and
    `pipe.backend_choice` says which and why), device ("cpu" | "cuda" | "cuda:N" | N, -1 the CPU;
    an int runs on the CPU when there is no GPU, as transformers does), batch_size (8), num_workers (accepted
    as HF does, no effect), threads, providers (onnxruntime execution providers), graph_optimization_level
    ("disable" | "basic" | "extended" | "all"), backend_options (onnxruntime: {"low_memory": bool};
    openvino: {"hint": "latency" | "throughput", "precision": "f32" | "bf16"}), verify (check sha256 of every
    file, True), engine (a ready Backend to use instead of building one). Other keyword arguments are the head's
    defaults, checked against the head's PARAMETERS.
    """
    if len(args) > 2:
        raise CallError(f"pipeline() takes a task and a bundle, got {len(args)} positional arguments")
    if model is not None:
        if len(args) > 1 or (args and task is not None):
            raise CallError("pipeline() got the task twice: pass pipeline(task, model=bundle)")
        task = args[0] if args else task
    for value in args if model is None else ():
        if task is None and (model is not None or _names_task(value)):
            task = value
        elif model is None:
            model = value
        else:
            raise CallError("pipeline() got the task twice: pass pipeline(task, model=bundle)")
    if model is None:
        raise OptionError(f"pipeline({task!r}) needs the bundle: pipeline({task!r}, model='path/to/bundle')")
    _check_tokenizer(options.pop("tokenizer", None), model)
    return Pipeline(model, task, **options)


def _check_tokenizer(tokenizer: Any, model: str | Path | Bundle) -> None:
    """HF code often passes tokenizer=<the model's path>; a bundle carries its tokenizer, so only that path fits."""
    if tokenizer is None:
        return
    root = model.root if isinstance(model, Bundle) else Path(model)
    if not isinstance(tokenizer, (str, Path)) or Path(tokenizer).resolve() != root.resolve():
        raise OptionError(
            f"the bundle carries its own tokenizer (tokenizer.json); leave tokenizer= out or give the bundle's path, "
            f"not {tokenizer!r}"
        )
