"""TensorRT-RTX builds strongly typed plans on this CPU-only machine; the plans cannot run here."""
import warnings

import pytest
import torch

import albert_export
from albert_export.cli import main as cli_main
from albert_export.config import AlbertConfig
from albert_export.engine import EngineError, default_profile, engine_from_onnx, import_tensorrt, parse_shapes
from albert_export.exporter import ExportOptionError
from albert_export.modeling import model_for_task
from runtime.bundle import ENGINE, load_bundle
from runtime.taskspec import INPUT_NAMES



class OutputsAsTuple(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return tuple(self.model(input_ids, attention_mask, token_type_ids).values())


@pytest.fixture(scope="module")
def qa_onnx(tmp_path_factory):
    torch.manual_seed(0)
    config = AlbertConfig(vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    model = model_for_task(config, "question-answering").eval()
    path = tmp_path_factory.mktemp("engine") / "model.onnx"
    ids = torch.ones(2, 7, dtype=torch.long)
    axes = {"batch": 0, "sequence": 1}
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(OutputsAsTuple(model), (ids, ids, ids * 0), str(path), input_names=names,
                          output_names=["start_logits", "end_logits"], opset_version=17, dynamo=False,
                          dynamic_axes={n: {v: k for k, v in axes.items()} for n in names})
    return path


def test_plan_is_built_for_the_requested_profile_and_capabilities(qa_onnx):
    plan, info = engine_from_onnx(qa_onnx, parse_shapes("1x1:2x16:4x64"), compute_capabilities=("8.6",),
                                  log=lambda _: None)
    trt = import_tensorrt()
    assert len(plan) > 100_000
    assert info.flavour == "tensorrt_rtx" and info.version == trt.__version__
    assert info.compute_capabilities == ["8.6"]
    assert info.profiles == [{name: [[1, 1], [2, 16], [4, 64]]
                              for name in ("input_ids", "attention_mask", "token_type_ids")}]


def test_a_graph_tensorrt_cannot_parse_is_refused_by_name(tmp_path):
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(EngineError, match="TensorRT could not parse model.onnx"):
        engine_from_onnx(broken, parse_shapes("1x1:1x8:1x16"), log=lambda _: None)


@pytest.mark.parametrize(
    "text, rank, message",
    [
        ("1x1:8x128", 2, "must be MIN:OPT:MAX"),
        ("1x1:8x128:32", 2, "must be MIN:OPT:MAX"),
        ("1x1:8x128:4x384", 2, "MIN <= OPT <= MAX"),
        ("0x1:8x128:32x384", 2, "at least 1"),
        ("1x1:8x128:32x384", 3, "needs 3 dims \\(BxCxS\\)"),
        ("1x1:8x128:32x1024", 2, "exceeds the model's 512 positions"),
    ],
)
def test_bad_shapes_get_one_clear_error(text, rank, message):
    with pytest.raises(EngineError, match=message):
        parse_shapes(text, rank=rank, max_positions=512)


def test_multiple_choice_shapes_have_three_dims():
    profile = parse_shapes("1x2x1:4x4x64:8x4x128", rank=3)
    assert profile.as_lists() == [[1, 2, 1], [4, 4, 64], [8, 4, 128]]


@pytest.fixture(scope="module")
def checkpoint(shared_checkpoint):
    return shared_checkpoint("question-answering")[0]


@pytest.mark.parametrize("layers", ["unrolled", "loop"])
def test_export_with_tensorrt_adds_a_checksummed_plan_and_its_profile(checkpoint, tmp_path, layers):
    out = albert_export.export(checkpoint, "qa", tmp_path / "b", layers=layers, engine="tensorrt",
                               shapes="1x1:2x16:4x40", log=lambda _: None)
    bundle = load_bundle(out)  # verifies every sha256, engine.plan included
    assert bundle.engine_path == out / ENGINE and ENGINE in bundle.manifest.files
    assert bundle.engine_path.stat().st_size > 100_000
    assert bundle.manifest.engine.flavour == "tensorrt_rtx"
    assert bundle.manifest.engine.profiles == [{name: [[1, 1], [2, 16], [4, 40]] for name in INPUT_NAMES}]
    assert bundle.manifest.engine.compute_capabilities == ["8.0", "8.6", "8.9", "12.0"]


def test_default_profile_spans_all_positions():
    assert default_profile(2, 40).as_lists() == [[1, 1], [8, 40], [32, 40]]
    assert default_profile(2, 512).as_lists() == [[1, 1], [8, 128], [32, 512]]
    assert default_profile(3, 512).as_lists() == [[1, 2, 1], [8, 4, 128], [16, 8, 512]]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"shapes": "1x1:2x16:4x40"}, "--shapes sets the TensorRT optimization profile; add --engine tensorrt"),
        ({"engine": "tensorrt", "shapes": "1x1:2x16"}, "must be MIN:OPT:MAX"),
        ({"engine": "tensorrt", "shapes": "1x1:2x16:4x41"}, "exceeds the model's 40 positions"),
        ({"engine": "openvino"}, "--engine 'openvino' is not an engine"),
        ({"engine": "tensorrt", "optimize": "onnxruntime"}, "onnxruntime-only ops .* use --optimize portable or none"),
    ],
)
def test_engine_options_are_refused_and_nothing_is_written(checkpoint, tmp_path, options, message):
    with pytest.raises((EngineError, ExportOptionError), match=message):
        albert_export.export(checkpoint, "qa", tmp_path / "b", log=lambda _: None, **options)
    assert list(tmp_path.iterdir()) == []


def test_cli_builds_an_engine(checkpoint, tmp_path, capsys):
    code = cli_main(["--model", str(checkpoint), "--task", "qa", "--output", str(tmp_path / "b"),
                     "--engine", "tensorrt", "--shapes", "1x1:1x8:2x16", "--no-validate"])
    assert code == 0 and (tmp_path / "b" / ENGINE).is_file()
    assert "built engine.plan" in capsys.readouterr().err
