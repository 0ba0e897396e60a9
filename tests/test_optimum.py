"""Bundles as optimum sees them: its validate_model_outputs (with transformers' model as the reference) passes on
every task optimum knows for ALBERT, and its ORTModelFor* classes load a bundle directory as it is and compute
what transformers computes, tokenized by AutoTokenizer from the same directory (truncating at the model's
length)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from optimum.exporters.onnx import validate_model_outputs
from optimum.exporters.onnx.model_configs import AlbertOnnxConfig
from optimum.exporters.tasks import TasksManager
from transformers import AutoTokenizer

from albert_export.cli import main as cli_main
from albert_export.exporter import export
from runtime.bundle import load_bundle
from runtime.taskspec import TASKS
from tests.export_helpers import hf_outputs, quiet, save_checkpoint

torch.set_num_threads(1)
OPTIMUM_TASKS = ["fill-mask", "text-classification", "token-classification", "question-answering", "multiple-choice",
                 "feature-extraction"]
ORT_CLASS = {"fill-mask": "ORTModelForMaskedLM", "text-classification": "ORTModelForSequenceClassification",
             "token-classification": "ORTModelForTokenClassification",
             "question-answering": "ORTModelForQuestionAnswering", "multiple-choice": "ORTModelForMultipleChoice",
             "feature-extraction": "ORTModelForFeatureExtraction"}
TEXTS = ["Plants create energy through photosynthesis.", "word " * 80]  # the second is longer than the model
PAIRS = ["Who makes energy?", "And what else?"]
FIXED = {"vocab": 1004, "labels": None, "hidden": 32}  # non-dynamic dims, as ints in model.onnx


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    made = {}

    def make(task: str, layers: str = "unrolled", **options):
        key = (task, layers, tuple(sorted(options.items())))
        if key not in made:
            root = tmp_path_factory.mktemp(task)
            hf_model = save_checkpoint(root / "checkpoint", task)
            bundle = export(root / "checkpoint", task, root / "albert-bundle", layers=layers, log=quiet, **options)
            made[key] = bundle, hf_model
        return made[key]

    return make


def graph_dims(values) -> dict[str, list]:
    return {value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] for value in values}


@pytest.mark.parametrize("task", OPTIMUM_TASKS)
def test_model_and_manifest_use_optimums_dimension_names(task, exported):
    bundle, hf_model = exported(task)
    graph = onnx.load(str(bundle / "model.onnx")).graph
    tokens = ["batch_size", "num_choices", "sequence_length"] if task == "multiple-choice" else [
        "batch_size", "sequence_length"]
    assert graph_dims(graph.input) == dict.fromkeys(("input_ids", "attention_mask", "token_type_ids"), tokens)
    fixed = {**FIXED, "labels": hf_model.config.num_labels}
    expected = {name: [fixed.get(dim, dim) for dim in dims] for name, dims in zip(TASKS[task].outputs,
                                                                                  TASKS[task].output_dims)}
    expected.pop("pooler_output", None)  # written only with --pooler-output
    assert graph_dims(graph.output) == expected
    manifest = load_bundle(bundle).manifest
    assert [spec.dims for spec in manifest.inputs] == [tokens] * 3
    assert {spec.name: spec.dims for spec in manifest.outputs} == {
        name: list(dims) for name, dims in zip(TASKS[task].outputs, TASKS[task].output_dims) if name in expected}


@pytest.mark.parametrize("task,layers", [(task, "unrolled") for task in OPTIMUM_TASKS]
                         + [("fill-mask", "loop"), ("multiple-choice", "loop")])
def test_optimum_validate_model_outputs_passes(task, layers, exported):
    bundle, hf_model = exported(task, layers)
    config = AlbertOnnxConfig(hf_model.config, task=task)
    validate_model_outputs(config, hf_model, bundle / "model.onnx", list(config.outputs), use_subprocess=False)


def test_pooler_output_is_an_option_because_the_validator_refuses_extra_outputs(exported):
    bundle, hf_model = exported("feature-extraction", pooler_output=True)
    assert [output.name for output in onnx.load(str(bundle / "model.onnx")).graph.output] == [
        "last_hidden_state", "pooler_output"]
    assert [spec.dims for spec in load_bundle(bundle).manifest.outputs] == [
        ["batch_size", "sequence_length", "hidden"], ["batch_size", "hidden"]]
    config = AlbertOnnxConfig(hf_model.config, task="feature-extraction")
    with pytest.raises(Exception, match="exact same outputs.*Difference: pooler_output"):
        validate_model_outputs(config, hf_model, bundle / "model.onnx", list(config.outputs), use_subprocess=False)


def test_pooler_output_and_hidden_states_are_each_listed_once(exported):
    bundle, _ = exported("feature-extraction", pooler_output=True, output_hidden_states=True)
    names = ["last_hidden_state", "pooler_output", "hidden_states"]
    assert [output.name for output in onnx.load(str(bundle / "model.onnx")).graph.output] == names
    assert [spec.name for spec in load_bundle(bundle).manifest.outputs] == names


def test_optimum_knows_every_task_but_pretraining():
    supported = set(TasksManager.get_supported_tasks_for_model_type("albert", "onnx"))
    assert supported == set(OPTIMUM_TASKS) and set(TASKS) - supported == {"pretraining"}


def test_pooler_output_with_another_task_is_a_usage_error(capsys, tmp_path):
    assert cli_main(["--task", "qa", "--pooler-output", "--output", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("albert-export: error: --pooler-output adds feature-extraction's pooler_output")
    assert len(err.splitlines()) == 1 and not (tmp_path / "b").exists()


def encoded(tokenizer, task: str) -> dict[str, np.ndarray]:
    if task == "multiple-choice":  # (B, C, S): each prompt against every choice
        flat = tokenizer([text for text in TEXTS for _ in range(3)], ["yes", "no at all", "maybe"] * 2, padding=True,
                         truncation=True, return_tensors="np")
        return {name: array.reshape(2, 3, -1) for name, array in flat.items()}
    return dict(tokenizer(TEXTS, PAIRS, padding=True, truncation=True, return_tensors="np"))


@pytest.mark.parametrize("task", OPTIMUM_TASKS)
def test_ort_model_loads_the_bundle_and_computes_what_transformers_does(task, exported):
    import optimum.onnxruntime

    bundle, hf_model = exported(task)
    tokenizer = AutoTokenizer.from_pretrained(bundle)
    assert tokenizer.model_max_length == hf_model.config.max_position_embeddings == 40
    inputs = encoded(tokenizer, task)
    assert inputs["input_ids"].shape[-1] == 40  # the long text was truncated at the model's length
    model = getattr(optimum.onnxruntime, ORT_CLASS[task]).from_pretrained(bundle)
    outputs = model(**{name: torch.from_numpy(array) for name, array in inputs.items()})
    for name, expected in hf_outputs(hf_model, task, inputs).items():
        if name == "pooler_output":
            continue  # not in the default bundle (and ORTModelForFeatureExtraction returns last_hidden_state alone)
        np.testing.assert_allclose(getattr(outputs, name).numpy(), expected, atol=1e-4, rtol=0, err_msg=name)


def test_readme_optimum_example_runs_as_written(exported, tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Use the bundle from", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    bundle, _ = exported("question-answering")
    (tmp_path / "albert-question-answering-fp32").symlink_to(bundle)
    namespace: dict = {}
    monkeypatch.chdir(tmp_path)
    exec(example, namespace)  # noqa: S102 - the README's own example
    assert type(namespace["model"]).__name__ == "ORTModelForQuestionAnswering"
    assert namespace["tokenizer"].model_max_length == 40
