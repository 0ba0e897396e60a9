"""A Triton Inference Server model repository from a bundle: `albert-export ... --triton DIR [--triton-backend B]`.

--triton-backend onnxruntime (default) and openvino, an ensemble around Triton's own model backend:
  NAME-onnx/        platform onnxruntime_onnx (openvino: NAME-openvino/, backend openvino, model.onnx);
                    1/ holds the whole bundle (model.onnx + what the runtime reads)
  NAME-trt/         platform tensorrt_plan, 1/engine.plan (only when the bundle has an engine)
  NAME-preprocess/  Python backend (serving/triton_model.py): HF Inference API JSON -> token tensors
  NAME-postprocess/ Python backend: the request and the model's outputs -> the pipeline's answer as JSON
  NAME/             ensemble: REQUEST (string) -> preprocess -> model -> postprocess -> RESPONSE (string)
--triton-backend python, one model:
  NAME/             Python backend, stage "pipeline": REQUEST -> the runtime's stages (preprocess, forward on the
                    runtime's onnxruntime backend, postprocess) -> RESPONSE; dynamic batching of requests, whose
                    windows share one forward; 1/bundle/ holds the bundle

NAME is the bundle directory's name, as albert-serve names it, checked against Triton's naming rules (MODEL_NAME).
The repository is written into a hidden temporary sibling of DIR and renamed into place (a new DIR at once; into
an existing DIR model by model, the ensemble last), at the bundle's own commit, so an export leaves both or neither.
Every config.pbtxt starts with MARKER: --overwrite replaces only models that carry it.

The model configs take their tensor names, dtypes
and dims from model.onnx itself (the batch axis becomes max_batch_size, so dynamic batching can combine
requests); outputs whose first axis is not the batch (hidden_states, attentions) are left out of the config.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import onnx

from graphs.nodes import dims_of
from runtime.bundle import ENGINE, MODEL, load_bundle

from .bundle_writer import MARKER as PARTIAL, current_umask, marker_text, signals_deferred, sweep_stale_siblings
from .errors import ExportError

TRITON_TYPES = {
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}
BATCH_DIMS = ("batch", "batch_size")
BACKENDS = ("onnxruntime", "openvino", "python")
MARKER = "# written by albert-export"  # config.pbtxt's first line (a protobuf text-format comment)
# Triton names a model by its folder, and names go into config.pbtxt as quoted strings: letters, digits, _ . -
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
PYTHON_MAX_BATCH_SIZE = 16  # requests per execute(); their windows share forward()'s batches


class TritonError(ExportError, ValueError):
    """The --triton repository cannot be written: its folder, the bundle's name or the model refuse it."""


@dataclass(frozen=True)
class Tensor:
    """An input or output as config.pbtxt declares it: name, Triton data type, dims."""
    name: str
    data_type: str
    dims: tuple[int, ...]  # without the batch axis; -1 for a dynamic axis

    def pbtxt(self) -> str:
        """Its config.pbtxt entry, on one line."""
        return f'  {{ name: "{self.name}" data_type: {self.data_type} dims: [ {", ".join(map(str, self.dims))} ] }}'


def model_tensors(model_path: Path) -> tuple[list[Tensor], list[Tensor], list[str]]:
    """(inputs, outputs, names of outputs left out) of an ONNX model, batch axis dropped."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def tensors(values, kind: str) -> tuple[list[Tensor], list[str]]:
        kept, left_out = [], []
        for value in values:
            if value.name in initializers:
                continue
            tensor_type = value.type.tensor_type
            dims = [-1 if dim is None else dim for dim in dims_of(value)]  # Triton's unknown dim is -1
            if not dims or dims[0] not in BATCH_DIMS:
                left_out.append(value.name)
                continue
            if tensor_type.elem_type not in TRITON_TYPES:
                raise TritonError(f"{kind} {value.name} has an ONNX type Triton configs here do not map "
                                  f"({onnx.TensorProto.DataType.Name(tensor_type.elem_type)})")
            kept.append(Tensor(value.name, TRITON_TYPES[tensor_type.elem_type],
                               tuple(d if isinstance(d, int) else -1 for d in dims[1:])))
        return kept, left_out

    inputs, inputs_left_out = tensors(graph.input, "input")
    if inputs_left_out:
        raise TritonError(f"inputs {inputs_left_out} have no leading batch axis; Triton cannot batch this model")
    outputs, left_out = tensors(graph.output, "output")
    return inputs, outputs, left_out


def model_config(name: str, platform: str, inputs: list[Tensor], outputs: list[Tensor], *, max_batch_size: int,
                 max_queue_delay_us: int, instances: int, kind: str, extra: str = "") -> str:
    """config.pbtxt of a model Triton batches dynamically (onnxruntime, openvino, TensorRT), `extra` appended."""
    return "\n".join([
        MARKER,
        f'name: "{name}"',
        f'platform: "{platform}"' if platform != "openvino" else 'backend: "openvino"',
        f"max_batch_size: {max_batch_size}",
        "input [", ",\n".join(t.pbtxt() for t in inputs), "]",
        "output [", ",\n".join(t.pbtxt() for t in outputs), "]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}",
        f"instance_group [ {{ count: {instances} kind: {kind} }} ]",
        *([extra] if extra else []),
        "",
    ])


def python_config(name: str, stage: str, inputs: list[Tensor], outputs: list[Tensor], bundle: str,
                  instances: int) -> str:
    """config.pbtxt of a Python-backend stage (`stage`: preprocess or postprocess) reading the bundle at `bundle`."""
    def full(t: Tensor) -> Tensor:  # max_batch_size 0: the batch axis is part of dims
        return Tensor(t.name, t.data_type, (-1, *t.dims)) if t.name not in ("REQUEST", "RESPONSE") else t

    return "\n".join([
        MARKER,
        f'name: "{name}"',
        'backend: "python"',
        "max_batch_size: 0",
        "input [", ",\n".join(full(t).pbtxt() for t in inputs), "]",
        "output [", ",\n".join(full(t).pbtxt() for t in outputs), "]",
        f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]",
        "parameters [",
        f'  {{ key: "stage" value: {{ string_value: "{stage}" }} }},',
        f'  {{ key: "bundle" value: {{ string_value: "{bundle}" }} }}',
        "]",
        "",
    ])


def ensemble_config(name: str, steps: list[tuple[str, list[str], list[str]]]) -> str:
    """steps: (model, its inputs, its outputs); every tensor keeps its name across the ensemble."""
    def mapping(kind: str, names: list[str]) -> str:
        return " ".join(f'{kind} {{ key: "{n}" value: "{n}" }}' for n in names)

    lines = [MARKER, f'name: "{name}"', 'platform: "ensemble"', "max_batch_size: 0",
             "input [", '  { name: "REQUEST" data_type: TYPE_STRING dims: [ 1 ] }', "]",
             "output [", '  { name: "RESPONSE" data_type: TYPE_STRING dims: [ 1 ] }', "]",
             "ensemble_scheduling {", "  step ["]
    lines.append(",\n".join(
        f'    {{ model_name: "{model}" model_version: -1 {mapping("input_map", ins)} {mapping("output_map", outs)} }}'
        for model, ins, outs in steps
    ))
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def pipeline_config(name: str, bundle: str, *, max_queue_delay_us: int, instances: int) -> str:
    """--triton-backend python: the whole pipeline as one model; Triton batches requests, forward() their windows."""
    return "\n".join([
        MARKER,
        f'name: "{name}"',
        'backend: "python"',
        f"max_batch_size: {PYTHON_MAX_BATCH_SIZE}",
        "input [", '  { name: "REQUEST" data_type: TYPE_STRING dims: [ 1 ] }', "]",
        "output [", '  { name: "RESPONSE" data_type: TYPE_STRING dims: [ 1 ] }', "]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}",
        f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]",
        "parameters [",
        '  { key: "stage" value: { string_value: "pipeline" } },',
        '  { key: "backend" value: { string_value: "onnxruntime" } },',
        f'  {{ key: "batch_size" value: {{ string_value: "{PYTHON_MAX_BATCH_SIZE}" }} }},',
        f'  {{ key: "bundle" value: {{ string_value: "{bundle}" }} }}',
        "]",
        "",
    ])


def place(source: Path, target: Path) -> None:
    """A hard link where the file system allows it (the weights stay once on disk), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def model_names(name: str, backend: str, has_engine: bool = False) -> dict[str, str]:
    """The repository's models for a bundle named `name`, the ensemble (or the python model) last."""
    if backend == "python":
        return {"python": name}
    names = {"model": f"{name}-onnx" if backend == "onnxruntime" else f"{name}-openvino",
             "pre": f"{name}-preprocess", "post": f"{name}-postprocess"}
    if has_engine:
        names["trt"] = f"{name}-trt"
    names["ensemble"] = name
    return names


def check_model_name(name: str) -> str:
    """`name` where it can name a Triton model; TritonError otherwise."""
    if not MODEL_NAME.match(name):
        raise TritonError(f"the bundle's name {name!r} cannot name a Triton model (it names the models and goes into "
                          "config.pbtxt): use letters, digits, _ . - only, starting with a letter, digit or _, at "
                          "most 128 characters; rename --output")
    return name


def is_ours(model_dir: Path) -> bool:
    """A model folder albert-export wrote: its config.pbtxt starts with MARKER."""
    try:
        with open(model_dir / "config.pbtxt", encoding="utf-8") as config:
            return config.readline().rstrip("\n") == MARKER
    except (OSError, UnicodeDecodeError):
        return False


class RepositoryWriter:
    """The --triton repository of one export, checked before any tracing (check), written beside the bundle once
    it is complete (prepare), renamed into place with it (commit); `with` removes what was not committed."""

    def __init__(self, directory: str | Path, bundle_output: str | Path, *, backend: str = "onnxruntime",
                 overwrite: bool = False, max_batch_size: int = 32, max_queue_delay_us: int = 5000,
                 instances: int = 1, python_instances: int = 2):
        if backend not in BACKENDS:
            raise TritonError(f"--triton-backend {backend!r} is not one of {', '.join(BACKENDS)}")
        self.shown = str(directory)
        self.target = Path(directory).expanduser().absolute().resolve()
        self.name = check_model_name(Path(bundle_output).expanduser().absolute().resolve().name)
        self.bundle_target = Path(bundle_output).expanduser().absolute().resolve()
        self.backend, self.overwrite = backend, overwrite
        self.options = dict(max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us, instances=instances)
        self.python_instances = python_instances
        self.staging: Path | None = None
        self.models: list[str] = []
        self.committed = False
        self.check(model_names(self.name, backend, has_engine=True))

    def refuse(self, why: str) -> None:
        """Raise TritonError: the --triton directory, and `why` it cannot be used."""
        raise TritonError(f"--triton {self.shown} {why}; choose another --triton directory")

    def check(self, names: dict[str, str]) -> None:
        """Refuse a --triton target that cannot hold a repository, or has models `names` that --overwrite may not
        replace."""
        target, bundle = self.target, self.bundle_target
        if target == bundle or bundle in target.parents:
            self.refuse("is the bundle's own folder or inside it")
        if target == bundle.parent:
            self.refuse("is the bundle's parent: the bundle would sit among the repository's models")
        if target == Path(target.anchor) or Path("/proc") in (target, *target.parents):
            self.refuse("is not a place for a model repository")
        if target.exists() and not target.is_dir():
            self.refuse("exists and is not a directory")
        for parent in target.parents:
            if parent.exists():
                if not parent.is_dir():
                    self.refuse(f"cannot be created: {parent} is a file")
                try:
                    os.rmdir(tempfile.mkdtemp(prefix=".albert-export-probe-", dir=parent))
                except OSError as exc:
                    self.refuse(f"cannot be written: {parent} is not writable ({exc.strerror})")
                break
        taken = [n for n in names.values() if (target / n).exists() or (target / n).is_symlink()]
        if taken and not self.overwrite:
            self.refuse(f"already has model(s) {', '.join(taken)}; remove them, or pass --overwrite to replace "
                        "models albert-export wrote")
        foreign = [n for n in taken if not is_ours(target / n) or (target / n).is_symlink()]
        if foreign:
            self.refuse(f"already has model(s) {', '.join(foreign)} that albert-export did not write; nothing was "
                        "deleted (--overwrite replaces only models whose config.pbtxt albert-export wrote)")

    def __enter__(self) -> "RepositoryWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.staging is not None and not self.committed:
            shutil.rmtree(self.staging, ignore_errors=True)  # made by mkdtemp for this export: all ours

    def prepare(self, bundle_dir: str | Path) -> None:
        """Write every model into a hidden temporary sibling of the repository (the bundle must be complete)."""
        bundle = load_bundle(bundle_dir)
        names = model_names(self.name, self.backend, has_engine=ENGINE in bundle.manifest.files)
        self.check(names)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_siblings(self.target.parent)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-{os.getpid()}-",
                                             dir=self.target.parent))
        (self.staging / PARTIAL).write_text(marker_text(os.getpid()), encoding="utf-8")
        write_models(bundle, self.staging, names, self.backend, self.options, self.python_instances)
        self.models = list(names.values())

    def commit(self) -> Path:
        """Rename the models into place: a new repository in one rename; into an existing one model by model, the
        ensemble last, each model it replaces (--overwrite) moved aside first and put back if a rename fails."""
        (self.staging / PARTIAL).unlink()
        os.chmod(self.staging, 0o777 & ~current_umask())
        with signals_deferred():
            if not self.target.exists():
                os.replace(self.staging, self.target)
                self.committed = True
                return self.target
            old = self.staging / ".old"
            old.mkdir()
            moved: list[str] = []
            try:
                for model in self.models:
                    if (self.target / model).exists() or (self.target / model).is_symlink():
                        os.replace(self.target / model, old / model)
                    moved.append(model)
                    os.replace(self.staging / model, self.target / model)
            except BaseException:
                for model in reversed(moved):
                    if (old / model).exists():
                        if (self.target / model).exists():
                            shutil.rmtree(self.target / model, ignore_errors=True)
                        os.replace(old / model, self.target / model)
                    elif (self.target / model).exists():
                        shutil.rmtree(self.target / model, ignore_errors=True)
                raise
            self.committed = True
        shutil.rmtree(self.staging, ignore_errors=True)
        return self.target


def write_models(bundle, repository: Path, names: dict[str, str], backend: str, options: dict,
                 python_instances: int) -> None:
    """Write `bundle`'s models into `repository`: the model (and TensorRT engine), the pre- and postprocess stages and
    their ensemble; or, for the python backend, one model."""
    def bundle_copy(version: Path) -> None:
        version.mkdir(parents=True)
        for file in bundle.manifest.files:
            place(bundle.root / file, version / file)
        place(bundle.root / "manifest.json", version / "manifest.json")

    source = resources.files("serving").joinpath("triton_model.py").read_text()
    if backend == "python":
        name = names["python"]
        bundle_copy(repository / name / "1" / "bundle")
        (repository / name / "1" / "model.py").write_text(source)
        (repository / name / "config.pbtxt").write_text(pipeline_config(
            name, "1/bundle", max_queue_delay_us=options["max_queue_delay_us"], instances=python_instances))
        return

    inputs, outputs, _ = model_tensors(bundle.root / MODEL)
    model_dir = repository / names["model"]
    bundle_copy(model_dir / "1")
    if backend == "onnxruntime":
        config = model_config(names["model"], "onnxruntime_onnx", inputs, outputs, kind="KIND_CPU", **options)
    else:  # Triton's OpenVINO backend reads model.onnx itself; its dims stay dynamic as exported
        config = model_config(names["model"], "openvino", inputs, outputs, kind="KIND_CPU", extra="\n".join([
            f'default_model_filename: "{MODEL}"',
            "parameters [",
            '  { key: "PERFORMANCE_HINT" value: { string_value: "LATENCY" } },',
            '  { key: "NUM_STREAMS" value: { string_value: "1" } }',
            "]"]), **options)
    (model_dir / "config.pbtxt").write_text(config)
    if "trt" in names:
        (repository / names["trt"] / "1").mkdir(parents=True)
        place(bundle.root / ENGINE, repository / names["trt"] / "1" / ENGINE)
        (repository / names["trt"] / "config.pbtxt").write_text(model_config(
            names["trt"], "tensorrt_plan", inputs, outputs, kind="KIND_GPU",
            extra=f'default_model_filename: "{ENGINE}"', **options))

    request = Tensor("REQUEST", "TYPE_STRING", (1,))
    response = Tensor("RESPONSE", "TYPE_STRING", (1,))
    bundle_path = f"../{names['model']}/1"
    for stage, key, stage_inputs, stage_outputs in (
        ("preprocess", "pre", [request], inputs),
        ("postprocess", "post", [request, *outputs], [response]),
    ):
        (repository / names[key] / "1").mkdir(parents=True)
        (repository / names[key] / "1" / "model.py").write_text(source)
        (repository / names[key] / "config.pbtxt").write_text(
            python_config(names[key], stage, stage_inputs, stage_outputs, bundle_path, python_instances))

    input_names, output_names = [t.name for t in inputs], [t.name for t in outputs]
    steps = [
        (names["pre"], ["REQUEST"], input_names),
        (names.get("trt", names["model"]), input_names, output_names),
        (names["post"], ["REQUEST", *output_names], ["RESPONSE"]),
    ]
    (repository / names["ensemble"] / "1").mkdir(parents=True)  # an ensemble has no files; Triton wants the folder
    (repository / names["ensemble"] / "config.pbtxt").write_text(ensemble_config(names["ensemble"], steps))


def write_repository(bundle_dir: str | Path, directory: str | Path, *, backend: str = "onnxruntime",
                     overwrite: bool = False, **options) -> Path:
    """The models of a complete bundle written into directory (created if need be), atomically; returns it.
    options: max_batch_size (32), max_queue_delay_us (5000), instances (1), python_instances (2)."""
    with RepositoryWriter(directory, bundle_dir, backend=backend, overwrite=overwrite, **options) as writer:
        writer.prepare(bundle_dir)
        return writer.commit()
