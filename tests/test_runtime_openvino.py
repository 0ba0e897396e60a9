"""The openvino backend: every head and every bundle form we write gives onnxruntime's answers within the
precision's tolerance; options, concurrency and refusals."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import openvino  # the `openvino` extra (scripts/setup.sh installs it)
from albert_export import export
from albert_export.tolerances import tolerance_for
from runtime import pipeline
from runtime.backends.openvino import OpenVINOBackend
from runtime.backends.ort import OnnxRuntimeBackend
from runtime.bundle import load_bundle
from runtime.errors import BackendError, OptionError
from tests.export_helpers import save_checkpoint
from tests.test_runtime_heads import assert_same, botchan_masked, mrpc_pairs, swag_items



def random_inputs(shape, seed=0, vocab=1000):
    rng = np.random.default_rng(seed)
    mask = np.ones(shape, dtype=np.int64)
    mask[..., shape[-1] // 2 + 1:] = 0 if shape[0] > 1 else 1
    types = np.zeros(shape, dtype=np.int64)
    types[..., shape[-1] // 3:] = 1
    return {"input_ids": rng.integers(5, vocab, size=shape, dtype=np.int64), "attention_mask": mask,
            "token_type_ids": types}


def assert_close(ours: dict, reference: dict, precision: str):
    assert set(ours) == set(reference)
    for name, expected in reference.items():
        tolerance = tolerance_for(precision, name)
        diff = float(np.abs(ours[name] - expected).max())
        assert ours[name].shape == expected.shape and ours[name].dtype == expected.dtype, name
        assert np.allclose(ours[name], expected, atol=tolerance.atol, rtol=tolerance.rtol), f"{name}: {diff}"


def plain(result):
    """numpy scalars (token-classification's scores are np.float32, as in HF) as Python floats, for assert_same."""
    if isinstance(result, dict):
        return {key: plain(value) for key, value in result.items()}
    if isinstance(result, (list, tuple)):
        return [plain(value) for value in result]
    return float(result) if isinstance(result, np.floating) else result


HEAD_INPUTS = {
    "fill-mask": lambda: botchan_masked(3, seed=5) + botchan_masked(1, masks=2, seed=6),
    "text-classification": lambda: mrpc_pairs()[:3],
    "token-classification": lambda: ["Natsume Soseki wrote Botchan in Matsuyama.", "A short one."],
    "question-answering": lambda: [{"question": "Who wrote it?", "context": "Soseki wrote Botchan in 1906 in Tokyo."}],
    "multiple-choice": lambda: swag_items()[:2],
    "feature-extraction": lambda: ["one text", "and a somewhat longer second text"],
    "pretraining": lambda: botchan_masked(2, seed=7),
}


@pytest.mark.parametrize("task", list(HEAD_INPUTS))
def test_every_head_answers_as_with_onnxruntime(handmade_bundle, task):
    bundle = handmade_bundle(task, **({"num_labels": 3} if task in ("text-classification", "token-classification") else {}))
    inputs = HEAD_INPUTS[task]()
    ours = pipeline(bundle, backend="openvino")
    assert type(ours.backend).__name__ == "OpenVINOBackend" and ours.backend.precision == "f32"
    options = {"truncation": True} if task == "text-classification" else {}
    assert_same(plain(ours(inputs, **options)), plain(pipeline(bundle)(inputs, **options)))


@pytest.fixture(scope="module")
def qa_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("qa")
    save_checkpoint(directory, "question-answering", vocab_size=1010)  # the test tokenizer's ids reach 1003
    return directory


FORMS = [(layers, optimize, "fp32") for layers in ("unrolled", "loop") for optimize in ("none", "portable", "onnxruntime")]
FORMS += [("loop", "onnxruntime", "fp16"), ("unrolled", "portable", "fp16"), ("unrolled", "onnxruntime", "int8"),
          ("loop", "portable", "int8")]


@pytest.mark.parametrize("layers,optimize,precision", FORMS)
def test_every_bundle_form_matches_onnxruntime(qa_checkpoint, tmp_path, layers, optimize, precision):
    options = {"fp16": True} if precision == "fp16" else {"int8": True, "calibration_samples": 8} if precision == "int8" else {}
    bundle = export(qa_checkpoint, "qa", tmp_path / "b", layers=layers, optimize=optimize, log=lambda _: None, **options)
    model = load_bundle(bundle).model_path
    ours, reference = OpenVINOBackend(model, threads=1), OnnxRuntimeBackend(model, threads=1)
    for shape in ((1, 1), (3, 7), (2, 33)):
        feed = random_inputs(shape, seed=shape[1])
        assert_close(ours.infer(feed), reference.infer(feed), precision)


def test_concurrent_calls_give_the_sequential_answers(handmade_bundle):
    backend = OpenVINOBackend(load_bundle(handmade_bundle("question-answering")).model_path, threads=1)
    feeds = [random_inputs((1 + i % 3, 5 + 3 * i), seed=i, vocab=100) for i in range(12)]
    sequential = [backend.infer(feed) for feed in feeds]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(backend.infer, feeds * 3))
    for got, expected in zip(concurrent, sequential * 3):
        assert {k: v.tolist() for k, v in got.items()} == {k: v.tolist() for k, v in expected.items()}
    assert 1 <= len(backend._idle) <= 4  # requests are reused, one per concurrent caller at most


def test_options_are_honoured_and_checked(handmade_bundle):
    model = load_bundle(handmade_bundle("question-answering")).model_path
    backend = OpenVINOBackend(model, threads=1, hint="throughput")
    assert backend.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert str(backend.compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
    assert str(backend.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    with pytest.raises(OptionError, match="hint 'fast' is not one of latency, throughput"):
        OpenVINOBackend(model, hint="fast")
    with pytest.raises(OptionError, match="precision 'f16' is not one of f32, bf16"):
        OpenVINOBackend(model, precision="f16")
    with pytest.raises(OptionError, match="openvino backend runs on the CPU only"):
        pipeline(model.parent, backend="openvino", device="cuda")
    with pytest.raises(OptionError, match="the onnxruntime backend takes no option.s. hint; it takes low_memory"):
        pipeline(model.parent, backend_options={"hint": "latency"})


@pytest.mark.parametrize("task", ["question-answering", "fill-mask", "feature-extraction"])
def test_bf16_runs_where_the_cpu_has_it_and_is_refused_where_not(task, handmade_bundle):
    # ALBERT's own initializer range: the test models' 0.5 (peaked scores) turns bf16's 8-bit mantissa into logit
    # differences up to 1.3 (measured on an AVX512-BF16 EPYC), which says nothing about real models
    model = load_bundle(handmade_bundle(task, initializer_range=0.02)).model_path
    if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        backend = OpenVINOBackend(model, precision="bf16")
        for shape in (2, 9), (1, 32):
            feed = random_inputs(shape, vocab=100)
            assert_close(backend.infer(feed), OnnxRuntimeBackend(model).infer(feed), "bf16")
    else:
        with pytest.raises(OptionError, match="has no bf16 support in OpenVINO .*; use precision f32"):
            OpenVINOBackend(model, precision="bf16")


def test_an_op_openvino_cannot_convert_is_one_clear_line(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("QOrderedMatMul", ["input_ids"], ["logits"], domain="com.microsoft")], "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1])])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]),
              str(path))
    with pytest.raises(BackendError) as caught:
        OpenVINOBackend(path)
    assert str(caught.value) == (f"OpenVINO cannot run {path}: it has no conversion for com.microsoft.QOrderedMatMul; "
                                 "export with --optimize portable (standard ONNX ops only), or use --backend onnxruntime")


def test_albert_run_backend_openvino(handmade_bundle, tmp_path):
    bundle = handmade_bundle("fill-mask")
    text = botchan_masked(1, seed=9)[0]

    def run(*extra):
        done = subprocess.run([sys.executable, "-m", "runtime.cli", str(bundle), "-", *extra], input=text + "\n",
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert_same(run("--backend", "openvino"), run())


def test_runtime_imports_without_openvino(tmp_path):
    blocker = tmp_path / "openvino"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('blocked for the test')\n")
    code = ("import runtime, runtime.backends.openvino as m\n"
            "try:\n    m._import_openvino()\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": f"{tmp_path}:{os.getcwd()}", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("BackendError the openvino backend needs the `openvino` package")
