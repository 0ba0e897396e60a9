"""albert_export.export: every task in both layer modes against the reference and transformers, the bundle,
opsets, the output directory rules, and failures that leave nothing behind."""
from __future__ import annotations

import importlib
import inspect
import json
import os
import stat
import sys

import numpy as np
import onnx
import pytest
import torch
from tokenizers import Tokenizer

import albert_export
from albert_export import validate as validate_module
from albert_export.bundle_writer import OutputExistsError
from albert_export.exporter import ExportOptionError, export, max_opset
from albert_export.tokenizer import tokenizer_from_pretrained
from albert_export.validate import ValidationError, onnx_session, validation_inputs
from runtime.bundle import load_bundle
from runtime.taskspec import TASKS
from tests.export_helpers import hf_outputs, quiet

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def checkpoint(shared_checkpoint):
    return shared_checkpoint


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_in_both_modes_matches_the_reference_and_transformers(task, checkpoint, tmp_path):
    directory, hf_model = checkpoint(task)
    spec = TASKS[task]
    shapes = [(3, 2, 9), (1, 4, 3)] if spec.multiple_choice else [(3, 9), (2, 1)]
    results = {}
    for layers in ("unrolled", "loop"):
        # every output of the task: feature-extraction's pooler_output is written when asked
        bundle = export(directory, task, tmp_path / layers, layers=layers, pooler_output=task == "feature-extraction",
                        log=quiet)
        onnx.checker.check_model(str(bundle / "model.onnx"), full_check=True)
        validation = load_bundle(bundle).manifest.validation
        assert set(validation.max_abs_diff) == set(spec.outputs)
        assert max(validation.max_abs_diff.values()) <= 1e-4
        session = onnx_session(bundle / "model.onnx", threads=1)
        for shape in shapes:
            inputs = validation_inputs(shape, 1000, 2, seed=7)
            outputs = dict(zip(spec.outputs, session.run(list(spec.outputs), inputs)))
            expected = hf_outputs(hf_model, task, inputs)
            for name in spec.outputs:
                np.testing.assert_allclose(outputs[name], expected[name], atol=1e-4, rtol=0, err_msg=name)
            results[layers, shape] = outputs
    for shape in shapes:
        for name in spec.outputs:
            np.testing.assert_allclose(results["loop", shape][name], results["unrolled", shape][name], atol=1e-6,
                                       rtol=0)


def test_the_package_export_is_the_function_once_its_module_is_imported():
    import albert_export.exporter  # binds the module as the package's `exporter`, never as its `export`
    from albert_export import export as imported

    assert inspect.isfunction(albert_export.export)
    assert albert_export.export is imported is albert_export.exporter.export


def test_bundle_holds_graph_tokenizer_config_and_manifest(checkpoint, tmp_path):
    directory, _ = checkpoint("question-answering")
    bundle = albert_export.export(directory, "qa", tmp_path / "bundle", layers="loop", log=quiet)
    loaded = load_bundle(bundle)  # verifies every sha256
    manifest = loaded.manifest
    files = ["config.json", "model.onnx", "special_tokens_map.json", "spiece.model", "tokenizer.json",
             "tokenizer_config.json"]
    assert sorted(manifest.files) == files
    assert manifest.sizes == {name: (bundle / name).stat().st_size for name in files}
    assert sorted(p.name for p in bundle.iterdir()) == sorted([*files, "manifest.json"])
    assert (manifest.task, manifest.layers, manifest.precision, manifest.opset, manifest.format) == (
        "question-answering", "loop", "fp32", 17, 1)
    assert [(t.name, t.dtype, t.dims) for t in manifest.inputs] == [
        (name, "int64", ["batch_size", "sequence_length"]) for name in ("input_ids", "attention_mask", "token_type_ids")]
    assert [(t.name, t.dtype, t.dims) for t in manifest.outputs] == [
        ("start_logits", "float32", ["batch_size", "sequence_length"]),
        ("end_logits", "float32", ["batch_size", "sequence_length"])]
    assert manifest.validation.tolerance == {"start_logits": 1e-4, "end_logits": 1e-4}
    assert [1, 1] in manifest.validation.shapes and [1, 40] in manifest.validation.shapes
    assert manifest.producer["name"] == "albert-export" and manifest.producer["version"] == albert_export.__version__
    stats = manifest.extra["graph"]
    assert stats["model_bytes"] == (bundle / "model.onnx").stat().st_size
    assert stats["tensor_bytes"] <= 1.02 * stats["parameter_bytes"] and stats["top_level_nodes"] < stats["nodes"]
    graph = onnx.load(str(bundle / "model.onnx"))
    assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in graph.graph.output] == ["start_logits", "end_logits"]
    assert graph.opset_import[0].version == 17
    config = json.loads((bundle / "config.json").read_text())
    assert config["model_type"] == "albert" and config["id2label"] == {"0": "LABEL_0", "1": "LABEL_1"}
    original, settings = tokenizer_from_pretrained(directory)
    assert manifest.tokenizer == settings
    text = "Plants create energy through photosynthesis."
    assert Tokenizer.from_file(str(bundle / "tokenizer.json")).encode(text).ids == original.encode(text).ids


def test_labels_reach_config_json(checkpoint, tmp_path):
    directory, hf_model = checkpoint("token-classification")
    bundle = export(directory, "ner", tmp_path / "ner", validate=False, log=quiet)
    assert json.loads((bundle / "config.json").read_text())["id2label"] == {
        str(i): label for i, label in hf_model.config.id2label.items()}
    assert load_bundle(bundle).manifest.validation is None


@pytest.mark.parametrize("opset", [14, 20, 21, max_opset()])
def test_opsets_across_the_supported_range(opset, checkpoint, tmp_path):
    directory, _ = checkpoint("text-classification")
    bundle = export(directory, "cls", tmp_path / "b", layers="loop", opset=opset, log=quiet)
    assert onnx.load(str(bundle / "model.onnx")).opset_import[0].version == opset
    assert load_bundle(bundle).manifest.opset == opset


@pytest.mark.parametrize("opset", [13, max_opset() + 1, "17"])
def test_opset_outside_the_range_is_refused_before_tracing(opset, checkpoint, tmp_path):
    directory, _ = checkpoint("text-classification")
    with pytest.raises(ExportOptionError, match=f"opset {opset!r} is not supported; choose 14..{max_opset()}"):
        export(directory, "cls", tmp_path / "b", opset=opset, log=quiet)
    assert not (tmp_path / "b").exists()


def test_default_output_is_named_after_task_and_precision(checkpoint, tmp_path, monkeypatch):
    directory, _ = checkpoint("feature-extraction")
    monkeypatch.chdir(tmp_path)
    bundle = export(directory, "features", validate=False, log=quiet)
    assert bundle == tmp_path / "albert-feature-extraction-fp32" and (bundle / "manifest.json").is_file()


def test_missing_parents_are_created_and_the_bundle_gets_a_normal_mode(checkpoint, tmp_path):
    directory, _ = checkpoint("feature-extraction")
    bundle = export(directory, "features", tmp_path / "a" / "b" / "bundle", validate=False, log=quiet)
    assert (bundle / "manifest.json").is_file()
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o777 & ~umask
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file, so .* cannot be created"):
        export(directory, "features", tmp_path / "file" / "bundle", log=quiet)


def test_existing_output_directory_rules(checkpoint, tmp_path):
    directory, _ = checkpoint("feature-extraction")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export(directory, "features", empty, validate=False, log=quiet) == empty
    with pytest.raises(OutputExistsError, match="already exists and is not empty; choose another --output, or pass "
                                                "--overwrite"):
        export(directory, "features", empty, validate=False, log=quiet)
    before = (empty / "manifest.json").read_text()
    replaced = export(directory, "features", empty, layers="loop", validate=False, overwrite=True, log=quiet)
    assert load_bundle(replaced).manifest.layers == "loop" and (empty / "manifest.json").read_text() != before
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    (unrelated / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="is not an albert-export bundle"):
        export(directory, "features", unrelated, overwrite=True, log=quiet)
    assert (unrelated / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "notes"]  # no temporary siblings left


def test_validation_failure_raises_a_typed_error_and_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    directory, _ = checkpoint("pretraining")
    original = validate_module.reference_outputs

    def shifted(model, inputs):
        outputs = original(model, inputs)
        outputs["sop_logits"] = outputs["sop_logits"] + 0.5
        return outputs

    monkeypatch.setattr(validate_module, "reference_outputs", shifted)
    with pytest.raises(ValidationError) as caught:
        export(directory, "pretraining", tmp_path / "b", log=quiet)
    assert caught.value.output == "sop_logits" and 0.49 < caught.value.max_abs_diff < 0.51
    assert "output 'sop_logits' differs from the PyTorch reference: max abs diff 0.5" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_atol_replaces_the_table_value(checkpoint, tmp_path):
    directory, _ = checkpoint("pretraining")
    bundle = export(directory, "pretraining", tmp_path / "b", atol=1e-3, log=quiet)
    assert load_bundle(bundle).manifest.validation.tolerance == {"prediction_logits": 1e-3, "sop_logits": 1e-3}
    with pytest.raises(ValidationError, match="output 'prediction_logits' differs"):
        export(directory, "pretraining", tmp_path / "c", atol=1e-12, log=quiet)
    with pytest.raises(ValueError, match="atol must be a non-negative number"):
        export(directory, "pretraining", tmp_path / "d", atol=-1.0, log=quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_interrupted_export_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    directory, _ = checkpoint("feature-extraction")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("albert_export.exporter"), "validate_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export(directory, "features", tmp_path / "b", log=quiet)
    assert list(tmp_path.iterdir()) == []


def calls_during(run, *functions) -> list[tuple[str, str]]:
    """(function name, caller's file) for every call of `functions` while run() runs, nested calls included."""
    watched = {function.__code__: function.__name__ for function in functions}
    seen = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in watched:
            seen.append((watched[frame.f_code], frame.f_back.f_code.co_filename))

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return seen


@pytest.mark.parametrize("via", ["export", "cli"])
def test_one_export_reads_the_task_once_and_checks_the_output_once(via, checkpoint, tmp_path, capsys):
    """The options are checked once, into one value the stages read: the task's name is canonicalized once
    (input_dims' own lookup inside taskspec aside), the output directory is checked once before tracing, then
    once more by the commit, for what changed while the export ran."""
    from albert_export import bundle_writer, cli
    from runtime import taskspec

    directory, _ = checkpoint("question-answering")
    output = tmp_path / "bundle"
    if via == "export":
        def run():
            export(directory, "qa", output, validate=False, log=quiet)
    else:
        def run():
            assert cli.main(["--model", str(directory), "--task", "qa", "--output", str(output), "--no-validate",
                             "--quiet"]) == 0

    calls = calls_during(run, taskspec.canonical_task, bundle_writer.check_output_dir,
                         bundle_writer.BundleWriter.__enter__)
    names = [name for name, _ in calls]
    canonicalized = [name for name, caller in calls if name == "canonical_task" and caller != taskspec.__file__]
    assert canonicalized == ["canonical_task"]
    checks = [index for index, name in enumerate(names) if name == "check_output_dir"]
    assert len(checks) == 2 and checks[0] < names.index("__enter__") < checks[1]  # before tracing; at the commit
    assert load_bundle(output).manifest.task == "question-answering"


def test_the_manifest_names_the_optimization_profile_that_ran(checkpoint, tmp_path):
    directory, _ = checkpoint("question-answering")
    plain = export(directory, "qa", tmp_path / "plain", validate=False, log=quiet)
    fused = export(directory, "qa", tmp_path / "fused", optimize="onnxruntime", validate=False, log=quiet)
    assert load_bundle(plain).manifest.optimize == "none"
    manifest = load_bundle(fused).manifest
    assert manifest.optimize == manifest.extra["optimize"]["profile"] == "onnxruntime"


def test_triton_repository_is_written_by_export_itself(checkpoint, tmp_path):
    directory, _ = checkpoint("question-answering")
    bundle = export(directory, "qa", tmp_path / "qa", validate=False, triton=tmp_path / "repo", log=quiet)
    assert sorted(p.parent.name for p in (tmp_path / "repo").glob("*/config.pbtxt")) == [
        "qa", "qa-onnx", "qa-postprocess", "qa-preprocess"]
    assert (tmp_path / "repo" / "qa-onnx" / "1" / "model.onnx").read_bytes() == (bundle / "model.onnx").read_bytes()


@pytest.mark.parametrize("task, shapes", [("question-answering", "1x1:2x16:4x40"),
                                          ("multiple-choice", "1x2x1:2x3x16:4x4x40")])
def test_both_layer_modes_build_a_tensorrt_plan(task, shapes, checkpoint, tmp_path):
    from albert_export.engine import engine_from_onnx, parse_shapes

    directory, _ = checkpoint(task)
    rank = 3 if TASKS[task].multiple_choice else 2
    for layers in ("unrolled", "loop"):
        bundle = export(directory, task, tmp_path / layers, layers=layers, validate=False, log=quiet)
        plan, _ = engine_from_onnx(bundle / "model.onnx", parse_shapes(shapes, rank=rank),
                                   compute_capabilities=("8.6",), log=quiet)
        assert len(plan) > 100_000
