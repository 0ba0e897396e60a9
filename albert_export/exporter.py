"""PyTorch reference -> bundle: trace the three pieces, assemble (unrolled | loop), validate, write.

The pieces are traced with the TorchScript exporter (torch.onnx.export(dynamo=False)): plain ONNX ops with
dynamic axes, initializers named after the parameters, under a second per piece. It writes opsets up to 20;
a newer opset (up to the newest onnxruntime runs) is reached by converting each traced piece with
onnx.version_converter before assembly. (The dynamo exporter needs opset >= 18 and is slower to trace;
nothing here needs it.)
"""
from __future__ import annotations

import contextlib
import functools
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import onnx
import torch
from onnx import version_converter
from torch import nn

from calibration import load_examples
from calibration.agreement import check_min_agreement
from calibration.data import CALIBRATION_MAX_LENGTH
from graphs.assemble import ATTENTIONS, LAYER_MODES, Pieces, assemble, name_initializers
from graphs.nodes import dims_of
from graphs.passes.decoder_view import view_tied_decoders
from graphs.pipeline import PROFILES
from graphs.pipeline import optimize as optimize_graph
from graphs.size import array_digest, node_count, stored_tensors, tensor_nbytes, transposed_digest
from runtime.arguments import is_integer
from runtime.bundle import ENGINE, MODEL, TOKENIZER, EngineInfo, Manifest, TensorSpec, TokenizerSettings, Validation
from runtime.taskspec import (
    BATCH, CHOICES, INPUT_NAMES, OPTIONAL_OUTPUTS, SEQUENCE, TASK_OUTPUTS_ON_REQUEST, TASKS, canonical_task, dynamic_axes,
    input_dims,
)

from .bundle_writer import EXTERNAL_DATA_THRESHOLD, BundleWriter, save_model
from .checkpoint import (
    UnusedWeightsWarning, default_model_dir, load_config, reference_from_checkpoint, resolve_checkpoint,
)
from .config import task_from_architectures
from .engine import (
    ENGINES, ShapeProfile, check_engine, default_profile, engine_from_onnx, fitting_positions, import_tensorrt,
    parse_shapes,
)
from .errors import ExportOptionError
from .modeling import AlbertForTask
from .opsets import DEFAULT_OPSET, MIN_OPSET, TRACE_MAX_OPSET
from .ort_format import ort_from_onnx
from .progress import bar, log, stage
from .precision import DEFAULT_METHOD, DEFAULT_SAMPLES, graph_at_precision, precision_from_options
from .tokenizer import check_tokenizer_fits, tokenizer_from_pretrained
from .tokenizer_files import write_tokenizer_files
from .tolerances import ANY_OUTPUT, tolerance_for
from .triton import BACKENDS as TRITON_BACKENDS, RepositoryWriter
from .validate import validate_agreement, validate_onnx

DEFAULT_MODEL_TASK = "fill-mask"  # --task left out without --model
TRACE_SHAPE = (2, 5)  # batch, sequence: distinct sizes above 1 so nothing is specialized to a constant


@functools.lru_cache(maxsize=1)
def max_opset() -> int:
    """The newest opset both onnx (to convert to) and the installed onnxruntime (to run) know."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [value("x", TensorProto.FLOAT, [1])], [value("y", TensorProto.FLOAT, [1])])
    for opset in range(onnx.defs.onnx_opset_version(), TRACE_MAX_OPSET, -1):
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        try:
            ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
            return opset
        except Exception:  # onnxruntime refuses opsets newer than it knows
            continue
    return TRACE_MAX_OPSET


def check_opset(opset: int) -> int:
    """`opset` where this exporter and the installed onnxruntime support it; ExportOptionError otherwise."""
    if not is_integer(opset, numpy=False) or not MIN_OPSET <= opset <= max_opset():
        raise ExportOptionError(
            f"opset {opset!r} is not supported; choose {MIN_OPSET}..{max_opset()} "
            f"(what this exporter and the installed onnxruntime support; default {DEFAULT_OPSET})"
        )
    return opset


def check_layers(layers: str) -> str:
    """`layers` where it is a layers mode (LAYER_MODES); ExportOptionError otherwise."""
    if layers not in LAYER_MODES:
        raise ExportOptionError(f"--layers {layers!r} is not a layers mode; choose {' or '.join(LAYER_MODES)}")
    return layers


class EmbeddingsPiece(nn.Module):
    """The model's embeddings as a module of their own, traced alone: ids, mask, types -> hidden, additive mask."""
    def __init__(self, model: AlbertForTask):
        super().__init__()
        self.albert = model.albert

    def forward(self, input_ids, attention_mask, token_type_ids):
        """(hidden (B, S, H), additive mask (B, 1, 1, S)), as the model's embed() returns them."""
        return self.albert.embed(input_ids, attention_mask, token_type_ids)  # (B, S, H), (B, 1, 1, S)


class LayerGroupPiece(nn.Module):
    """One shared layer group as a module of its own, traced alone (with its attentions where asked for)."""
    def __init__(self, group: nn.Module, output_attentions: bool):
        super().__init__()
        self.group, self.output_attentions = group, output_attentions

    def forward(self, hidden, attention_bias):
        """The group's output (B, S, H); with output_attentions, also its inner layers' softmaxes (I, B, N, S, S)."""
        if self.output_attentions:
            return self.group.with_attentions(hidden, attention_bias)  # (B, S, H), (I, B, N, S, S)
        return self.group(hidden, attention_bias)


class HeadPiece(nn.Module):
    """The model's pooler and task head as a module of their own, traced alone: hidden -> the bundle's outputs."""
    def __init__(self, model: AlbertForTask, outputs: list[str]):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, hidden):
        """The head's tensors named in `outputs`, in that order."""
        head = self.model.head(hidden)
        return tuple(head[name] for name in self.outputs)


def onnx_from_torch(module: nn.Module, args: tuple, input_names: list[str], output_names: list[str],
                    dynamic_axes: dict[str, dict[int, str]], opset: int) -> onnx.ModelProto:
    """One traced piece as an in-memory ONNX model (through a temporary file, so large pieces work)."""
    with tempfile.TemporaryDirectory(prefix="albert-piece-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; validation is the real check
        path = Path(tmp) / "piece.onnx"
        with torch.no_grad():
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=min(opset, TRACE_MAX_OPSET),
                              input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                              do_constant_folding=True)
        piece = onnx.load(str(path))
    if opset > TRACE_MAX_OPSET:
        try:
            piece = version_converter.convert_version(piece, opset)
        except Exception as exc:
            raise ExportOptionError(f"the traced graph cannot be converted to opset {opset} ({exc}); "
                                    f"use --opset {TRACE_MAX_OPSET} or lower") from exc
    return piece


def pieces_from_torch(model: AlbertForTask, opset: int = DEFAULT_OPSET, left_out: tuple[str, ...] = (),
                      output_hidden_states: bool = False, output_attentions: bool = False) -> Pieces:
    """Trace embeddings, each layer group (with its inner softmaxes when output_attentions) and the head of the
    reference model (left in eval mode); the head returns every output of the reference but those `left_out`."""
    config = model.config
    model.eval()
    batch, sequence = TRACE_SHAPE[0], min(TRACE_SHAPE[1], config.max_position_embeddings)
    ids = torch.randint(0, config.vocab_size, (batch, sequence), generator=torch.Generator().manual_seed(0))
    mask, types = torch.ones_like(ids), torch.zeros_like(ids)
    tokens = {0: BATCH, 1: SEQUENCE}
    bias_axes = {0: BATCH, 3: SEQUENCE}
    embed = onnx_from_torch(
        EmbeddingsPiece(model).eval(), (ids, mask, types), list(INPUT_NAMES), ["hidden", "attention_bias"],
        {**{name: tokens for name in INPUT_NAMES}, "hidden": tokens, "attention_bias": bias_axes}, opset)
    with torch.no_grad():
        hidden, bias = model.albert.embed(ids, mask, types)
        head_outputs = [name for name in model.head(hidden) if name not in left_out]
    group_outputs, group_axes = ["hidden_out"], {"hidden": tokens, "attention_bias": bias_axes, "hidden_out": tokens}
    if output_attentions:
        group_outputs.append(ATTENTIONS)
        group_axes[ATTENTIONS] = {1: BATCH, 3: SEQUENCE, 4: SEQUENCE}  # (I, B, N, S, S)
    groups = [
        onnx_from_torch(LayerGroupPiece(group, output_attentions).eval(), (hidden, bias),
                        ["hidden", "attention_bias"], group_outputs, group_axes, opset)
        for group in model.albert.encoder.albert_layer_groups
    ]
    spec = TASKS[model.task]
    # a task with a choices axis: the head scores (B*C, 1), not one of the task's outputs; assembly reshapes them
    dims = dict(zip(spec.outputs, spec.output_dims))
    output_axes = {name: dynamic_axes(dims[name]) if name in dims else {0: BATCH} for name in head_outputs}
    head = onnx_from_torch(HeadPiece(model, head_outputs).eval(), (hidden,), ["hidden"], head_outputs,
                           {"hidden": tokens, **output_axes}, opset)
    model.eval()  # the exporter restores each wrapper's mode, recursively; a reference must stay in eval
    return Pieces(embed, groups, head, [config.group_of_layer(i) for i in range(config.num_hidden_layers)],
                  choices=(spec.outputs[0], CHOICES) if spec.multiple_choice else None,
                  output_hidden_states=output_hidden_states,
                  output_attentions=output_attentions)


def parameter_names_by_digest(model: nn.Module) -> dict[str, str]:
    """Content digest -> checkpoint parameter name, and of each matrix's transpose -> name + '.T'."""
    names: dict[str, str] = {}
    for name, parameter in model.named_parameters():  # tied parameters are listed once
        array = parameter.detach().cpu().numpy()
        names.setdefault(array_digest(array), name)
        transposed = transposed_digest(array)
        if transposed:
            names.setdefault(transposed, name + ".T")
    return names


def onnx_from_reference(model: AlbertForTask, layers: str = "unrolled", opset: int = DEFAULT_OPSET,
                        left_out: tuple[str, ...] = ()) -> onnx.ModelProto:
    """The whole reference model as one ONNX graph, weights stored once, initializers named after parameters;
    with hidden_states / attentions outputs where the model's output_hidden_states / output_attentions are set."""
    pieces = pieces_from_torch(model, check_opset(opset), left_out, model.output_hidden_states, model.output_attentions)
    graph = assemble(pieces, check_layers(layers))
    name_initializers(graph, parameter_names_by_digest(model))
    graph.producer_version = albert_version()
    return graph


def graph_stats(graph: onnx.ModelProto, model: nn.Module) -> dict[str, int]:
    """Recorded in the manifest (extra.graph): how big the graph is against the weights it stores."""
    return {
        "nodes": node_count(graph),
        "top_level_nodes": node_count(graph, recursive=False),
        "initializers": len(graph.graph.initializer),
        "tensor_bytes": sum(tensor_nbytes(tensor) for _, tensor in stored_tensors(graph)),
        "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),  # tied ones once
    }


def albert_version() -> str:
    """The albert-export version, recorded as the producer of the graph and of the manifest."""
    from . import __version__

    return __version__


@dataclass(frozen=True)
class ExportOptions:
    """export()'s keywords, checked alone and in combination before anything is read or traced: whatever
    `checked` raises is a usage error (albert-export exits 2). task None: not known yet (read off config.json)."""

    task: str | None = None  # canonical
    output_dir: str | Path | None = None
    layers: str = "unrolled"
    opset: int = DEFAULT_OPSET
    optimize: str = "none"
    precision: str = "fp32"
    calibration_data: str | Path | None = None
    calibration_method: str = DEFAULT_METHOD
    calibration_samples: int = DEFAULT_SAMPLES
    engine: str = "onnxruntime"
    shapes: str | None = None
    validate: bool = True
    atol: float | None = None
    min_agreement: float | None = None  # INT8: the top-1 agreement with fp32 each task measure needs
    overwrite: bool = False
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD
    pooler_output: bool = False
    ort_format: bool = False
    output_hidden_states: bool = False
    output_attentions: bool = False
    triton: str | Path | None = None
    triton_backend: str | None = None  # None: onnxruntime (only with triton)
    input_dims: tuple[str, ...] = ()  # the task's
    profile: ShapeProfile | None = None  # --shapes, parsed at the task's rank

    @classmethod
    def checked(cls, task: str | None = None, *, fp16: bool = False, int8: bool = False, **keywords) -> ExportOptions:
        """From export()'s arguments (fp16 / int8 become `precision`), in the order the CLI reports them."""
        name = task if task is None or task in TASKS else canonical_task(task)  # the CLI gives it canonical
        options = cls(**keywords)
        check_layers(options.layers)
        check_opset(options.opset)
        if options.optimize not in PROFILES:
            raise ExportOptionError(f"unknown optimization profile {options.optimize!r}; "
                                    f"use one of {', '.join(PROFILES)}")
        precision = precision_from_options(fp16, int8, options.calibration_data, options.calibration_method,
                                           options.calibration_samples)
        tolerance_for(precision, ANY_OUTPUT, options.atol)
        if options.atol is not None and not math.isfinite(options.atol):
            raise ExportOptionError(f"--atol must be a finite number, got {options.atol!r}; leave it out for the "
                                    "precision's table, or pass --no-validate to skip validation")
        if options.min_agreement is not None and precision != "int8":
            raise ExportOptionError("--min-agreement sets the INT8 graph's required agreement with fp32; add --int8")
        check_min_agreement(options.min_agreement)
        check_engine(options.engine, options.shapes, options.optimize)
        if options.triton_backend is not None and not options.triton:
            raise ExportOptionError(f"--triton-backend {options.triton_backend} chooses how --triton's repository runs "
                                    "the model; add --triton DIR")
        if options.triton_backend not in (None, *TRITON_BACKENDS):
            raise ExportOptionError(f"--triton-backend {options.triton_backend!r} is not one of "
                                    f"{', '.join(TRITON_BACKENDS)}")
        options = replace(options, precision=precision)
        if name is None:  # until the task is known, --shapes is read as BxS (the layout of all but multiple choice)
            return replace(options, profile=parse_shapes(options.shapes) if options.shapes is not None else None)
        return options.for_task(name)

    def for_task(self, task: str) -> ExportOptions:
        """With the (canonical) task: --shapes parsed at its rank, --pooler-output only where that output exists."""
        dims = input_dims(task)
        profile = parse_shapes(self.shapes, rank=len(dims)) if self.shapes is not None else None
        with_pooler = [spec.name for spec in TASKS.values() if "pooler_output" in spec.outputs_on_request]
        if self.pooler_output and task not in with_pooler:
            raise ExportOptionError(f"--pooler-output adds {' or '.join(with_pooler)}'s pooler_output; the {task} "
                                    f"bundle has no such output (leave the flag out, or use --task {with_pooler[0]})")
        return replace(self, task=task, input_dims=dims, profile=profile)

    @property
    def left_out(self) -> tuple[str, ...]:
        """The task's outputs this bundle does not have (those written only when asked for)."""
        return () if self.pooler_output else TASK_OUTPUTS_ON_REQUEST


def detect_task(path_or_hub_id: str | Path | None, log: Callable[[str], None]) -> str:
    """The task named by the checkpoint's config.json architectures (None: the default model's), logged with why."""
    if path_or_hub_id is None:
        task, reason = DEFAULT_MODEL_TASK, "the embedded default model"
    else:
        checkpoint = resolve_checkpoint(path_or_hub_id)
        config = load_config(checkpoint)
        task = task_from_architectures(config, checkpoint)
        reason = f"{checkpoint / 'config.json'} names {', '.join(config.extra['architectures'])}"
    log(f"task: {task} ({reason}; --task overrides)")
    return task


def default_output_dir(task: str, precision: str = "fp32") -> Path:
    """The bundle's folder when no output is given: albert-{task}-{precision}."""
    return Path(f"albert-{task}-{precision}")


def export(
    path_or_hub_id: str | Path | None,
    task: str | None = None,
    output_dir: str | Path | None = None,
    *,
    layers: str = "unrolled",
    opset: int = DEFAULT_OPSET,
    validate: bool = True,
    atol: float | None = None,
    min_agreement: float | None = None,
    overwrite: bool = False,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    log: Callable[[str], None] = log,
    fp16: bool = False,
    int8: bool = False,
    calibration_data: str | Path | None = None,
    calibration_method: str = DEFAULT_METHOD,
    calibration_samples: int = DEFAULT_SAMPLES,
    optimize: str = "none",
    engine: str = "onnxruntime",
    shapes: str | None = None,
    pooler_output: bool = False,
    ort_format: bool = False,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
    triton: str | Path | None = None,
    triton_backend: str | None = None,
) -> Path:
    """What `albert-export` does: checkpoint -> validated bundle directory; returns its path.

    path_or_hub_id None is the embedded default model; task None is the task of the Albert* architecture its
    config.json names (fill-mask for the embedded model, which names none: its MLM head answers seed-style
    `[MASK]` lines); output_dir None is ./albert-<task>-<precision>; triton, a directory to write a Triton model
    repository for the bundle into, written with the bundle (both or neither); triton_backend, its model step:
    onnxruntime (default), openvino, or python (the runtime's stages in Triton's python backend). Raises (before any tracing) UnknownTaskError, ExportOptionError,
    OutputExistsError, CheckpointError, ConfigError, TokenizerError; after it ValidationError. Nothing is left at
    output_dir unless the bundle is complete.
    """
    options = ExportOptions.checked(
        task, output_dir=output_dir, layers=layers, opset=opset, validate=validate, atol=atol,
        min_agreement=min_agreement, overwrite=overwrite,
        external_data_threshold=external_data_threshold, fp16=fp16, int8=int8, calibration_data=calibration_data,
        calibration_method=calibration_method, calibration_samples=calibration_samples, optimize=optimize,
        engine=engine, shapes=shapes, pooler_output=pooler_output, ort_format=ort_format,
        output_hidden_states=output_hidden_states, output_attentions=output_attentions, triton=triton,
        triton_backend=triton_backend)
    return bundle_from_checkpoint(path_or_hub_id, options, log)


def bundle_from_checkpoint(path_or_hub_id: str | Path | None, options: ExportOptions,
                           log: Callable[[str], None] = log) -> Path:
    """export() once its options are checked (albert-export calls the two halves: a usage error exits 2)."""
    started = time.perf_counter()
    if options.task is None:
        options = options.for_task(detect_task(path_or_hub_id, log))
    if options.engine == "tensorrt":
        import_tensorrt()
    writer = BundleWriter(options.output_dir or default_output_dir(options.task, options.precision), options.overwrite)
    repository = RepositoryWriter(options.triton, writer.output, backend=options.triton_backend or "onnxruntime",
                                  overwrite=options.overwrite) if options.triton else None
    if options.precision == "int8":
        load_examples(options.calibration_data)  # a file that is empty or not text fails now, not after tracing
    checkpoint = resolve_checkpoint(path_or_hub_id)
    model, tokenizer, settings = reference_and_tokenizer(checkpoint, options, log)
    profile = engine_profile(options, model.config.max_position_embeddings)
    graph, passes = optimized(traced(model, options, log), options.optimize, log)
    # precision last, after any graph optimization: fp16 (mixed) or calibrated INT8 QDQ
    graph, precision_extra, calibration_table = graph_at_precision(
        graph, options.precision, task=options.task, tokenizer=tokenizer, layers=options.layers,
        vocab_size=model.config.vocab_size, calibration_data=options.calibration_data,
        calibration_method=options.calibration_method, calibration_samples=options.calibration_samples, log=log,
        max_length=min(settings.max_length, CALIBRATION_MAX_LENGTH))
    if options.precision == "fp32":  # the tied decoder reads the embedding table through a view: held once in memory
        precision_extra = {**precision_extra, "decoder_view": view_tied_decoders(graph)}
    outputs, stats = output_specs(options, graph), graph_stats(graph, model)
    log(f"assembled {options.layers} graph: {stats['nodes']} nodes, {stats['initializers']} initializers, "
        f"{stats['tensor_bytes'] / stats['parameter_bytes']:.3f} x the parameter bytes")
    with writer as bundle, repository or contextlib.nullcontext():
        files = save_model(graph, bundle.path, options.external_data_threshold)
        del graph  # validation and the engine build read model.onnx; the proto's memory goes back now
        sizes = {"model_bytes": sum(file.stat().st_size for file in files)}
        tokenizer.save(str(bundle.path / TOKENIZER))
        write_tokenizer_files(checkpoint, bundle.path, settings, max_length=settings.max_length)
        model.config.save(bundle.path)
        if calibration_table is not None:
            calibration_table.save(bundle.path)
        validation = (validated(bundle.path, model, options, log, precision_extra.get("accuracy_vs_fp32"))
                      if options.validate else None)
        if options.ort_format:
            sizes["ort_model_bytes"] = ort_model_bytes(bundle.path, sizes["model_bytes"], log)
        engine = built_engine(bundle.path, profile, log) if profile is not None else None
        extra = {**precision_extra, "optimize": {"profile": options.optimize, "passes": passes},
                 "graph": {**stats, **sizes}}
        path = bundle.commit(manifest_for(options, settings, outputs, validation, engine, extra), repository)
    log(f"wrote {path} in {time.perf_counter() - started:.1f} s")
    if repository is not None:
        log(f"wrote the Triton model repository {repository.target} ({', '.join(repository.models)})")
    return path


def reference_and_tokenizer(checkpoint: Path, options: ExportOptions, log: Callable[[str], None]):
    """(PyTorch reference model, tokenizer, its settings capped at the model's positions)."""
    with stage("loaded", log) as done, warnings.catch_warnings():
        if checkpoint == default_model_dir():  # a pretraining checkpoint: the heads a task leaves out are expected
            warnings.simplefilter("ignore", UnusedWeightsWarning)
        model = reference_from_checkpoint(checkpoint, options.task, output_hidden_states=options.output_hidden_states,
                                          output_attentions=options.output_attentions)
        tokenizer, settings = tokenizer_from_pretrained(checkpoint)
        settings = check_tokenizer_fits(tokenizer, settings, model.config, options.task)
        done(f"{checkpoint} for {options.task}")
    return model, tokenizer, settings


def engine_profile(options: ExportOptions, max_positions: int) -> ShapeProfile | None:
    """TensorRT's optimization profile: --shapes within the model's positions, else the default one; None
    without --engine tensorrt."""
    if options.engine != "tensorrt":
        return None
    if options.profile is None:
        return default_profile(len(options.input_dims), max_positions)
    return fitting_positions(options.profile, max_positions, options.shapes)


def traced(model: AlbertForTask, options: ExportOptions, log: Callable[[str], None]) -> onnx.ModelProto:
    """The reference model traced to ONNX (embeddings, layer groups, head) in the options' layers mode and opset."""
    with stage("traced", log) as done:
        graph = onnx_from_reference(model, options.layers, options.opset, options.left_out)
        done(f"embeddings, {model.config.num_hidden_groups} layer group(s) and the head at opset {options.opset}")
    return graph


def optimized(graph: onnx.ModelProto, profile: str, log: Callable[[str], None]) -> tuple[onnx.ModelProto, dict]:
    """(graph after the profile's passes, the passes' report); the graph as it is for profile none."""
    if profile == "none":
        return graph, {}
    with stage(f"optimized ({profile}):", log) as done:
        graph, report = optimize_graph(graph, profile)
        fused = {name: counts["fused"] for name, counts in report.items() if counts.get("fused")}
        done(", ".join(f"{name} x{n}" for name, n in fused.items()) or "nothing fused")
    return graph, report


def output_specs(options: ExportOptions, graph: onnx.ModelProto) -> list[TensorSpec]:
    """The task's outputs this bundle has, then hidden_states / attentions as the graph declares them (layer
    counts fixed, the rest symbolic)."""
    spec = TASKS[options.task]
    return [TensorSpec(name, "float32", list(dims)) for name, dims in zip(spec.outputs, spec.output_dims)
            if name not in options.left_out] + [
        TensorSpec(output.name, "float32", dims_of(output)) for output in graph.graph.output
        if output.name in OPTIONAL_OUTPUTS]


def validated(bundle: Path, model: AlbertForTask, options: ExportOptions, log: Callable[[str], None],
              accuracy: dict | None = None) -> Validation:
    """Against the PyTorch reference within atol; INT8 (accuracy: its report against fp32 on held-out examples)
    also gated on the task's top-1 agreement."""
    with stage("validated", log) as done:
        validation = validate_onnx(bundle / MODEL, model, options.task, precision=options.precision,
                                   atol=options.atol, progress=bar)
        worst = ", ".join(f"{name} {diff:.2g}" for name, diff in validation.max_abs_diff.items())
        if accuracy is not None:
            validation = validate_agreement(accuracy, options.task, validation, options.min_agreement)
            worst += "".join(f", top-1 {name} {share:.1%} (>= {validation.min_agreement[name]:.0%})"
                             for name, share in validation.agreement.items())
        done(f"on {len(validation.shapes)} shapes against the PyTorch reference (onnxruntime CPU): "
             f"max abs diff {worst}")
    return validation


def ort_model_bytes(bundle: Path, model_bytes: int, log: Callable[[str], None]) -> int:
    """Write model.ort and its required operators config into the bundle; model.ort's size (logged against
    model.onnx's)."""
    ort_model, _ = ort_from_onnx(bundle / MODEL, bundle)
    size = ort_model.stat().st_size
    log(f"wrote {ort_model.name} ({size / model_bytes:.3f} x model.onnx) and its required operators")
    return size


def built_engine(bundle: Path, profile: ShapeProfile, log: Callable[[str], None]) -> EngineInfo:
    """Build the TensorRT engine of the bundle's model.onnx for `profile` and write it into the bundle; its info."""
    with stage(f"built {ENGINE}", log) as done:
        plan, info = engine_from_onnx(bundle / MODEL, profile, log=log)
        (bundle / ENGINE).write_bytes(plan)
        done(f"({len(plan) / 1e6:.1f} MB) for compute capabilities {', '.join(info.compute_capabilities)}")
    return info


def manifest_for(options: ExportOptions, tokenizer: TokenizerSettings, outputs: list[TensorSpec],
                 validation: Validation | None, engine: EngineInfo | None, extra: dict) -> Manifest:
    """The manifest of what the stages produced; its files are checksummed by the writer's commit."""
    producer = {"name": "albert-export", "version": albert_version(), "torch": torch.__version__,
                "onnx": onnx.__version__}
    inputs = [TensorSpec(name, "int64", list(options.input_dims)) for name in INPUT_NAMES]
    return Manifest(task=options.task, layers=options.layers, precision=options.precision, opset=options.opset,
                    inputs=inputs, outputs=outputs, tokenizer=tokenizer, files={}, producer=producer,
                    validation=validation, optimize=options.optimize, engine=engine, extra=extra)
