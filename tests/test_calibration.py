"""Calibration: the data loaders on the shared data, tokenized batches, range collection in ORT (unrolled and Loop,
body tensors as scan outputs), the three methods, the table, the accuracy report, and clear errors."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from onnx import numpy_helper
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from calibration import (
    CalibrationDataError, CalibrationError, CalibrationTable, Example, Histogram, accuracy_report,
    calibration_batches, collect_histograms, int8_from_fp32, load_examples, ranges, select,
)
from calibration.agreement import BUILTIN_HELD_OUT, HELD_OUT_SAMPLES, MIN_AGREEMENT, held_out_examples
from calibration.data import DEFAULT_DATA
from graphs.passes.qdq import quantization_targets
from graphs.walk import all_graphs
from runtime.tokenizer import load_tokenizer
from tests.conftest import DATA
from tests.precision_graphs import loop_graph, run, sample_inputs, tiny_model, unrolled_graph

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    """A word-level tokenizer with ALBERT's special tokens and pair template (ids < the tiny vocab of 120)."""
    words = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(100)]
    vocab = {word: i for i, word in enumerate(words)}
    built = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    built.pre_tokenizer = pre_tokenizers.Whitespace()
    built.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    built.save(str(path))
    return load_tokenizer(path)


# --- data -----------------------------------------------------------------------------------------------

def test_squad_json_gives_question_context_pairs():
    examples = load_examples(DATA / "squad_v2_dev_sample.json")
    assert len(examples) == 14
    assert all(e.question and e.text_pair for e in examples)
    assert examples[0].text == "In what country is Normandy located?"
    assert examples[0].text_pair.startswith("The Normans")


def test_text_lines_skip_blanks_and_the_byte_order_mark():
    examples = load_examples(DATA / "botchan.txt")
    lines = [l for l in (DATA / "botchan.txt").read_text(encoding="utf-8-sig").splitlines() if l.strip()]
    assert len(examples) == len(lines) > 3000
    assert examples[0].text.startswith("Project Gutenberg")


@pytest.mark.parametrize("name, check", [
    ("conll2003_sample.jsonl", lambda e: e.text.startswith("He was the 27th pitcher") and not e.choices),
    ("swag_sample.jsonl", lambda e: len(e.choices) == 4 and e.choices[0].startswith("A drum line passes")),
])
def test_jsonl_files_of_the_shared_data(name, check):
    examples = load_examples(DATA / name)
    assert len(examples) == 10 and check(examples[0])


def test_jsonl_fields_text_pair_question_prompt(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(o) for o in [
        {"text": "a b", "text_pair": "c"}, {"question": "q?", "context": "ctx"},
        {"prompt": "p", "choices": ["x", "y"]}, "just a string", {"sentence1": "s1", "sentence2": "s2"},
    ]) + "\n\n")
    assert load_examples(path) == [
        Example("a b", "c"), Example("q?", "ctx", question=True), Example("p", choices=("x", "y")),
        Example("just a string"), Example("s1", "s2"),
    ]


def test_builtin_default_is_shipped_and_covers_every_kind():
    examples = load_examples(None)
    assert DEFAULT_DATA.is_file() and len(examples) >= 30
    assert any(e.question for e in examples) and any(e.choices for e in examples)
    assert any(e.text_pair and not e.question for e in examples)


@pytest.mark.parametrize("content, suffix, message", [
    (None, ".txt", "does not exist"),
    ("", ".txt", "is empty"),
    ("{not json", ".json", "invalid JSON at line 1"),
    ('{"text": "ok"}\n{"label": 1}\n', ".jsonl", r"line 2: no text field"),
    ('{"text": "ok"}\nnot json\n', ".jsonl", r"line 2 is not JSON"),
    ('{"data": []}', ".json", "SQuAD-style JSON file with no"),
    (b"\xff\xfe\x00binary", ".txt", "not UTF-8 text"),
])
def test_bad_calibration_files_are_clear_errors(tmp_path, content, suffix, message):
    path = tmp_path / f"data{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(CalibrationDataError, match=message):
        load_examples(path)


def test_select_spreads_samples_over_the_file():
    examples = [Example(str(i)) for i in range(100)]
    chosen = select(examples, 5)
    assert [e.text for e in chosen] == ["0", "25", "50", "74", "99"]
    assert select(examples[:3], 5) == examples[:3]
    with pytest.raises(CalibrationDataError, match="at least 1"):
        select(examples, 0)


def test_batches_are_tokenized_as_the_runtime_and_padded(tokenizer):
    examples = [Example("w1 w2 w3"), Example("w4"), Example("w5 w6", "w7"),
                Example("w8 w9", "w10 " * 50, question=True)]
    batches = calibration_batches(tokenizer, "text-classification", examples, batch_size=3, max_length=16)
    assert [b["input_ids"].shape for b in batches] == [(3, 6), (1, 16)]
    first = batches[0]
    assert first["input_ids"][0].tolist() == [2, 6, 7, 8, 3, 0]
    assert first["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0]
    assert first["token_type_ids"][2].tolist() == [0, 0, 0, 0, 1, 1]
    qa = calibration_batches(tokenizer, "question-answering", examples[3:], max_length=16)[0]
    assert qa["input_ids"][0, :4].tolist() == [2, 13, 14, 3]  # the question is kept whole, the context cut
    mc = calibration_batches(tokenizer, "multiple-choice", [Example("w1", choices=("w2", "w3 w4"))])[0]
    assert mc["input_ids"].shape == (1, 2, 6)  # [CLS] w1 [SEP] w3 w4 [SEP]


# --- ranges ---------------------------------------------------------------------------------------------

def test_histogram_methods_order_and_values():
    rng = np.random.default_rng(0)
    histogram = Histogram()
    for _ in range(4):
        histogram.add(rng.normal(size=10000).astype(np.float32))
    histogram.add(np.array([40.0], dtype=np.float32))  # one outlier stretches the range (bins merge)
    minmax = ranges({"t": histogram}, "minmax")["t"]
    percentile = ranges({"t": histogram}, "percentile", 99.9)["t"]
    entropy = ranges({"t": histogram}, "entropy")["t"]
    assert minmax == 40.0
    assert 3.0 < percentile < 4.0  # |N(0,1)| at 99.9% is 3.29
    assert entropy < minmax / 2
    assert len(histogram.counts) <= 2 * histogram.bins


def test_unknown_method_and_bad_percentile():
    histogram = Histogram()
    histogram.add(np.ones(3, dtype=np.float32))
    with pytest.raises(CalibrationError, match="unknown calibration method 'max'"):
        ranges({"t": histogram}, "max")
    with pytest.raises(CalibrationError, match="percentile must be in"):
        ranges({"t": histogram}, "percentile", 0.0)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def batches():
    return [sample_inputs(batch=4, sequence=11, seed=seed) for seed in range(3)]


def test_loop_body_ranges_are_the_max_over_the_unrolled_layers(model, batches):
    """Scan outputs see every iteration: a body tensor's minmax equals the max of that tensor over the layers of
    the unrolled graph (the same computation)."""
    unrolled, loop = unrolled_graph(model), loop_graph(model)
    targets = lambda graph: quantization_targets(graph, activation_products=True)  # noqa: E731 (Softmax outputs too)
    unrolled_amax = ranges(collect_histograms(unrolled, targets(unrolled), batches, progress=False), "minmax")
    loop_amax = ranges(collect_histograms(loop, targets(loop), batches, progress=False), "minmax")
    per_layer_softmax = [v for k, v in unrolled_amax.items() if k.endswith("Softmax_output_0")]
    body_softmax = [v for k, v in loop_amax.items() if k.endswith("Softmax_output_0")]
    assert len(per_layer_softmax) == 3 and len(body_softmax) == 1
    assert body_softmax[0] == pytest.approx(max(per_layer_softmax), rel=1e-6)
    assert len(set(round(v, 6) for v in per_layer_softmax)) > 1, "layers differ although weights are shared"


def test_percentile_never_exceeds_minmax_on_real_activations(model, batches):
    graph = unrolled_graph(model)
    histograms = collect_histograms(graph, quantization_targets(graph), batches, progress=False)
    minmax, percentile = ranges(histograms, "minmax"), ranges(histograms, "percentile", 99.0)
    entropy = ranges(histograms, "entropy")
    assert all(percentile[t] <= minmax[t] for t in minmax)
    assert all(0 < entropy[t] <= minmax[t] for t in minmax)
    assert any(percentile[t] < minmax[t] for t in minmax)


def test_table_round_trip_and_accuracy_report(model, batches, tmp_path):
    graph = loop_graph(model)
    quantized, table, _ = int8_from_fp32(graph, batches, method="entropy", layers="loop", progress=False)
    saved = table.save(tmp_path)
    data = json.loads(saved.read_text())
    assert saved.name == "calibration.json" and data["format"] == 1 and data["method"] == "entropy"
    name, entry = next(iter(data["tensors"].items()))
    assert entry["scale"] == pytest.approx(entry["amax"] / 127)
    graphs = list(all_graphs(quantized.graph))
    quantizer = next(node for graph in graphs for node in graph.node
                     if node.op_type == "QuantizeLinear" and node.input[0] == name)
    in_graph = next(t for graph in graphs for t in graph.initializer if t.name == quantizer.input[1])
    assert entry["scale"] == float(numpy_helper.to_array(in_graph)), "the table records the scale the graph uses"
    assert CalibrationTable.load(tmp_path) == table

    report = accuracy_report(graph, quantized, batches, "question-answering")
    assert report["examples"] == 12
    assert set(report["max_abs_diff"]) == {"start_logits", "end_logits"}
    assert 0 < report["max_abs_diff"]["start_logits"] < 0.5
    assert 0.5 <= report["top1_agreement"]["start_logits"] <= 1.0
    assert 0.5 <= report["qa_span_agreement"] <= 1.0
    same = accuracy_report(graph, graph, batches, "question-answering")
    assert same["qa_span_agreement"] == 1.0 and same["max_abs_diff"]["end_logits"] == 0.0


def test_calibrating_with_tokenized_data_end_to_end(model, tokenizer):
    examples = select(load_examples(DATA / "squad_v2_dev_sample.json"), 6)
    feed = calibration_batches(tokenizer, "question-answering", examples, batch_size=3, max_length=24)
    graph = unrolled_graph(model)
    quantized, table, counts = int8_from_fp32(graph, feed, samples=len(examples), progress=False)
    assert table.samples == 6 and table.batches == 2 and table.method == "percentile"
    sample = sample_inputs(batch=2, sequence=24, seed=5)
    np.testing.assert_allclose(run(quantized, sample)["start_logits"], run(graph, sample)["start_logits"], atol=0.5)


def test_no_batches_is_a_clear_error(model):
    graph = unrolled_graph(model)
    with pytest.raises(CalibrationError, match="no calibration batches"):
        int8_from_fp32(graph, [], progress=False)


# --- the exporter with --int8 -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def qa_checkpoint(tmp_path_factory):
    from tests.export_helpers import save_checkpoint

    directory = tmp_path_factory.mktemp("qa-checkpoint")
    save_checkpoint(directory, "question-answering", vocab_size=1010)  # the test tokenizer's ids reach 1003
    return directory


@pytest.mark.parametrize("layers", ["unrolled", "loop"])
def test_int8_export_writes_table_manifest_and_validates(qa_checkpoint, tmp_path, layers):
    from albert_export.exporter import export
    from runtime.bundle import load_bundle

    path = export(qa_checkpoint, "qa", tmp_path / "bundle", layers=layers, int8=True,
                  calibration_data=DATA / "squad_v2_dev_sample.json", calibration_method="minmax",
                  calibration_samples=10, log=lambda message: None)
    bundle = load_bundle(path)
    manifest = bundle.manifest
    assert manifest.precision == "int8" and "calibration.json" in manifest.files
    assert manifest.extra["calibration"]["method"] == "minmax" and manifest.extra["calibration"]["samples"] == 10
    table = CalibrationTable.load(path)
    assert table.layers == layers and table.samples == 10
    accuracy = manifest.extra["accuracy_vs_fp32"]
    # the 14 SQuAD questions minus the 10 calibrated on, topped up with built-in held-out sentences
    assert accuracy["examples"] == 64
    assert accuracy["data"] == ("4 held-out examples of the calibration data and 60 built-in held-out sentences "
                                "(none calibrated on)")
    # the gate's measures and thresholds are recorded with the validation they passed
    assert manifest.validation.min_agreement == MIN_AGREEMENT["question-answering"]
    assert manifest.validation.agreement == {"start_logits": accuracy["top1_agreement"]["start_logits"],
                                             "end_logits": accuracy["top1_agreement"]["end_logits"],
                                             "span": accuracy["qa_span_agreement"]}
    assert all(manifest.validation.agreement[name] >= share for name, share in MIN_AGREEMENT["question-answering"].items())
    assert set(manifest.validation.max_abs_diff) == {"start_logits", "end_logits"}
    assert manifest.validation.tolerance["start_logits"] == 1.0
    assert manifest.extra["graph"]["tensor_bytes"] < 0.4 * manifest.extra["graph"]["parameter_bytes"]


def shrunk_ranges(monkeypatch, factor: float = 10.0) -> None:
    """A deliberately broken quantization: every activation range `factor` times too small (values clip)."""
    import calibration.quantize

    calibrated = calibration.quantize.ranges
    monkeypatch.setattr(calibration.quantize, "ranges",
                        lambda *args, **kwargs: {name: amax / factor for name, amax in calibrated(*args, **kwargs).items()})


@pytest.mark.parametrize("layers", ["unrolled", "loop"])
def test_a_broken_int8_graph_fails_the_agreement_gate(qa_checkpoint, tmp_path, capsys, monkeypatch, layers):
    """However loose --atol is, answers that do not agree with fp32 fail: exit 1, one line, nothing written."""
    from albert_export.cli import main

    shrunk_ranges(monkeypatch)
    status = main(["-q", "--model", str(qa_checkpoint), "--task", "qa", "--layers", layers, "--int8", "--atol", "100",
                   "--output", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert status == 1
    assert len(err.splitlines()) == 1, err
    assert re.fullmatch(r"albert-export: error: the INT8 graph's top-1 (start_logits|end_logits|span) agrees with "
                        r"fp32 on \d+\.\d% of 64 held-out examples, below the \d+\.0% required; calibrate on more or "
                        r"other data \(--calibration-data, --calibration-method\), or lower --min-agreement\n", err)
    assert sorted(tmp_path.iterdir()) == []  # no bundle, no temporary sibling


def test_min_agreement_overrides_the_gate_and_is_recorded(qa_checkpoint, tmp_path, monkeypatch):
    from albert_export.exporter import export
    from runtime.bundle import load_bundle

    shrunk_ranges(monkeypatch)
    path = export(qa_checkpoint, "qa", tmp_path / "bundle", int8=True, min_agreement=0.0, atol=100.0,
                  log=lambda message: None)
    validation = load_bundle(path).manifest.validation
    assert validation.min_agreement == {"start_logits": 0.0, "end_logits": 0.0, "span": 0.0}
    assert min(validation.agreement.values()) < min(MIN_AGREEMENT["question-answering"].values())  # really broken


def test_the_default_model_passes_the_gate_on_built_in_held_out_text(tmp_path):
    from albert_export.exporter import export
    from runtime.bundle import load_bundle

    manifest = load_bundle(export(None, None, tmp_path / "b", int8=True, log=lambda message: None)).manifest
    assert manifest.extra["calibration"]["samples"] == 128 and manifest.extra["accuracy_vs_fp32"]["examples"] == 64
    assert manifest.extra["accuracy_vs_fp32"]["data"] == "64 built-in held-out sentences (none calibrated on)"
    assert manifest.validation.min_agreement == {"logits": 0.9}
    assert manifest.validation.agreement["logits"] >= 0.9


def test_held_out_examples_are_never_calibration_ones():
    builtin = load_examples(BUILTIN_HELD_OUT)
    default = load_examples()
    assert len(default) == 128 and len(builtin) == HELD_OUT_SAMPLES and not set(default) & set(builtin)
    # data with others: those first (spread), then built-in; an example calibrated on is never held out
    data = [Example(f"sentence {i}") for i in range(100)]
    calibrated = select(data, 90) + [builtin[1]]
    held, where = held_out_examples(data, calibrated, "fill-mask")
    assert len(held) == 64 and len(set(held)) == 64 and not set(held) & set(calibrated)
    assert where == "10 held-out examples of the calibration data and 54 built-in held-out sentences (none calibrated on)"
    with pytest.raises(CalibrationError, match="no held-out examples"):  # calibrated on the built-in ones
        held_out_examples(builtin, builtin, "fill-mask")
    # multiple choice: built-in sentences become 4-way choices, the sentence's own ending first
    choices, _ = held_out_examples([], [], "multiple-choice")
    words = builtin[0].text.split()
    assert choices[0].text == " ".join(words[:len(words) // 2]) and len(choices[0].choices) == 4
    assert choices[0].choices[0] == " ".join(words[len(words) // 2:])


@pytest.mark.parametrize("argv, message", [
    (["--min-agreement", "0.5"], "--min-agreement sets the INT8 graph's required agreement with fp32; add --int8"),
    (["--int8", "--min-agreement", "1.5"], "--min-agreement must be a share between 0 and 1 (e.g. 0.9), got 1.5"),
    (["--fp16", "--int8"], "--fp16 and --int8 exclude each other"),
    (["--calibration-method", "entropy"], "need --int8"),
    (["--int8", "--calibration-samples", "0"], "must be a positive integer"),
    (["--int8", "--calibration-data", "/nonexistent/data.txt"], "is not a file"),
])
def test_cli_precision_option_errors(qa_checkpoint, tmp_path, capsys, argv, message):
    from albert_export.cli import main

    status = main(["--model", str(qa_checkpoint), "--task", "qa", "--output", str(tmp_path / "b"), *argv])
    assert status == 2  # usage: flags that do not combine, or an option value that cannot work
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_cli_bad_calibration_file_fails_cleanly(qa_checkpoint, tmp_path, capsys):
    from albert_export.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"label": 3}\n')
    status = main(["--model", str(qa_checkpoint), "--task", "qa", "--output", str(tmp_path / "b"), "--int8",
                   "--calibration-data", str(bad)])
    assert status == 1
    assert "line 1: no text field" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_precision_bundles_build_tensorrt_rtx_plans(qa_checkpoint, tmp_path, precision):
    """The same file serves TensorRT: strongly typed fp16 casts and Q/DQ (int8 constants only into DQ)."""
    pytest.importorskip("tensorrt_rtx")
    from albert_export.engine import engine_from_onnx, parse_shapes
    from albert_export.exporter import export

    for layers in ("unrolled", "loop"):
        options = {"int8": True, "calibration_samples": 8} if precision == "int8" else {"fp16": True}
        path = export(qa_checkpoint, "qa", tmp_path / layers, layers=layers, optimize="portable", validate=False,
                      log=lambda message: None, **options)
        plan, info = engine_from_onnx(path / "model.onnx", parse_shapes("1x1:1x16:2x40"), log=lambda message: None)
        assert len(plan) > 100_000 and info.flavour == "tensorrt_rtx"
