"""The embedded default model: its files load for every task, it is small, and it learned something."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from tokenizers import Tokenizer

import albert_export
from albert_export.checkpoint import HeadInitializedWarning, default_model_dir
from devtools import accuracy
from devtools import pretraining_data as data
from devtools.train import DEFAULT_CORPUS, torch_logits, train_tokenizer
from runtime.taskspec import TASKS
from tests.export_helpers import assert_transformers_loads_pretraining

DEFAULT = default_model_dir()
SHIPPED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
SIZE_LIMIT = 8_000_000  # bytes, everything under default_model/
TRAINED_HEADS = {"fill-mask", "pretraining", "feature-extraction"}  # all their weights are in the checkpoint


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_file(str(DEFAULT / "tokenizer.json"))


@pytest.fixture(scope="module")
def pretraining_model():
    return albert_export.from_pretrained(None, "pretraining")


@pytest.fixture(scope="module")
def report():
    return json.loads((DEFAULT / "training_report.json").read_text())


def test_shipped_files_exist_and_fit_the_size_budget():
    for name in SHIPPED:
        assert (DEFAULT / name).is_file(), name
    total = sum(path.stat().st_size for path in DEFAULT.iterdir() if path.is_file())
    assert total <= SIZE_LIMIT, f"default_model/ holds {total} bytes"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_loads_and_only_untrained_heads_warn(task, tokenizer):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = albert_export.from_pretrained(None, task)
    initialized = [w for w in caught if issubclass(w.category, HeadInitializedWarning)]
    if task in TRAINED_HEADS:
        assert initialized == []
    else:
        assert len(initialized) == 1
    shape = (2, 3, 9) if TASKS[task].multiple_choice else (2, 9)
    ids = torch.randint(data.FIRST_ORDINARY_ID, tokenizer.get_vocab_size(), shape)
    with torch.no_grad():
        outputs = model(ids, torch.ones_like(ids), torch.zeros_like(ids))
    assert set(outputs) == set(TASKS[task].outputs)
    assert all(torch.isfinite(value).all() for value in outputs.values())


def test_initialized_heads_are_the_same_every_load():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = albert_export.from_pretrained(None, "qa").qa_outputs.weight
        second = albert_export.from_pretrained(None, "qa").qa_outputs.weight
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_transformers_loads_the_checkpoint_and_computes_the_same(pretraining_model):
    theirs, hf_tokenizer = assert_transformers_loads_pretraining(
        DEFAULT, pretraining_model, ["It was a [MASK] day.", "The Red Shirt laughed."], ["I went home.", "Fine."])
    assert hf_tokenizer.model_max_length == theirs.config.max_position_embeddings


def test_hf_tokenizer_and_shipped_tokenizer_give_the_same_ids(tokenizer):
    from transformers import AlbertTokenizerFast

    from_dir = AlbertTokenizerFast.from_pretrained(DEFAULT)
    from_file = AlbertTokenizerFast(tokenizer_file=str(DEFAULT / "tokenizer.json"))
    texts = accuracy.heldout_texts()[:20] + ["I ``never'' said [MASK] to Café  NAÏVE people."]
    for text in texts:
        expected = tokenizer.encode(text).ids
        assert from_dir(text)["input_ids"] == expected
        assert from_file(text)["input_ids"] == expected
    assert [from_dir.pad_token_id, from_dir.unk_token_id, from_dir.cls_token_id, from_dir.sep_token_id,
            from_dir.mask_token_id] == [0, 1, 2, 3, 4]


def test_training_on_the_repository_corpus_gives_the_shipped_tokenizer(report):
    assert report["corpus"] == DEFAULT_CORPUS.name
    train_lines, _ = data.split_corpus(DEFAULT_CORPUS)
    trained = train_tokenizer(train_lines, report["settings"]["vocab_size"])
    assert json.loads(trained.to_str()) == json.loads((DEFAULT / "tokenizer.json").read_text())


def test_heldout_mlm_top1_is_well_above_the_unigram_baseline(tokenizer, pretraining_model):
    train_lines, heldout_lines = data.split_corpus(DEFAULT_CORPUS)
    heldout = data.sentences_of(heldout_lines)
    assert heldout == accuracy.heldout_texts()  # the shipped held-out text is the book's last tenth
    plain, masked = data.evaluation_examples(tokenizer, heldout[:120], 128)
    counts = data.token_counts(data.encode_sentences(tokenizer, data.sentences_of(train_lines)),
                               tokenizer.get_vocab_size())
    model = accuracy.mlm_accuracy(torch_logits(pretraining_model), masked)
    baseline = accuracy.unigram_baseline(counts, masked)
    assert model["masked_tokens"] > 200
    # the shipped model: 0.075 vs 0.043 top-1 on all held-out sentences (training_report.json)
    assert model["top1"] > 1.4 * baseline["top1"] and model["top1"] > baseline["top1"] + 0.02
    assert model["top5"] > baseline["top5"]


def test_report_matches_the_shipped_weights(report, tokenizer, pretraining_model):
    heldout = report["heldout"]
    assert heldout["mlm"]["top1"] > heldout["unigram_baseline_mlm"]["top1"]
    plain, masked = data.evaluation_examples(tokenizer, accuracy.heldout_texts(), 128, seed=report["settings"]["seed"])
    predict = torch_logits(pretraining_model)
    assert accuracy.mlm_accuracy(predict, masked) == heldout["mlm"]
    assert accuracy.sop_accuracy(predict, plain) == heldout["sop"]


def test_demo_sentences_are_held_out_and_completed_right(report, tokenizer):
    lines = (DEFAULT / "heldout_masked.txt").read_text().splitlines()
    assert 5 <= len(lines) <= 10
    assert lines == [item["text"] for item in report["demo"]]
    heldout = " ".join(accuracy.heldout_texts())
    model = albert_export.from_pretrained(None, "fill-mask")
    for item in report["demo"]:
        assert item["text"].count("[MASK]") == 1
        assert item["text"].replace("[MASK]", item["answer"]).lower() in heldout.lower()
        encoding = tokenizer.encode(item["text"])
        with torch.no_grad():
            logits = model(torch.tensor([encoding.ids]))["logits"][0, encoding.ids.index(data.MASK)]
        assert tokenizer.id_to_token(int(logits.argmax())) == "▁" + item["answer"]

