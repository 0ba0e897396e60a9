"""--triton is part of the atomic export (issue 20 item 5, ../shared/DESIGN.md's bundle contract): a target that
cannot hold the repository, or a bundle name Triton cannot take, is refused in one line before any tracing, with
nothing written; a failure while the repository is written leaves neither the bundle nor the repository; --overwrite
replaces only models albert-export wrote. Every variant's configs parse with Triton's own schema."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from albert_export import cli

export_module = importlib.import_module("albert_export.exporter")
triton_module = importlib.import_module("albert_export.triton")


def parsed(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture
def untraced(tmp_path, monkeypatch):
    """albert-export run in tmp_path whose tracing fails the test: a refusal must come before it."""
    def traced(*args, **kwargs):
        raise AssertionError("the export traced the model before refusing")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(export_module, "traced", traced)
    return tmp_path


def export_cli(*args: str) -> int:
    return cli.main(["--task", "text-classification", "--no-validate", *args])


def left_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("target, prepare, reason", [
    ("repo", lambda root: (root / "repo").write_text("a file"), "exists and is not a directory"),
    ("bundle", None, "is the bundle's own folder or inside it"),
    ("bundle/repo", None, "is the bundle's own folder or inside it"),
    (".", None, "is the bundle's parent: the bundle would sit among the repository's models"),
    ("/proc/albert-repo", None, "is not a place for a model repository"),
    ("file/repo", lambda root: (root / "file").write_text("x"), "cannot be created: "),
])
def test_a_target_that_cannot_hold_the_repository_is_refused_before_tracing(untraced, capsys, target, prepare,
                                                                            reason):
    if prepare:
        prepare(untraced)
    before = left_in(untraced)
    code = export_cli("--output", "bundle", "--triton", target)
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"albert-export: error: --triton {target} ") and reason in err, err
    assert err.rstrip().endswith("; choose another --triton directory")
    assert left_in(untraced) == before


@pytest.mark.parametrize("name", ['we"ird', "x\nplatform: python", "-starts-with-a-dash", "a" * 129])
def test_a_bundle_name_triton_cannot_take_is_refused_before_tracing(untraced, capsys, name):
    code = export_cli(f"--output={name}", "--triton", "repo")
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert f"the bundle's name {name!r} cannot name a Triton model" in err
    assert left_in(untraced) == []


def test_a_failure_while_the_repository_is_written_leaves_neither(tmp_path, monkeypatch, capsys):
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(triton_module, "write_models", no_space)
    code = export_cli("--output", "bundle", "--triton", "repo")
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 1 and out == "" and errors == [
        "albert-export: error: No space left on device; check the path and its permissions"], err
    assert [p.name for p in tmp_path.iterdir()] == []  # no bundle, no repository, no hidden partial sibling


def test_overwrite_replaces_only_the_models_albert_export_wrote(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert export_cli("--output", "bundle", "--triton", "repo") == 0
    config = tmp_path / "repo" / "bundle-onnx" / "config.pbtxt"
    first = config.stat().st_mtime_ns
    (tmp_path / "repo" / "theirs").mkdir()
    (tmp_path / "repo" / "theirs" / "config.pbtxt").write_text('name: "theirs"\n')
    capsys.readouterr()
    assert export_cli("--output", "elsewhere/bundle", "--triton", "repo") == 1  # the same name, the same models
    assert capsys.readouterr().err == (
        "albert-export: error: --triton repo already has model(s) bundle-onnx, bundle-preprocess, bundle-postprocess, "
        "bundle; remove them, or pass --overwrite to replace models albert-export wrote; choose another --triton "
        "directory\n")
    assert not (tmp_path / "elsewhere").exists()
    assert export_cli("--output", "bundle", "--triton", "repo", "--overwrite") == 0
    assert config.stat().st_mtime_ns != first
    assert (tmp_path / "repo" / "theirs" / "config.pbtxt").read_text() == 'name: "theirs"\n'
    foreign = tmp_path / "repo" / "bundle-preprocess" / "config.pbtxt"
    foreign.write_text('name: "bundle-preprocess"\n')  # someone else's model under our name
    capsys.readouterr()
    assert export_cli("--output", "bundle", "--triton", "repo", "--overwrite") == 1
    err = capsys.readouterr().err
    assert "already has model(s) bundle-preprocess that albert-export did not write; nothing was deleted" in err
    assert foreign.read_text() == 'name: "bundle-preprocess"\n'


@pytest.mark.parametrize("backend, models", [
    ("openvino", {"bundle": "ensemble", "bundle-openvino": "openvino", "bundle-preprocess": "python",
                  "bundle-postprocess": "python"}),
    ("python", {"bundle": "python"}),
])
def test_every_variant_parses_with_tritons_schema(tmp_path, monkeypatch, backend, models):
    monkeypatch.chdir(tmp_path)
    assert export_cli("--output", "bundle", "--triton", "repo", "--triton-backend", backend) == 0
    configs = {p.parent.name: parsed(p) for p in (tmp_path / "repo").glob("*/config.pbtxt")}
    assert {name: config.platform or config.backend for name, config in configs.items()} == models
    if backend == "openvino":
        model = configs["bundle-openvino"]
        assert [t.name for t in model.input] == ["input_ids", "attention_mask", "token_type_ids"]
        assert (tmp_path / "repo" / "bundle-openvino" / "1" / "model.onnx").exists()
    else:
        model = configs["bundle"]
        assert model.max_batch_size > 1 and model.HasField("dynamic_batching")
        assert [t.name for t in model.input] == ["REQUEST"] and [t.name for t in model.output] == ["RESPONSE"]
        assert (tmp_path / "repo" / "bundle" / "1" / "bundle" / "model.onnx").exists()
