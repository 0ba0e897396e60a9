"""The accuracy oracle on bundles of the default model: written here by hand with torch.onnx.export (the
manifest/ONNX contract of ../shared/DESIGN.md), and, when albert_export.export is there, by the exporter."""
from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

import albert_export
from albert_export.checkpoint import default_model_dir
from devtools import accuracy
from runtime.bundle import CONFIG, MANIFEST, MODEL, TOKENIZER, Manifest, TensorSpec, TokenizerSettings, sha256_file
from runtime.taskspec import INPUT_NAMES, TASKS, dynamic_axes, input_dims

DEFAULT = default_model_dir()


class _Tuple(torch.nn.Module):
    def __init__(self, model, outputs):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, input_ids, attention_mask, token_type_ids):
        result = self.model(input_ids, attention_mask, token_type_ids)
        return tuple(result[name] for name in self.outputs)


def handmade_bundle(directory, task, model=None):
    """The default model as a bundle for `task` (fp32, unrolled), written without albert_export.export."""
    spec = TASKS[task]
    model = model if model is not None else albert_export.from_pretrained(None, task)
    directory.mkdir(parents=True)
    example = (torch.randint(5, 100, (2, 7)), torch.ones(2, 7, dtype=torch.int64), torch.zeros(2, 7, dtype=torch.int64))
    dynamic = {name: dict(enumerate(input_dims(task))) for name in INPUT_NAMES}
    for name, dims in zip(spec.outputs, spec.output_dims):
        dynamic[name] = dynamic_axes(dims)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Tuple(model, spec.outputs), example, str(directory / MODEL), input_names=list(INPUT_NAMES),
                          output_names=list(spec.outputs), dynamic_axes=dynamic, opset_version=17, dynamo=False)
    shutil.copy(DEFAULT / TOKENIZER, directory / TOKENIZER)
    shutil.copy(DEFAULT / CONFIG, directory / CONFIG)
    manifest = Manifest(
        task=task, layers="unrolled", precision="fp32", opset=17,
        inputs=[TensorSpec(name, "int64", list(input_dims(task))) for name in INPUT_NAMES],
        outputs=[TensorSpec(name, "float32", list(dims)) for name, dims in zip(spec.outputs, spec.output_dims)],
        tokenizer=TokenizerSettings(max_length=128, do_lower_case=True,
                                    special_tokens={"cls": "[CLS]", "sep": "[SEP]", "pad": "<pad>", "mask": "[MASK]",
                                                    "unk": "<unk>"}),
        files={name: sha256_file(directory / name) for name in (MODEL, TOKENIZER, CONFIG)},
        producer={"name": "tests/test_accuracy.py", "version": "0"},
    )
    (directory / MANIFEST).write_text(manifest.to_json())
    return directory


def half_precision_weights(task):
    """The default model with every weight rounded through fp16: a stand-in for a lower-precision bundle."""
    model = albert_export.from_pretrained(None, task)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())
    return model


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle")
    return {
        "pretraining": handmade_bundle(root / "pretraining", "pretraining"),
        "pretraining-fp16-weights": handmade_bundle(root / "rounded", "pretraining",
                                                    half_precision_weights("pretraining")),
        "fill-mask": handmade_bundle(root / "fill-mask", "fill-mask"),
    }


def test_bundle_accuracy_equals_the_training_report(bundles):
    report = json.loads((DEFAULT / "training_report.json").read_text())["heldout"]
    measured = accuracy.bundle_accuracy(bundles["pretraining"])
    assert measured["mlm"]["masked_tokens"] == report["mlm"]["masked_tokens"]
    assert measured["mlm"]["top1"] == pytest.approx(report["mlm"]["top1"], abs=0.003)
    assert measured["mlm"]["top5"] == pytest.approx(report["mlm"]["top5"], abs=0.003)
    assert measured["sop"]["accuracy"] == pytest.approx(report["sop"]["accuracy"], abs=0.03)
    assert accuracy.bundle_accuracy(bundles["fill-mask"])["sop"] is None


def test_a_bundle_agrees_fully_with_itself(bundles):
    result = accuracy.bundle_agreement(bundles["pretraining"], bundles["pretraining"])
    assert result["fill_mask_top1_agreement"] == 1.0 and result["sop_agreement"] == 1.0
    assert result["a"] == result["b"]


def test_fill_mask_and_pretraining_bundles_agree_on_tokens_and_skip_sop(bundles):
    result = accuracy.bundle_agreement(bundles["pretraining"], bundles["fill-mask"])
    assert result["fill_mask_top1_agreement"] == 1.0
    assert result["sop_agreement"] is None and result["b"]["sop_accuracy"] is None


def test_rounded_weights_agree_mostly_but_a_damaged_model_does_not(bundles, tmp_path):
    rounded = accuracy.bundle_agreement(bundles["pretraining"], bundles["pretraining-fp16-weights"])
    assert rounded["fill_mask_top1_agreement"] > 0.97 and rounded["sop_agreement"] > 0.9

    damaged = albert_export.from_pretrained(None, "pretraining")
    with torch.no_grad():
        damaged.albert.encoder.albert_layer_groups[0].albert_layers[0].ffn.weight.mul_(-1.0)
    result = accuracy.bundle_agreement(bundles["pretraining"], handmade_bundle(tmp_path / "damaged", "pretraining",
                                                                               damaged))
    assert result["fill_mask_top1_agreement"] < 0.9
    assert result["b"]["mlm_top1"] < result["a"]["mlm_top1"]


def test_given_texts_replace_the_heldout_sentences(bundles):
    texts = ["The headmaster looked at me for a long time.", "I said nothing and went back to my room."]
    result = accuracy.bundle_agreement(bundles["pretraining"], bundles["fill-mask"], texts=texts)
    assert result["examples"] == 2 and 0 < result["masked_tokens"] < 10  # one pair, in order and swapped
    with pytest.raises(accuracy.AccuracyError, match="no non-empty text"):
        accuracy.bundle_agreement(bundles["pretraining"], bundles["fill-mask"], texts=["  "])


def test_bundles_of_other_tasks_or_other_vocabularies_are_refused(bundles, tmp_path):
    qa = handmade_bundle(tmp_path / "qa", "question-answering", albert_export.from_pretrained(None, "qa"))
    with pytest.raises(accuracy.AccuracyError, match="question-answering bundle"):
        accuracy.bundle_accuracy(qa)
    other = tmp_path / "other-vocab"
    shutil.copytree(bundles["fill-mask"], other)
    vocabulary = json.loads((other / TOKENIZER).read_text())
    vocabulary["model"]["vocab"][10][0] = "▁renamed"
    (other / TOKENIZER).write_text(json.dumps(vocabulary))
    manifest = json.loads((other / MANIFEST).read_text())
    manifest["files"][TOKENIZER] = sha256_file(other / TOKENIZER)
    (other / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(accuracy.AccuracyError, match="different vocabularies"):
        accuracy.bundle_agreement(bundles["fill-mask"], other)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The default model through the real exporter: fp32 and fp16 pretraining bundles."""
    root = tmp_path_factory.mktemp("exported")
    quiet = lambda message: None  # noqa: E731
    return {
        "fp32": albert_export.export(None, "pretraining", root / "fp32", log=quiet),
        "fp16": albert_export.export(None, "pretraining", root / "fp16", fp16=True, log=quiet),
    }


def test_exported_fp32_bundle_scores_as_the_report_and_fp16_agrees(exported):
    report = json.loads((DEFAULT / "training_report.json").read_text())["heldout"]
    fp32 = accuracy.bundle_accuracy(exported["fp32"])
    assert fp32["mlm"]["top1"] == pytest.approx(report["mlm"]["top1"], abs=0.003)
    result = accuracy.bundle_agreement(exported["fp32"], exported["fp16"])
    assert result["fill_mask_top1_agreement"] > 0.97 and result["sop_agreement"] > 0.9
    assert result["b"]["mlm_top1"] == pytest.approx(result["a"]["mlm_top1"], abs=0.02)
