"""--ort-format: model.ort and required_operators.config, listed and checksummed; the .ort loads in onnxruntime
and computes what model.onnx computes; its weights are stored once (no folded transposed copy of the tied
embeddings); the operator list is the optimized graph's."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from albert_export.cli import main as cli_main
from albert_export.exporter import export
from albert_export.ort_format import ORT_MODEL, REQUIRED_OPERATORS, save_optimized
from albert_export.validate import onnx_session, validation_inputs
from runtime import pipeline
from runtime.bundle import load_bundle, sha256_file
from runtime.taskspec import TASKS
from tests.export_helpers import quiet

WEIGHTS_ONCE = 1.03  # .ort bytes / .onnx bytes: the flatbuffer's own overhead; a second embedding copy is 1.7x


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """The default model (4715 x 128 embeddings, the tied decoder's weight) as fill-mask and question answering."""
    root = tmp_path_factory.mktemp("ort")
    return {task: export(None, task, root / task, ort_format=True, log=quiet)
            for task in ("fill-mask", "question-answering")}


def required_operators(path) -> dict[str, dict[int, set[str]]]:
    """domain -> {opset: ops}; each op under the opset its kernel dates from (Range: 11), as the config lists it."""
    operators: dict[str, dict[int, set[str]]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            domain, opset, ops = line.split(";")
            operators.setdefault(domain, {})[int(opset)] = set(ops.split(","))
    return operators


@pytest.mark.parametrize("task", ["fill-mask", "question-answering"])
def test_ort_model_is_listed_loads_and_computes_what_the_onnx_model_does(task, bundles):
    bundle = bundles[task]
    manifest = load_bundle(bundle).manifest  # verifies every checksum
    for name in (ORT_MODEL, REQUIRED_OPERATORS):
        assert manifest.files[name] == sha256_file(bundle / name)
    assert manifest.extra["graph"]["ort_model_bytes"] == (bundle / ORT_MODEL).stat().st_size
    names = list(TASKS[task].outputs)
    reference = onnx_session(bundle / "model.onnx", threads=1)
    session = ort.InferenceSession(str(bundle / ORT_MODEL), providers=["CPUExecutionProvider"])
    for shape in [(1, 1), (3, 7), (2, 33)]:
        inputs = validation_inputs(shape, 4715, 2, seed=3)
        for name, actual, expected in zip(names, session.run(names, inputs), reference.run(names, inputs)):
            np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0, err_msg=f"{name} {shape}")
    assert pipeline(str(bundle))  # the runtime still reads the bundle with the extra files


@pytest.mark.parametrize("task", ["fill-mask", "question-answering"])
def test_ort_model_stores_the_weights_once(task, bundles):
    bundle = bundles[task]
    ratio = (bundle / ORT_MODEL).stat().st_size / (bundle / "model.onnx").stat().st_size
    assert ratio <= WEIGHTS_ONCE, f"{task}: model.ort is {ratio:.3f} x model.onnx"


def test_required_operators_are_those_of_the_optimized_graph(bundles, tmp_path):
    bundle = bundles["fill-mask"]
    optimized = onnx.load(str(save_optimized(bundle / "model.onnx", tmp_path / "optimized.onnx")))
    opsets = {entry.domain or "ai.onnx": entry.version for entry in optimized.opset_import}
    expected: dict[str, set[str]] = {}
    for node in optimized.graph.node:
        expected.setdefault(node.domain or "ai.onnx", set()).add(node.op_type)
    config = bundle / REQUIRED_OPERATORS
    listed = required_operators(config)
    assert {domain: set().union(*by_opset.values()) for domain, by_opset in listed.items()} == expected
    assert all(opset <= opsets[domain] for domain, by_opset in listed.items() for opset in by_opset)
    assert "FusedMatMul" in expected["com.microsoft"]  # the extended level's fusions are in it
    assert str(bundle) not in config.read_text() and f"# - {ORT_MODEL}" in config.read_text()


def test_cli_ort_format_flag(capsys, tmp_path):
    assert cli_main(["--task", "text-classification", "--ort-format", "--output", str(tmp_path / "b")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "b")
    files = json.loads((tmp_path / "b" / "manifest.json").read_text())["files"]
    assert {ORT_MODEL, REQUIRED_OPERATORS} <= set(files)


def test_quiet_ort_format_prints_none_of_onnxruntimes_info_lines(tmp_path):
    """onnxruntime's converter logs "[INFO] ... Created config in <temporary path>" at DEBUG level of its own."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "albert_export.cli", "--task", "fill-mask", "--ort-format", "-q",
                           "--output", str(tmp_path / "b")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and done.stdout == f"{tmp_path / 'b'}\n"
    assert [line for line in done.stderr.splitlines() if not line.startswith("albert-export: warning: ")] == []
