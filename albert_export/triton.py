"""A Triton Inference Server model repository from a bundle: `albert-export ... --triton DIR`.

DIR/
  NAME-onnx/        platform onnxruntime_onnx; 1/ holds the whole bundle (model.onnx + what the runtime reads)
  NAME-trt/         platform tensorrt_plan, 1/engine.plan (only when the bundle has an engine)
  NAME-preprocess/  Python backend (serving/triton_model.py): HF Inference API JSON -> token tensors
  NAME-postprocess/ Python backend: the request and the model's outputs -> the pipeline's answer as JSON
  NAME/             ensemble: REQUEST (string) -> preprocess -> model -> postprocess -> RESPONSE (string)

NAME is the bundle directory's name, as albert-serve names it. The model configs take their tensor names, dtypes
and dims from model.onnx itself (the batch axis becomes max_batch_size, so dynamic batching can combine
requests); outputs whose first axis is not the batch (hidden_states, attentions) are left out of the config.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import onnx

from graphs.nodes import dims_of
from runtime.bundle import ENGINE, MODEL, load_bundle

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


class TritonError(ExportError, ValueError):
    pass


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str
    dims: tuple[int, ...]  # without the batch axis; -1 for a dynamic axis

    def pbtxt(self) -> str:
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
    return "\n".join([
        f'name: "{name}"',
        f'platform: "{platform}"',
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
    def full(t: Tensor) -> Tensor:  # max_batch_size 0: the batch axis is part of dims
        return Tensor(t.name, t.data_type, (-1, *t.dims)) if t.name not in ("REQUEST", "RESPONSE") else t

    return "\n".join([
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

    lines = [f'name: "{name}"', 'platform: "ensemble"', "max_batch_size: 0",
             "input [", '  { name: "REQUEST" data_type: TYPE_STRING dims: [ 1 ] }', "]",
             "output [", '  { name: "RESPONSE" data_type: TYPE_STRING dims: [ 1 ] }', "]",
             "ensemble_scheduling {", "  step ["]
    lines.append(",\n".join(
        f'    {{ model_name: "{model}" model_version: -1 {mapping("input_map", ins)} {mapping("output_map", outs)} }}'
        for model, ins, outs in steps
    ))
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def place(source: Path, target: Path) -> None:
    """A hard link where the file system allows it (the weights stay once on disk), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_repository(bundle_dir: str | Path, directory: str | Path, *, max_batch_size: int = 32,
                     max_queue_delay_us: int = 5000, instances: int = 1, python_instances: int = 2) -> Path:
    """Write NAME, NAME-onnx, NAME-preprocess, NAME-postprocess (and NAME-trt) into directory; returns it."""
    bundle = load_bundle(bundle_dir)
    name = bundle.root.resolve().name
    repository = Path(directory)
    has_engine = ENGINE in bundle.manifest.files
    names = {"ensemble": name, "onnx": f"{name}-onnx", "pre": f"{name}-preprocess", "post": f"{name}-postprocess"}
    if has_engine:
        names["trt"] = f"{name}-trt"
    taken = [n for n in names.values() if (repository / n).exists()]
    if taken:
        raise TritonError(f"{repository} already has model(s) {', '.join(taken)}; choose another --triton directory "
                          "or remove them")
    inputs, outputs, _ = model_tensors(bundle.root / MODEL)
    model = names.get("trt", names["onnx"])

    version = repository / names["onnx"] / "1"
    version.mkdir(parents=True)
    for file in bundle.manifest.files:
        place(bundle.root / file, version / file)
    place(bundle.root / "manifest.json", version / "manifest.json")
    options = dict(max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us, instances=instances)
    (repository / names["onnx"] / "config.pbtxt").write_text(
        model_config(names["onnx"], "onnxruntime_onnx", inputs, outputs, kind="KIND_CPU", **options))
    if has_engine:
        (repository / names["trt"] / "1").mkdir(parents=True)
        place(bundle.root / ENGINE, repository / names["trt"] / "1" / ENGINE)
        (repository / names["trt"] / "config.pbtxt").write_text(model_config(
            names["trt"], "tensorrt_plan", inputs, outputs, kind="KIND_GPU",
            extra=f'default_model_filename: "{ENGINE}"', **options))

    request = Tensor("REQUEST", "TYPE_STRING", (1,))
    response = Tensor("RESPONSE", "TYPE_STRING", (1,))
    source = resources.files("serving").joinpath("triton_model.py").read_text()
    bundle_path = f"../{names['onnx']}/1"
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
        (model, input_names, output_names),
        (names["post"], ["REQUEST", *output_names], ["RESPONSE"]),
    ]
    (repository / name).mkdir(parents=True)
    (repository / name / "1").mkdir()  # an ensemble has no files, but Triton wants its version folder
    (repository / name / "config.pbtxt").write_text(ensemble_config(name, steps))
    return repository
