"""albert-export end to end in a subprocess, and its failures: one clear line, exit 1, no bundle, no traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from albert_export import cli
from albert_export import validate as validate_module
from runtime.bundle import load_bundle
from tests.export_helpers import save_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(shared_checkpoint):
    return shared_checkpoint("question-answering")[0]


def albert_export_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("ALBERT_EXPORT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "albert_export.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_exports_a_validated_bundle(checkpoint, tmp_path):
    result = albert_export_process("--model", str(checkpoint), "--task", "qa", "--layers", "loop", "--opset", "18",
                                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    bundle = tmp_path / "albert-question-answering-fp32"
    assert result.stdout.strip() == str(bundle)
    assert "validated on 4 shapes" in result.stderr and "Traceback" not in result.stderr
    manifest = load_bundle(bundle).manifest
    assert (manifest.task, manifest.layers, manifest.opset) == ("question-answering", "loop", 18)
    assert max(manifest.validation.max_abs_diff.values()) <= 1e-4


def test_cli_failure_is_one_line_without_traceback(checkpoint, tmp_path):
    result = albert_export_process("--model", str(checkpoint), "--task", "summarization", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""  # an unknown task is a usage error
    assert result.stderr.strip().splitlines() == [
        "albert-export: error: unknown task 'summarization'; choose one of: fill-mask (mlm), text-classification "
        "(sequence-classification, cls), token-classification (ner), question-answering (qa), multiple-choice (mc), "
        "feature-extraction (features), pretraining"]
    assert list(tmp_path.iterdir()) == []


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    status = cli.main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def error_of(capsys, *args: str, status: int = 1) -> str:
    exit_status, out, err = run_main(capsys, *args)
    assert exit_status == status and out == ""
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_missing_model_directory(capsys, tmp_path):
    assert error_of(capsys, "--model", str(tmp_path / "nowhere"), "--task", "mlm", "--output", str(tmp_path / "o")) \
        == f"albert-export: error: checkpoint directory {str(tmp_path / 'nowhere')!r} does not exist"
    assert not (tmp_path / "o").exists()


def test_broken_model_directories(capsys, tmp_path, checkpoint):
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    assert "config.json does not exist; an ALBERT checkpoint needs a config.json" in error_of(
        capsys, "--model", str(no_config), "--task", "mlm", "--output", str(tmp_path / "o"))
    bad_json = tmp_path / "bad-json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    assert "config.json is not valid JSON" in error_of(
        capsys, "--model", str(bad_json), "--task", "mlm", "--output", str(tmp_path / "o"))
    bad_weights = tmp_path / "bad-weights"
    bad_weights.mkdir()
    (bad_weights / "config.json").write_text((checkpoint / "config.json").read_text())
    (bad_weights / "model.safetensors").write_bytes(b"\x00" * 64)
    assert "model.safetensors cannot be read" in error_of(
        capsys, "--model", str(bad_weights), "--task", "qa", "--output", str(tmp_path / "o"))
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((checkpoint / name).read_bytes())
    assert "has neither tokenizer.json nor spiece.model" in error_of(
        capsys, "--model", str(no_tokenizer), "--task", "qa", "--output", str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_existing_non_empty_output_is_refused(capsys, tmp_path, checkpoint):
    output = tmp_path / "out"
    output.mkdir()
    (output / "something").write_text("x")
    assert error_of(capsys, "--model", str(checkpoint), "--task", "qa", "--output", str(output)) == (
        f"albert-export: error: output directory {output} already exists and is not empty; choose another "
        "--output, or pass --overwrite to replace a previous bundle")
    assert [p.name for p in output.iterdir()] == ["something"]


@pytest.mark.parametrize("opset", ["13", "99"])
def test_opset_out_of_range(capsys, tmp_path, checkpoint, opset):
    message = error_of(capsys, "--model", str(checkpoint), "--task", "qa", "--opset", opset, "--output",
                       str(tmp_path / "o"), status=2)
    assert message.startswith(f"albert-export: error: opset {opset} is not supported; choose 14..")


def test_validation_failure_exits_non_zero_and_leaves_no_bundle(capsys, tmp_path, checkpoint, monkeypatch):
    original = validate_module.reference_outputs

    def shifted(model, inputs):
        outputs = original(model, inputs)
        outputs["end_logits"] = outputs["end_logits"] - 0.25
        return outputs

    monkeypatch.setattr(validate_module, "reference_outputs", shifted)
    message = error_of(capsys, "--model", str(checkpoint), "--task", "qa", "--output", str(tmp_path / "o"))
    assert message.startswith("albert-export: error: output 'end_logits' differs from the PyTorch reference: "
                              "max abs diff 0.25 (tolerance 0.0001)")
    assert list(tmp_path.iterdir()) == []
    status, out, _ = run_main(capsys, "--model", str(checkpoint), "--task", "qa", "--output", str(tmp_path / "o"),
                              "--no-validate")
    assert status == 0 and out.strip() == str(tmp_path / "o")
    assert load_bundle(tmp_path / "o").manifest.validation is None


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--layers", "loop", "--fold"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --fold" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--task", "qa", "--layers", "folded"])
    assert "invalid choice: 'folded'" in capsys.readouterr().err


def test_warnings_are_single_lines(capsys, tmp_path):
    base = tmp_path / "base"
    save_checkpoint(base, "feature-extraction")  # no QA head: it is initialized, with a warning
    status, out, err = run_main(capsys, "--model", str(base), "--task", "qa", "--output", str(tmp_path / "o"))
    assert status == 0 and out.strip() == str(tmp_path / "o")
    warnings = [line for line in err.splitlines() if line.startswith("albert-export: warning: ")]
    assert any("qa_outputs.weight" in line and "newly initialized" in line for line in warnings)
    assert "Warning" not in err and "warnings.warn" not in err  # no category names, no source excerpts


def test_default_model_exports_without_model_flag(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, err = run_main(capsys, "--task", "mlm", "--layers", "loop")
    assert status == 0, err
    bundle = tmp_path / "albert-fill-mask-fp32"
    assert out.strip() == str(bundle)
    manifest = load_bundle(bundle).manifest
    assert manifest.task == "fill-mask" and max(manifest.validation.max_abs_diff.values()) <= 1e-4
    assert "default_model" in err  # progress names the checkpoint it loaded


def test_every_optimization_profile_is_an_optimize_choice():
    from graphs.pipeline import PROFILES
    from graphs.profiles import PROFILE_NAMES

    optimize = next(action for action in cli.build_parser()._actions if action.dest == "optimize")
    assert tuple(PROFILES) == PROFILE_NAMES == tuple(optimize.choices)


def test_export_its_options_and_the_flags_default_alike():
    """export()'s keywords, ExportOptions' fields and albert-export's flags each state their defaults (the
    signature documents itself, the flags show theirs in --help): every name they share has one default."""
    import dataclasses
    import inspect

    from albert_export.exporter import ExportOptions, export

    keywords = {name: p.default for name, p in inspect.signature(export).parameters.items()
                if p.default is not inspect.Parameter.empty}
    fields = {field.name: field.default for field in dataclasses.fields(ExportOptions)}
    flags = {action.dest: action.default for action in cli.build_parser()._actions}
    shared = set(keywords) & set(fields)
    assert len(shared) >= 18, shared
    for name in shared:
        assert keywords[name] == fields[name], name
        if name in flags:
            assert flags[name] == keywords[name], name
    for name in set(keywords) & set(flags) - shared:  # fp16, int8: flags of export(), not fields
        assert flags[name] == keywords[name], name


def test_the_choices_of_every_flag_are_the_library_s_own():
    """The parser names its choices without importing onnx or onnxruntime (--help and usage errors stay fast and
    work without the export extra): each list must be the one the library checks against."""
    from albert_export.engine import ENGINES
    from albert_export.triton import BACKENDS
    from calibration.ranges import METHODS
    from graphs.assemble import LAYER_MODES

    choices = {action.dest: tuple(action.choices) for action in cli.build_parser()._actions if action.choices}
    assert choices["layers"] == LAYER_MODES
    assert choices["calibration_method"] == METHODS
    assert choices["engine"] == ENGINES
    assert choices["triton_backend"] == BACKENDS


def test_int8_without_the_attention_fusion_quantizes_every_matmul(capsys, tmp_path, checkpoint):
    import onnx

    bundle = tmp_path / "bundle"
    status, out, err = run_main(capsys, "--model", str(checkpoint), "--task", "qa", "--int8", "--calibration-samples",
                                "8", "--optimize", "onnxruntime-without-attention", "--output", str(bundle))
    assert status == 0, err
    manifest = load_bundle(bundle).manifest
    assert manifest.extra["optimize"]["profile"] == "onnxruntime-without-attention"
    assert "attention" not in manifest.extra["optimize"]["passes"]
    graph = onnx.load(str(bundle / "model.onnx")).graph
    producers = {output: node.op_type for node in graph.node for output in node.output}
    inputs = [{producers.get(name) for name in node.input} for node in graph.node if node.op_type == "MatMul"]
    # per layer Q, K, V, attention output, FFN in and out, plus the embedding projection and the QA head (4 layers);
    # with --optimize onnxruntime the fused Attention keeps Q, K and V float: 3 x 4 + 2
    assert inputs.count({"DequantizeLinear"}) == 6 * 4 + 2
    assert len(inputs) - inputs.count({"DequantizeLinear"}) == 2 * 4  # attention's activation products stay float
    assert not [node for node in graph.node if node.op_type == "Attention"]
    assert [node for node in graph.node if node.op_type == "FastGelu"]  # the other onnxruntime fusions ran


TASK_CHOICES = ("fill-mask (mlm), text-classification (sequence-classification, cls), token-classification (ner), "
                "question-answering (qa), multiple-choice (mc), feature-extraction (features), pretraining")


@pytest.mark.parametrize("args, message", [
    (["--task", "summarization"], f"unknown task 'summarization'; choose one of: {TASK_CHOICES}"),
    (["--fp16", "--int8"], "--fp16 and --int8 exclude each other; pick one precision"),
    (["--calibration-method", "entropy"], "--calibration-data/--calibration-method/--calibration-samples need --int8"),
    (["--shapes", "1x1:2x8:4x16"], "--shapes sets the TensorRT optimization profile; add --engine tensorrt"),
    (["--task", "mc", "--engine", "tensorrt", "--shapes", "1x2:2x2:3x3"],
     "--shapes '1x2:2x2:3x3': each of MIN:OPT:MAX needs 3 dims (BxCxS) for this task"),
    (["--engine", "tensorrt", "--optimize", "onnxruntime"],
     "--optimize onnxruntime writes onnxruntime-only ops (com.microsoft Attention, FastGelu) that TensorRT cannot "
     "build; use --optimize portable or none with --engine tensorrt (TensorRT fuses attention itself)"),
])
def test_flag_combination_errors_come_before_torch_is_imported(tmp_path, args, message):
    """One line, exit 2, and torch never loaded (it takes seconds): the flags alone settle it."""
    probe = ("import sys\nfrom albert_export import cli\nstatus = cli.main(sys.argv[1:])\n"
             "print('torch' in sys.modules)\nsys.exit(status)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("ALBERT_EXPORT_DEBUG", None)
    result = subprocess.run([sys.executable, "-c", probe, *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == "False\n"
    assert result.stderr == f"albert-export: error: {message}\n"
    assert list(tmp_path.iterdir()) == []
