"""Postprocessing stays linear in the input (issue 19 item 3), checked by counting, not timing: each window reads
each of its Encoding's lists (offsets, ids, word_ids, ...) a bounded number of times, however long it is (every
read builds the whole list, so a read per token costs a window its length squared); QA's duplicate-answer merge
lower-cases each candidate a bounded number of times (HF's scan of every kept answer per candidate does it
candidates^2 / 2 times); fill-mask decodes each chosen token once and each mask's sequence once, never the whole
vocabulary. Long inputs give transformers 4.57's answers."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from runtime.pipelines import call_head
from runtime.tasks import fill_mask
from runtime.tasks import question_answering as qa
from runtime.tasks import token_classification as ner
from tests.conftest import DATA
from tests import test_runtime_ner as ner_tests
from tests import test_runtime_qa as qa_tests
from tests.test_runtime_heads import assert_same, botchan_masked, context
from tests.test_runtime_qa import ctx, hf_qa, model, tokenizer  # noqa: F401 (test_runtime_qa's fixtures)

LISTS = frozenset({"ids", "offsets", "word_ids", "words", "special_tokens_mask", "sequence_ids", "type_ids",
                   "attention_mask", "tokens", "overflowing"})
READS_PER_WINDOW = 8  # what a window may read of each list: a constant, not one read per token


class CountingEncoding:
    """An Encoding that counts the reads of its list properties and its per-token look-ups."""

    def __init__(self, encoding, counts: dict):
        self._encoding, self._counts = encoding, counts

    def __getattr__(self, name):
        value = getattr(self._encoding, name)
        if name in LISTS:
            self._counts[name] = self._counts.get(name, 0) + 1
        if name == "overflowing":
            return [CountingEncoding(e, self._counts) for e in value]
        return value

    def __len__(self):
        return len(self._encoding)


def counted(monkeypatch, module, function: str) -> dict:
    counts: dict = {}
    original = getattr(module, function)
    monkeypatch.setattr(module, function, lambda *a, **k: [CountingEncoding(e, counts) for e in original(*a, **k)])
    return counts


def long_text(characters: int) -> str:
    text = (DATA / "botchan.txt").read_text(encoding="utf-8")
    start = text.index("CHAPTER I")
    return text[start:start + characters]


class CountingText(str):
    """A context whose slices count their lower() calls (the merge keys answers by their lower-cased text)."""

    lowered = 0

    def __getitem__(self, key):
        return CountingText(str.__getitem__(self, key))

    def lower(self):
        CountingText.lowered += 1
        return str.lower(self)


def test_qa_reads_each_encoding_list_a_bounded_number_of_times_per_window(ctx, monkeypatch):  # noqa: F811
    counts = counted(monkeypatch, qa, "encode_with_overflow")
    options = {"max_seq_len": 64, "doc_stride": 16, "top_k": 10, "align_to_words": False}
    features = qa.preprocess(ctx, {"question": "Who threw him out?", "context": long_text(12000)},
                             qa.settings(ctx, options))
    windows = len(features.windows)
    assert windows > 100
    qa.postprocess(ctx, features, ctx.runner.run(features.windows))
    assert counts and max(counts.values()) <= READS_PER_WINDOW * windows, counts


def test_qa_merge_lower_cases_each_candidate_a_bounded_number_of_times(ctx):  # noqa: F811
    context = CountingText(long_text(12000))
    options = {"max_seq_len": 64, "doc_stride": 16, "top_k": 5, "align_to_words": False}
    features = qa.preprocess(ctx, {"question": "Who threw him out?", "context": context}, qa.settings(ctx, options))
    outputs = ctx.runner.run(features.windows)
    CountingText.lowered = 0
    qa.postprocess(ctx, features, outputs)
    candidates = len(features.windows) * options["top_k"]  # at most top_k spans per window
    assert 0 < CountingText.lowered <= 3 * candidates, (CountingText.lowered, candidates)


def test_qa_on_a_long_context_matches_hf(ctx, hf_qa):  # noqa: F811
    context = long_text(30000)
    options = {"max_seq_len": 96, "doc_stride": 32, "top_k": 3}
    ours = call_head(qa, ctx, question="What did the teacher say?", context=context, **options)
    qa_tests.assert_same(ours, hf_qa(question="What did the teacher say?", context=context, **options))


@pytest.mark.parametrize("strategy", ["simple", "first", "max"])
def test_ner_reads_each_encoding_list_a_bounded_number_of_times_per_chunk(ner_model, strategy, monkeypatch):
    ctx, _ = ner_model
    counts = counted(monkeypatch, ner, "encode_chunks")
    settings = ner.settings(ctx, {"aggregation_strategy": strategy, "stride": 8})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features = ner.preprocess(ctx, long_text(8000), settings)
        chunks = len(features.windows)
        assert chunks > 50
        ner.postprocess(ctx, features, ctx.runner.run(features.windows))
    assert counts and max(counts.values()) <= READS_PER_WINDOW * chunks, counts


def test_ner_with_stride_on_a_long_text_matches_hf(ner_model):
    ctx, hf = ner_model
    options = {"aggregation_strategy": "simple", "stride": 8, "ignore_labels": []}
    ours, theirs = ner_tests.call_both(ctx, hf, long_text(8000), **options)
    ner_tests.assert_same(ours, theirs)


@pytest.fixture(scope="module")
def ner_model():
    """(runtime ctx, HF pipeline) over test_runtime_ner's model with model_max_length 64: long texts, many chunks."""
    import torch
    from transformers import AlbertConfig, AlbertForTokenClassification, pipeline

    labels = ner_tests.LABELS
    tokenizer = ner_tests.albert_tokenizer(64)
    torch.manual_seed(0)
    config = AlbertConfig(vocab_size=len(tokenizer), embedding_size=16, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
                          initializer_range=0.2, num_labels=len(labels), id2label=dict(enumerate(labels)),
                          label2id={label: i for i, label in enumerate(labels)})
    model = AlbertForTokenClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(3.0)
        model.classifier.bias.copy_(torch.tensor([-0.3, -3.5, 2.2, 2.0, -4.5, 0.3, 1.4, 0.6, 2.7]))
    return ner_tests.context_for(tokenizer, model), pipeline("token-classification", model=model, tokenizer=tokenizer,
                                                              device="cpu")


# ---- fill-mask ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlm():
    from transformers import pipeline

    from tests.handmade import hf_tokenizer, tiny_model

    model = tiny_model("fill-mask")
    return context(model, "fill-mask")[0], pipeline("fill-mask", model=model, tokenizer=hf_tokenizer())


def test_top_indices_is_a_stable_argsort_prefix():
    rng = np.random.default_rng(0)
    for size, k in ((1, 1), (7, 3), (1000, 1), (1000, 50), (1000, 1000), (30000, 100)):
        scores = rng.integers(0, 20, size).astype(np.float32) / 20  # many ties
        expected = np.argsort(-scores, kind="stable")[:k]
        assert fill_mask.top_indices(scores, k).tolist() == expected.tolist(), (size, k)
    scores = np.array([0.5, np.nan, 0.5, 0.1, np.nan], dtype=np.float32)
    for k in range(1, 6):
        assert fill_mask.top_indices(scores, k).tolist() == np.argsort(-scores, kind="stable")[:k].tolist()


def test_fill_mask_decodes_each_chosen_token_and_each_mask_once(mlm, monkeypatch):
    ctx, hf = mlm
    calls = []
    monkeypatch.setattr(fill_mask, "decode", lambda *a, **k: calls.append(a[1]) or fill_mask_decode(*a, **k))
    text = " ".join(botchan_masked(1, masks=3, seed=2)[0].split()[:12])
    masks = text.count("[MASK]")
    top_k = 300
    ours = call_head(fill_mask, ctx, text, top_k=top_k)
    tokens = {entry["token"] for row in ours for entry in row}
    assert len(ours) == masks and all(len(row) == top_k for row in ours)
    assert len(calls) == len(tokens) + masks  # each token_str once, each mask's full-decode check once
    monkeypatch.undo()
    assert_same(ours, hf(text, top_k=top_k))


def fill_mask_decode(*args, **kwargs):
    from runtime.tokenizer import decode

    return decode(*args, **kwargs)


def test_fill_mask_whole_vocabulary_for_several_masks_matches_hf(mlm):
    ctx, hf = mlm
    text = botchan_masked(1, masks=2, seed=9)[0]
    vocabulary = len(hf.tokenizer)
    assert_same(call_head(fill_mask, ctx, text, top_k=vocabulary + 10), hf(text, top_k=vocabulary))
