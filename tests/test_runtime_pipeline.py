"""runtime.pipeline on real bundles (ONNX from torch.onnx.export, onnxruntime CPU) against transformers'
pipelines on the same weights, plus every way a bundle or an option can be wrong."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import pipeline as hf_pipeline

from runtime import pipeline
from runtime.bundle import CONFIG, MANIFEST, MODEL, TOKENIZER, BundleError, sha256_file
from runtime.errors import BackendError, InputError, OptionError
from runtime.taskspec import UnknownTaskError
from tests.handmade import hf_tokenizer, tiny_model
from tests.test_runtime_heads import assert_same, botchan_masked, mrpc_pairs, swag_items

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fill_mask_bundle(handmade_bundle):
    return handmade_bundle("fill-mask")


def test_fill_mask_bundle_matches_hf(fill_mask_bundle):
    fill = pipeline(fill_mask_bundle, threads=1)
    hf = hf_pipeline("fill-mask", model=tiny_model("fill-mask"), tokenizer=hf_tokenizer())
    texts = botchan_masked(6, seed=21) + botchan_masked(2, masks=2, seed=22)
    assert_same(fill(texts), hf(texts))
    seed_text = "Plants create [MASK] through photosynthesis."
    assert_same(fill(seed_text, top_k=3), hf(seed_text, top_k=3))
    assert_same(pipeline(fill_mask_bundle, top_k=2, batch_size=3)(texts), hf(texts, top_k=2))
    assert_same(fill(texts, batch_size=1, targets=hf.tokenizer.convert_ids_to_tokens([20, 33])),
                hf(texts, targets=hf.tokenizer.convert_ids_to_tokens([20, 33])))


def test_text_classification_bundle_matches_hf_including_pipeline_level_top_k(handmade_bundle):
    bundle = handmade_bundle("text-classification", num_labels=3)
    model = tiny_model("text-classification", num_labels=3)
    pairs = mrpc_pairs()[:2]
    texts = [p["text"] for p in pairs]
    for defaults in ({}, {"top_k": None}, {"function_to_apply": "sigmoid"}):
        ours = pipeline(bundle, **defaults)
        hf = hf_pipeline("text-classification", model=model, tokenizer=hf_tokenizer(), **defaults)
        for call in ({}, {"top_k": 2}):
            assert_same(ours(texts[0], **call), hf(texts[0], **call))
            assert_same(ours(texts, **call), hf(texts, **call))
            assert_same(ours(pairs[0], **call), hf(pairs[0], **call))


def test_feature_extraction_multiple_choice_pretraining_bundles(handmade_bundle):
    texts = [p["text"] for p in mrpc_pairs()[:2]]
    features = pipeline(handmade_bundle("feature-extraction"))
    hf = hf_pipeline("feature-extraction", model=tiny_model("feature-extraction"), tokenizer=hf_tokenizer())
    assert_same(features(texts), hf(texts))
    assert len(features(texts[0], pooling="mean")) == 32

    choose = pipeline(handmade_bundle("multiple-choice"))
    item = swag_items()[0]
    model = tiny_model("multiple-choice")
    encoded = hf_tokenizer()([item["prompt"]] * 4, item["choices"], padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**{k: v[None] for k, v in encoded.items()}).logits.softmax(-1)[0].numpy()
    result = choose(item)
    assert choose(prompt=item["prompt"], choices=item["choices"]) == result
    assert [r["choice"] for r in result] == np.argsort(-probs, kind="stable").tolist()
    assert np.allclose([r["score"] for r in result], np.sort(probs)[::-1], atol=1e-4)

    pretrain = pipeline(handmade_bundle("pretraining"), top_k=2)
    result = pretrain({"text": "The [MASK] was here.", "text_pair": "He left."})
    assert set(result) == {"masks", "sentence_order"} and len(result["masks"]) == 1 and len(result["masks"][0]) == 2
    assert sum(e["score"] for e in result["sentence_order"]) == pytest.approx(1.0, abs=1e-5)


def test_task_option_and_parameter_checks(fill_mask_bundle):
    assert pipeline(fill_mask_bundle, task="mlm").task == "fill-mask"
    with pytest.raises(OptionError, match="exported for fill-mask, not text-classification"):
        pipeline(fill_mask_bundle, task="text-classification")
    with pytest.raises(UnknownTaskError, match="unknown task"):
        pipeline(fill_mask_bundle, task="summarization")
    with pytest.raises(OptionError, match="fill-mask does not take pooling"):
        pipeline(fill_mask_bundle, pooling="cls")
    fill = pipeline(fill_mask_bundle)
    with pytest.raises(OptionError, match="does not take aggregation_strategy"):
        fill("a [MASK]", aggregation_strategy="simple")
    with pytest.raises(OptionError, match="batch_size"):
        fill("a [MASK]", batch_size=0)
    with pytest.raises(OptionError, match="tensorrt backend runs on a GPU only"):
        pipeline(fill_mask_bundle, backend="tensorrt", device="cpu")
    with pytest.raises(BundleError, match="no engine.plan"):
        pipeline(fill_mask_bundle, backend="tensorrt", device="cuda")
    with pytest.raises(OptionError, match="backend 'tvm'"):
        pipeline(fill_mask_bundle, backend="tvm")
    with pytest.raises(BackendError, match="CUDAExecutionProvider|not available"):
        pipeline(fill_mask_bundle, device="cuda")
    with pytest.raises(OptionError, match="graph_optimization_level"):
        pipeline(fill_mask_bundle, graph_optimization_level="max")


@pytest.mark.parametrize("text", ["", " \t ", None])
def test_empty_text_is_refused(fill_mask_bundle, text):
    with pytest.raises(InputError, match="empty|needs an input"):
        pipeline(fill_mask_bundle)(text)


def _damaged_copy(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy


def test_missing_and_corrupt_bundles(fill_mask_bundle, tmp_path):
    with pytest.raises(BundleError, match="not a directory"):
        pipeline(tmp_path / "nowhere")
    copy = _damaged_copy(fill_mask_bundle, tmp_path)
    (copy / MANIFEST).write_text("{ not json")
    with pytest.raises(BundleError, match="manifest.json is not valid JSON"):
        pipeline(copy)
    manifest = json.loads((fill_mask_bundle / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(BundleError, match="format 99 is not supported"):
        pipeline(copy)
    (copy / MANIFEST).write_text(json.dumps({k: v for k, v in manifest.items() if k != "inputs"}))
    with pytest.raises(BundleError, match="malformed"):
        pipeline(copy)
    (copy / MANIFEST).unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        pipeline(copy)


def test_checksum_mismatch_and_unverified_corruption(fill_mask_bundle, tmp_path):
    copy = _damaged_copy(fill_mask_bundle, tmp_path)
    with open(copy / MODEL, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00garbage\x00")
    with pytest.raises(BundleError, match="checksum mismatch for model.onnx"):
        pipeline(copy)
    with pytest.raises(BackendError, match="onnxruntime cannot load"):
        pipeline(copy, verify=False)
    shutil.copy(fill_mask_bundle / MODEL, copy / MODEL)
    (copy / TOKENIZER).write_text("{}")
    with pytest.raises(BundleError, match="checksum mismatch for tokenizer.json"):
        pipeline(copy)
    with pytest.raises(BundleError, match="tokenizer.json cannot be loaded"):
        pipeline(copy, verify=False)
    (copy / TOKENIZER).unlink()
    with pytest.raises(BundleError, match="tokenizer.json is missing"):
        pipeline(copy)
    assert sha256_file(fill_mask_bundle / CONFIG) == json.loads((fill_mask_bundle / MANIFEST).read_text())["files"][CONFIG]


def test_every_head_is_a_head():
    """The Head protocol: each task's module has its CallForm and the stages settings / preprocess / postprocess
    (no run_each that tokenizes, runs and decodes in one call)."""
    from runtime.pipelines import HEAD_MODULES, head_for
    from runtime.tasks.base import CallForm, Head

    for task in HEAD_MODULES:
        head = head_for(task)
        assert isinstance(head, Head) and isinstance(head.CALL, CallForm), task
        assert not hasattr(head, "run_each") and not hasattr(head, "run"), task
