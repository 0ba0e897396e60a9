"""PyTorch reference -> bundle: trace the three pieces, assemble (unrolled | loop), validate, write.

The pieces are traced with the TorchScript exporter (torch.onnx.export(dynamo=False)): plain ONNX ops with
dynamic axes, initializers named after the parameters, under a second per piece. It writes opsets up to 20;
a newer opset (up to the newest onnxruntime runs) is reached by converting each traced piece with
onnx.version_converter before assembly. (The dynamo exporter needs opset >= 18 and is slower to trace;
nothing here needs it.)
"""
from __future__ import annotations

import functools
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import torch
from onnx import version_converter
from torch import nn

from calibration import load_examples
from graphs.assemble import ATTENTIONS, LAYER_MODES, Pieces, assemble, dims_of, name_initializers
from graphs.pipeline import PROFILES
from graphs.pipeline import optimize as optimize_graph
from graphs.size import array_digest, node_count, stored_tensors, tensor_nbytes
from runtime.bundle import ENGINE, MODEL, TOKENIZER, Manifest, TensorSpec
from runtime.taskspec import (
    BATCH, INPUT_NAMES, OPTIONAL_OUTPUTS, SEQUENCE, TASK_OUTPUTS_ON_REQUEST, TASKS, canonical_task, dynamic_axes,
    input_dims,
)

from .bundle_writer import EXTERNAL_DATA_THRESHOLD, BundleWriter, check_output_dir, save_model
from .checkpoint import from_pretrained, load_config, resolve_checkpoint
from .config import task_from_architectures
from .engine import ENGINES, default_profile, engine_from_onnx, import_tensorrt, parse_shapes
from .modeling import AlbertForTask
from .opsets import DEFAULT_OPSET, MIN_OPSET, TRACE_MAX_OPSET
from .ort_format import ort_from_onnx
from .progress import bar, log, stage
from .precision import DEFAULT_METHOD, DEFAULT_SAMPLES, graph_at_precision, precision_from_options
from .tokenizer import check_tokenizer_fits, tokenizer_from_pretrained
from .tokenizer_files import write_tokenizer_files
from .tolerances import tolerance_for
from .validate import validate_onnx

PRECISION = "fp32"
DEFAULT_MODEL_TASK = "fill-mask"  # --task left out without --model
TRACE_SHAPE = (2, 5)  # batch, sequence: distinct sizes above 1 so nothing is specialized to a constant


class ExportOptionError(ValueError):
    """An export option with a value this exporter cannot honour."""


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
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset():
        raise ExportOptionError(
            f"opset {opset!r} is not supported; choose {MIN_OPSET}..{max_opset()} "
            f"(what this exporter and the installed onnxruntime support; default {DEFAULT_OPSET})"
        )
    return opset


def check_layers(layers: str) -> str:
    if layers not in LAYER_MODES:
        raise ExportOptionError(f"--layers {layers!r} is not a layers mode; choose {' or '.join(LAYER_MODES)}")
    return layers


class EmbeddingsPiece(nn.Module):
    def __init__(self, model: AlbertForTask):
        super().__init__()
        self.albert = model.albert

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.albert.embed(input_ids, attention_mask, token_type_ids)  # (B, S, H), (B, 1, 1, S)


class LayerGroupPiece(nn.Module):
    def __init__(self, group: nn.Module, output_attentions: bool):
        super().__init__()
        self.group, self.output_attentions = group, output_attentions

    def forward(self, hidden, attention_bias):
        if self.output_attentions:
            return self.group.with_attentions(hidden, attention_bias)  # (B, S, H), (I, B, N, S, S)
        return self.group(hidden, attention_bias)


class HeadPiece(nn.Module):
    def __init__(self, model: AlbertForTask, outputs: list[str]):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, hidden):
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
    # multiple choice: the head scores (B*C, 1); assembly reshapes them to the task's (B, C)
    dims = dict(zip(spec.outputs, spec.output_dims))
    output_axes = {name: dynamic_axes(dims[name]) if name in dims and not spec.multiple_choice else {0: BATCH}
                   for name in head_outputs}
    head = onnx_from_torch(HeadPiece(model, head_outputs).eval(), (hidden,), ["hidden"], head_outputs,
                           {"hidden": tokens, **output_axes}, opset)
    model.eval()  # the exporter restores each wrapper's mode, recursively; a reference must stay in eval
    return Pieces(embed, groups, head, [config.group_of_layer(i) for i in range(config.num_hidden_layers)],
                  multiple_choice=spec.multiple_choice, output_hidden_states=output_hidden_states,
                  output_attentions=output_attentions)


def parameter_names_by_digest(model: nn.Module) -> dict[str, str]:
    """Content digest -> checkpoint parameter name, and of each matrix's transpose -> name + '.T'."""
    names: dict[str, str] = {}
    for name, parameter in model.named_parameters():  # tied parameters are listed once
        array = parameter.detach().cpu().numpy()
        names.setdefault(array_digest(array), name)
        if array.ndim == 2:
            names.setdefault(array_digest(array.T), name + ".T")
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
    from . import __version__

    return __version__


def manifest_for(task: str, layers: str, opset: int, tokenizer_settings, outputs: list[str] | None = None) -> Manifest:
    spec = TASKS[task]
    outputs = outputs or spec.outputs
    return Manifest(
        task=task,
        layers=layers,
        precision=PRECISION,
        opset=opset,
        inputs=[TensorSpec(name, "int64", list(input_dims(task))) for name in INPUT_NAMES],
        outputs=[TensorSpec(name, "float32", list(dims)) for name, dims in zip(spec.outputs, spec.output_dims)
                 if name in outputs],
        tokenizer=tokenizer_settings,
        files={},
        producer={"name": "albert-export", "version": albert_version(), "torch": torch.__version__,
                  "onnx": onnx.__version__},
    )


def optional_output_specs(graph: onnx.ModelProto) -> list[TensorSpec]:
    """hidden_states / attentions as the graph declares them (layer counts fixed, the rest symbolic)."""
    return [TensorSpec(output.name, "float32", dims_of(output)) for output in graph.graph.output
            if output.name in OPTIONAL_OUTPUTS]


def check_engine(engine: str, shapes: str | None, rank: int, optimize: str = "none") -> None:
    """Before any tracing: the engine is known, --shapes goes with TensorRT and parses, the graph will be one
    TensorRT can parse."""
    if engine not in ENGINES:
        raise ExportOptionError(f"--engine {engine!r} is not an engine; choose {' or '.join(ENGINES)}")
    if engine != "tensorrt":
        if shapes is not None:
            raise ExportOptionError("--shapes sets the TensorRT optimization profile; add --engine tensorrt")
        return
    if optimize.startswith("onnxruntime"):
        # TensorRT's parser reads com.microsoft Attention as ONNX's own Attention op and refuses it
        raise ExportOptionError(f"--optimize {optimize} writes onnxruntime-only ops (com.microsoft Attention, "
                                "FastGelu) that TensorRT cannot build; use --optimize portable or none with "
                                "--engine tensorrt (TensorRT fuses attention itself)")
    if shapes is not None:
        parse_shapes(shapes, rank=rank)


def check_options(task: str | None, *, layers: str = "unrolled", opset: int = DEFAULT_OPSET, optimize: str = "none",
                  fp16: bool = False, int8: bool = False, calibration_data: str | Path | None = None,
                  calibration_method: str = DEFAULT_METHOD, calibration_samples: int = DEFAULT_SAMPLES,
                  engine: str = "onnxruntime", shapes: str | None = None, atol: float | None = None,
                  pooler_output: bool = False, **_: object) -> tuple[str | None, str]:
    """Every option alone and in combination, before anything is read or traced: (canonical task, precision).
    Whatever this raises is a usage error (albert-export exits 2). task None: not known yet (auto-detected)."""
    task = canonical_task(task) if task is not None else None
    check_layers(layers)
    check_opset(opset)
    if optimize not in PROFILES:
        raise ExportOptionError(f"unknown optimization profile {optimize!r}; use one of {', '.join(PROFILES)}")
    precision = precision_from_options(fp16, int8, calibration_data, calibration_method, calibration_samples)
    tolerance_for(precision, "*", atol)
    if atol is not None and not math.isfinite(atol):
        raise ExportOptionError(f"--atol must be a finite number, got {atol!r}; leave it out for the precision's "
                                "table, or pass --no-validate to skip validation")
    rank = len(input_dims(task)) if task is not None else 2
    check_engine(engine, shapes, rank=rank, optimize=optimize)
    if pooler_output and task not in (None, "feature-extraction"):
        raise ExportOptionError(f"--pooler-output adds feature-extraction's pooler_output; the {task} bundle has "
                                "no such output (leave the flag out, or use --task feature-extraction)")
    return task, precision


def detect_task(path_or_hub_id: str | Path | None, log: Callable[[str], None]) -> str:
    if path_or_hub_id is None:
        task, reason = DEFAULT_MODEL_TASK, "the embedded default model"
    else:
        checkpoint = resolve_checkpoint(path_or_hub_id)
        config = load_config(checkpoint)
        task = task_from_architectures(config, checkpoint)
        reason = f"{checkpoint / 'config.json'} names {', '.join(config.extra['architectures'])}"
    log(f"task: {task} ({reason}; --task overrides)")
    return task


def default_output_dir(task: str, precision: str = PRECISION) -> Path:
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
) -> Path:
    """What `albert-export` does: checkpoint -> validated bundle directory; returns its path.

    path_or_hub_id None is the embedded default model; task None is the task of the Albert* architecture its
    config.json names (fill-mask for the embedded model, which names none: its MLM head answers seed-style
    `[MASK]` lines); output_dir None is ./albert-<task>-<precision>. Raises
    (before any tracing) UnknownTaskError, ExportOptionError, OutputExistsError, CheckpointError, ConfigError,
    TokenizerError; after it ValidationError. Nothing is left at output_dir unless the bundle is complete.
    """
    started = time.perf_counter()
    checks = dict(layers=layers, opset=opset, optimize=optimize, fp16=fp16, int8=int8,
                  calibration_data=calibration_data, calibration_method=calibration_method,
                  calibration_samples=calibration_samples, engine=engine, shapes=shapes, atol=atol,
                  pooler_output=pooler_output)
    task, precision = check_options(task, **checks)
    if task is None:
        task, _ = check_options(detect_task(path_or_hub_id, log), **checks)  # the checks that need the task
    if engine == "tensorrt":
        import_tensorrt()
    output = check_output_dir(output_dir or default_output_dir(task, precision), overwrite)
    if precision == "int8":
        load_examples(calibration_data)  # a file that is empty or not text fails now, not after tracing
    checkpoint = resolve_checkpoint(path_or_hub_id)
    with stage("loaded", log) as done:
        model = from_pretrained(checkpoint, task, output_hidden_states=output_hidden_states,
                                output_attentions=output_attentions)
        tokenizer, tokenizer_settings = tokenizer_from_pretrained(checkpoint)
        tokenizer_settings = check_tokenizer_fits(tokenizer, tokenizer_settings, model.config, task)
        done(f"{checkpoint} for {task}")
    left_out = () if pooler_output else TASK_OUTPUTS_ON_REQUEST
    outputs = [name for name in TASKS[task].outputs if name not in left_out]
    with stage("traced", log) as done:
        graph = onnx_from_reference(model, layers, opset, left_out)
        done(f"embeddings, {model.config.num_hidden_groups} layer group(s) and the head at opset {opset}")
    optimize_report = {}
    if optimize != "none":
        with stage(f"optimized ({optimize}):", log) as done:
            graph, optimize_report = optimize_graph(graph, optimize)
            fused = {name: counts["fused"] for name, counts in optimize_report.items() if counts.get("fused")}
            done(", ".join(f"{name} x{n}" for name, n in fused.items()) or "nothing fused")
    # precision last, after any graph optimization: fp16 (mixed) or calibrated INT8 QDQ
    graph, precision_extra, calibration_table = graph_at_precision(
        graph, precision, task=task, tokenizer=tokenizer, layers=layers, vocab_size=model.config.vocab_size,
        calibration_data=calibration_data,
        calibration_method=calibration_method, calibration_samples=calibration_samples, log=log,
        max_length=min(tokenizer_settings.max_length, model.config.max_position_embeddings, 384))
    manifest = manifest_for(task, layers, opset, tokenizer_settings, outputs)
    manifest.outputs += optional_output_specs(graph)
    manifest.precision = precision
    manifest.extra.update(precision_extra)
    manifest.extra["optimize"] = {"profile": optimize, "passes": optimize_report}
    stats = manifest.extra["graph"] = graph_stats(graph, model)
    profile = None
    if engine == "tensorrt":
        rank, positions = len(input_dims(task)), model.config.max_position_embeddings
        profile = (parse_shapes(shapes, rank=rank, max_positions=positions) if shapes
                   else default_profile(rank, positions))
    log(f"assembled {layers} graph: {stats['nodes']} nodes, {stats['initializers']} initializers, "
        f"{stats['tensor_bytes'] / stats['parameter_bytes']:.3f} x the parameter bytes")
    with BundleWriter(output, overwrite) as bundle:
        files = save_model(graph, bundle.path, external_data_threshold)
        stats["model_bytes"] = sum(file.stat().st_size for file in files)
        del graph
        tokenizer.save(str(bundle.path / TOKENIZER))
        write_tokenizer_files(checkpoint, bundle.path, tokenizer_settings,
                              max_length=min(tokenizer_settings.max_length, model.config.max_position_embeddings))
        model.config.save(bundle.path)
        if calibration_table is not None:
            calibration_table.save(bundle.path)
        if validate:
            with stage("validated", log) as done:
                manifest.validation = validate_onnx(bundle.path / MODEL, model, task, precision=precision,
                                                    atol=atol, progress=bar)
                worst = ", ".join(f"{name} {diff:.2g}" for name, diff in manifest.validation.max_abs_diff.items())
                done(f"on {len(manifest.validation.shapes)} shapes against the PyTorch reference (onnxruntime CPU): "
                     f"max abs diff {worst}")
        if ort_format:
            ort_model, _ = ort_from_onnx(bundle.path / MODEL, bundle.path)
            stats["ort_model_bytes"] = ort_model.stat().st_size
            log(f"wrote {ort_model.name} ({stats['ort_model_bytes'] / stats['model_bytes']:.3f} x model.onnx) "
                "and its required operators")
        if profile is not None:
            with stage(f"built {ENGINE}", log) as done:
                plan, manifest.engine = engine_from_onnx(bundle.path / MODEL, profile, log=log)
                (bundle.path / ENGINE).write_bytes(plan)
                done(f"({len(plan) / 1e6:.1f} MB) for compute capabilities "
                     f"{', '.join(manifest.engine.compute_capabilities)}")
        path = bundle.commit(manifest)
    log(f"wrote {path} in {time.perf_counter() - started:.1f} s")
    return path

