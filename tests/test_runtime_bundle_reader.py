"""The bundle reader verifies every file it reads, reads nothing unlisted and nothing outside the bundle."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from runtime import bundle as bundle_module
from runtime import pipeline
from runtime.bundle import CONFIG, ENGINE, MANIFEST, MODEL, BundleError, load_bundle, sha256_file


@pytest.fixture()
def copy(handmade_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(handmade_bundle("fill-mask"), target)
    return target


def edit_manifest(bundle, change):
    data = json.loads((bundle / MANIFEST).read_text())
    change(data)
    (bundle / MANIFEST).write_text(json.dumps(data))


def hashed(monkeypatch) -> list:
    calls = []
    real = bundle_module.sha256_file
    monkeypatch.setattr(bundle_module, "sha256_file", lambda path, *a: calls.append(path.name) or real(path, *a))
    return calls


def test_an_engine_plan_the_manifest_does_not_list_is_never_used(copy):
    (copy / ENGINE).write_bytes(b"not an engine, and no checksum for it")
    bundle = load_bundle(copy)
    with pytest.raises(BundleError, match="engine.plan is not listed in manifest.json, so it cannot be verified"):
        bundle.engine_path


def test_a_listed_engine_plan_is_verified_before_anything_runs(copy):
    (copy / ENGINE).write_bytes(b"engine bytes")
    edit_manifest(copy, lambda m: m["files"].update({ENGINE: sha256_file(copy / ENGINE)}))
    assert load_bundle(copy).engine_path == copy / ENGINE
    (copy / ENGINE).write_bytes(b"engine bytes, changed")
    with pytest.raises(BundleError, match="checksum mismatch for engine.plan"):
        load_bundle(copy)


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.txt", "../../x", "sub/model.onnx", "..", ".", "",
                                  "a\\b", os.path.abspath("x")])
def test_file_names_outside_the_bundle_are_refused_without_hashing(copy, monkeypatch, tmp_path, name):
    (tmp_path / "outside.txt").write_text("secret")
    edit_manifest(copy, lambda m: m["files"].update({name: "0" * 64}))
    calls = hashed(monkeypatch)
    with pytest.raises(BundleError, match="not a file name inside the bundle; refusing it") as refused:
        load_bundle(copy)
    assert calls == [] and "0000" not in str(refused.value) and sha256_file(tmp_path / "outside.txt")[:8] not in str(
        refused.value)


def test_a_symlink_leaving_the_bundle_is_refused(copy, tmp_path):
    (tmp_path / "outside.txt").write_text("secret")
    (copy / "notes.txt").symlink_to(tmp_path / "outside.txt")
    edit_manifest(copy, lambda m: m["files"].update({"notes.txt": sha256_file(tmp_path / "outside.txt")}))
    with pytest.raises(BundleError, match="notes.txt is a link to a file outside the bundle"):
        load_bundle(copy)
    os.remove(copy / "tokenizer.json")
    (copy / "tokenizer.json").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(BundleError, match="link to a file outside the bundle"):
        load_bundle(copy)


def test_recorded_sizes_are_checked_before_hashing(copy, monkeypatch):
    sizes = {name: (copy / name).stat().st_size for name in json.loads((copy / MANIFEST).read_text())["files"]}
    edit_manifest(copy, lambda m: m.update(sizes=sizes))
    load_bundle(copy)
    with open(copy / MODEL, "ab") as handle:
        handle.write(b"\0" * 1000)
    calls = hashed(monkeypatch)
    with pytest.raises(BundleError, match=f"model.onnx has {sizes[MODEL] + 1000} bytes, the manifest says {sizes[MODEL]}"):
        load_bundle(copy)
    assert MODEL not in calls


def test_a_listed_file_the_runtime_does_not_read_is_not_hashed_without_a_recorded_size(copy, monkeypatch):
    with open(copy / "huge.bin", "wb") as handle:
        handle.truncate(1 << 30)  # sparse: a 1 GiB file, hashing it would take seconds
    edit_manifest(copy, lambda m: m["files"].update({"huge.bin": "0" * 64}))
    calls = hashed(monkeypatch)
    load_bundle(copy)
    assert "huge.bin" not in calls and MODEL in calls
    edit_manifest(copy, lambda m: m.update(sizes={"huge.bin": 1 << 30}))
    with open(copy / "huge.bin", "wb") as handle:
        handle.truncate(10)
    with pytest.raises(BundleError, match="huge.bin has 10 bytes, the manifest says 1073741824"):
        load_bundle(copy)


def test_external_data_the_manifest_does_not_list_is_refused(tmp_path, handmade_bundle):
    onnx = pytest.importorskip("onnx")
    target = tmp_path / "bundle"
    shutil.copytree(handmade_bundle("fill-mask"), target)
    model = onnx.load(str(target / MODEL))
    onnx.save_model(model, str(target / MODEL), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    edit_manifest(target, lambda m: m["files"].update({MODEL: sha256_file(target / MODEL)}))
    with pytest.raises(BundleError, match="model.onnx reads 'weights.bin', which manifest.json does not list"):
        load_bundle(target)
    edit_manifest(target, lambda m: m["files"].update({"weights.bin": sha256_file(target / "weights.bin")}))
    assert pipeline(target)("A [MASK] here.") == pipeline(handmade_bundle("fill-mask"))("A [MASK] here.")
    with open(target / "weights.bin", "r+b") as handle:
        handle.write(b"\x7f")
    with pytest.raises(BundleError, match="checksum mismatch for weights.bin"):
        load_bundle(target)


@pytest.mark.parametrize("manifest, message", [
    ("[]", "not a JSON object"),
    ('{"format": 1}', "'inputs' is missing"),
    ("[" * 5000, "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_malformed_manifests_are_one_clear_error(copy, manifest, message):
    (copy / MANIFEST).write_bytes(manifest if isinstance(manifest, bytes) else manifest.encode())
    with pytest.raises(BundleError, match=message) as refused:
        load_bundle(copy)
    assert "__init__" not in str(refused.value)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(files=[MODEL]), "files is not a map"),
    (lambda m: m.update(task=7), "task is not a string"),
    (lambda m: m.update(surprise=1), "unexpected keyword argument 'surprise'"),
    (lambda m: m["tokenizer"].update(max_length="128"), "max_length is not a positive integer"),
    (lambda m: m.update(sizes={MODEL: "big"}), "sizes is not a map"),
])
def test_manifest_fields_of_the_wrong_shape_are_one_clear_error(copy, change, message):
    edit_manifest(copy, change)
    with pytest.raises(BundleError, match=message) as refused:
        load_bundle(copy)
    assert "__init__" not in str(refused.value)


def rehash(bundle, *names):
    edit_manifest(bundle, lambda m: m["files"].update({name: sha256_file(bundle / name) for name in names}))


@pytest.mark.parametrize("task, other", [("question-answering", "text-classification"),
                                         ("text-classification", "question-answering"),
                                         ("fill-mask", "token-classification"),
                                         ("token-classification", "text-classification"),
                                         ("multiple-choice", "fill-mask")])
def test_a_manifest_task_that_is_not_the_models_is_one_line(handmade_bundle, tmp_path, task, other):
    target = tmp_path / "bundle"
    shutil.copytree(handmade_bundle(other), target)
    edit_manifest(target, lambda m: m.update(task=task))
    pattern = f"a {task} model gives .*the bundle's task is not its model's|a {task} input fails .*task its model's"
    with pytest.raises(Exception, match=pattern) as refused:
        pipeline(target)
    assert "KeyError" not in str(refused.value) and "\n" not in str(refused.value)


def test_a_model_of_another_task_rehashed_into_the_bundle_names_expected_and_found_outputs(handmade_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(handmade_bundle("question-answering"), target)
    shutil.copy(handmade_bundle("text-classification") / MODEL, target / MODEL)
    rehash(target, MODEL)
    with pytest.raises(BundleError) as refused:  # the engine's own outputs, before any run
        pipeline(target)
    assert str(refused.value) == ("manifest.json lists outputs start_logits, end_logits, model.onnx has logits; the "
                                  "manifest does not describe its model, re-export the bundle")


def test_an_id2label_that_does_not_name_every_logit_is_refused_at_load(handmade_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(handmade_bundle("text-classification"), target)
    config = json.loads((target / "config.json").read_text())
    config["id2label"] = {"0": "ONLY"}
    config["label2id"] = {"ONLY": 0}
    (target / "config.json").write_text(json.dumps(config))
    rehash(target, "config.json")
    with pytest.raises(Exception, match="config.json's id2label names 1 labels, the model gives 2 logits"):
        pipeline(target)
    config["id2label"] = {"zero": "A", "1": "B"}
    (target / "config.json").write_text(json.dumps(config))
    rehash(target, "config.json")
    with pytest.raises(BundleError, match="id2label a map of label ids to names"):
        pipeline(target)


@pytest.mark.parametrize("id2label, problem", [
    ({"0": "A", "00": "B"}, "'s id2label must name labels 0 to 1 once each, but two keys name label 0"),
    ({"0": "A", "5": "B"}, "'s id2label must name labels 0 to 1 once each, but it has no label 1"),
    ({"1": "A", "2": "B"}, "'s id2label must name labels 0 to 1 once each, but it has no label 0"),
    ({"0": "A", "²": "B"}, " is not an HF config (a JSON object, id2label a map of label ids to names)"),
])
def test_id2label_keys_that_are_not_labels_0_to_n_are_refused_at_load(handmade_bundle, tmp_path, id2label, problem):
    target = tmp_path / "bundle"
    shutil.copytree(handmade_bundle("text-classification"), target)
    config = json.loads((target / CONFIG).read_text())
    config["id2label"] = id2label
    (target / CONFIG).write_text(json.dumps(config))
    rehash(target, CONFIG)
    with pytest.raises(BundleError) as refused:
        load_bundle(target)
    assert str(refused.value) == f"{target / CONFIG}{problem}; " + (
        "re-export the bundle" if "HF config" in problem else "fix id2label or re-export the bundle")
