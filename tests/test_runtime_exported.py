"""Bundles written by albert_export.export (unrolled and Loop) served by runtime.pipeline, against transformers'
pipelines on the same checkpoint: the whole product path, build side to torch-free answers."""
from __future__ import annotations

import pytest
import torch
from transformers import pipeline as hf_pipeline

from albert_export import export
from runtime import pipeline
from tests.handmade import hf_tokenizer, tiny_model
from tests.test_runtime_heads import assert_same, botchan_masked, mrpc_pairs

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    made = {}
    for task, config in (("fill-mask", {}), ("text-classification", {"num_labels": 3})):
        model = tiny_model(task, **config)
        model.save_pretrained(root / task)
        hf_tokenizer().save_pretrained(root / task)
        made[task] = (root / task, model)
    return made


@pytest.mark.parametrize("layers", ["unrolled", "loop"])
def test_exported_fill_mask_and_classifier_match_hf(checkpoints, tmp_path, layers):
    # atol: the exporter's own check; these peaked random weights give logits of magnitude ~10
    checkpoint, model = checkpoints["fill-mask"]
    bundle = export(checkpoint, "fill-mask", tmp_path / "fm", layers=layers, atol=1e-3, log=lambda _: None)
    texts = botchan_masked(5, seed=31) + botchan_masked(1, masks=2, seed=32)
    assert_same(pipeline(bundle)(texts), hf_pipeline("fill-mask", model=model, tokenizer=hf_tokenizer())(texts))

    checkpoint, model = checkpoints["text-classification"]
    bundle = export(checkpoint, "cls", tmp_path / "cls", layers=layers, atol=1e-3, log=lambda _: None)
    hf = hf_pipeline("text-classification", model=model, tokenizer=hf_tokenizer())
    pairs = mrpc_pairs()[:3]
    assert_same(pipeline(bundle)(pairs, top_k=None, truncation=True), hf(pairs, top_k=None, truncation=True))
    assert_same(pipeline(bundle)(pairs[0]["text"]), hf(pairs[0]["text"]))
