"""token-classification head vs transformers 4.57's TokenClassificationPipeline on the same random ALBERT.

The runtime head gets the HF model through a test-only runner (torch allowed here). Scores must agree within 1e-4
(and be numpy float32, as HF returns them); labels, words, indexes and offsets exactly.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch
from tokenizers import Tokenizer
from transformers import AlbertConfig, AlbertForTokenClassification, AlbertTokenizerFast, pipeline

from runtime.pipelines import call_head
from runtime.runner import BatchRunner
from runtime.tasks import token_classification as ner
from runtime.tasks.base import TaskContext
from tests.conftest import DATA
from tests.test_runtime_heads import assert_same as assert_same_within_atol

torch.set_num_threads(1)
LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
SPECIAL_TOKENS = {"cls": "[CLS]", "sep": "[SEP]", "pad": "<pad>", "mask": "[MASK]", "unk": "<unk>"}
STRATEGIES = ["none", "simple", "first", "average", "max"]


class TorchRunner:
    """The Runner contract over a torch module, one feature at a time (as the HF pipeline runs them)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def run(self, features):
        with torch.no_grad():
            return [
                {"logits": self.model(**{k: torch.from_numpy(v)[None] for k, v in feature.items()})["logits"][0].numpy()}
                for feature in features
            ]


def albert_tokenizer(model_max_length: int) -> AlbertTokenizerFast:
    return AlbertTokenizerFast(vocab_file=str(DATA / "sentencepiece_test_model.model"), model_max_length=model_max_length)


def context_for(tokenizer: AlbertTokenizerFast, model: torch.nn.Module) -> TaskContext:
    return TaskContext(
        tokenizer=Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()),  # its own: HF mutates its backend
        runner=TorchRunner(model),
        config=json.loads(model.config.to_json_string()),  # id2label keys are strings, as in a bundle
        max_length=tokenizer.model_max_length,
        special_tokens=SPECIAL_TOKENS,
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = AlbertConfig(
        vocab_size=len(albert_tokenizer(512)), embedding_size=16, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512, initializer_range=0.2,
        num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)},
    )
    model = AlbertForTokenClassification(config).eval()
    with torch.no_grad():  # confident, varied predictions: entities of every type, and "O" for about a third
        model.classifier.weight.mul_(3.0)
        model.classifier.bias.copy_(torch.tensor([-0.3, -3.5, 2.2, 2.0, -4.5, 0.3, 1.4, 0.6, 2.7]))
    return model


@pytest.fixture(scope="module", params=[512, 24], ids=["max512", "max24"])
def pipelines(request, model):
    """(runtime ctx, HF pipeline) for a tokenizer with that model_max_length (24: texts get truncated/strided)."""
    tokenizer = albert_tokenizer(request.param)
    return context_for(tokenizer, model), pipeline("token-classification", model=model, tokenizer=tokenizer, device="cpu")


@pytest.fixture(scope="module")
def short(model):
    """(runtime ctx, HF pipeline) with model_max_length 24: most botchan spans get truncated or strided."""
    tokenizer = albert_tokenizer(24)
    return context_for(tokenizer, model), pipeline("token-classification", model=model, tokenizer=tokenizer, device="cpu")


@pytest.fixture(scope="module")
def full(model):
    tokenizer = albert_tokenizer(512)
    return context_for(tokenizer, model), pipeline("token-classification", model=model, tokenizer=tokenizer, device="cpu")


def conll_sentences() -> list[str]:
    lines = (DATA / "conll2003_sample.jsonl").read_text().splitlines()
    return [" ".join(json.loads(line)["words"]) for line in lines if line.strip()]


def conll_words() -> list[list[str]]:
    lines = (DATA / "conll2003_sample.jsonl").read_text().splitlines()
    return [json.loads(line)["words"] for line in lines if line.strip()]


def assert_same(ours, theirs, where="result"):
    """HF's entities exactly, their float32 scores within the heads' ATOL."""
    assert_same_within_atol(ours, theirs, where, numpy_floats_within_atol=True)


def long_text() -> str:
    text = (DATA / "botchan.txt").read_text()
    start = text.index("CHAPTER I")
    return text[start : start + 700]




def call_both(ctx, hf, inputs, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HF's fallback-heuristic warning; the runtime's is tested on its own
        return call_head(ner, ctx, inputs, **options), hf(inputs, **options)


def test_fixture_model_predicts_every_label(full):
    ctx, hf = full
    labels = {entity["entity"] for result in hf(conll_sentences(), ignore_labels=[]) for entity in result}
    assert labels == set(LABELS)


@pytest.mark.parametrize("ignore_labels", [None, []], ids=["default-ignore", "ignore-nothing"])
@pytest.mark.parametrize("strategy", [None, *STRATEGIES])
def test_conll_sentences_match_hf(full, strategy, ignore_labels):
    ctx, hf = full
    options = {} if strategy is None else {"aggregation_strategy": strategy}
    if ignore_labels is not None:
        options["ignore_labels"] = ignore_labels
    sentences = conll_sentences()
    ours, theirs = call_both(ctx, hf, sentences, **options)
    assert_same(ours, theirs, f"conll {options}")
    assert sum(map(len, theirs)) > 30
    for sentence in sentences[:3]:
        ours, theirs = call_both(ctx, hf, sentence, **options)
        assert_same(ours, theirs, f"{sentence!r} {options}")


def test_word_strategies_merge_subwords_and_simple_groups_words(full):
    """The parity above exercises aggregation for real: sub-word tokens are merged into words, and groups span
    several words."""
    ctx, hf = full
    sentences = conll_sentences()
    tokens = sum(map(len, call_head(ner, ctx, sentences, ignore_labels=[])))
    words = sum(map(len, call_head(ner, ctx, sentences, aggregation_strategy="first", ignore_labels=[])))
    assert words < tokens * 0.6
    grouped = call_head(ner, ctx, sentences, aggregation_strategy="max")
    spans = [sentence[e["start"] : e["end"]].strip() for sentence, result in zip(sentences, grouped) for e in result]
    assert any(" " in span for span in spans)


@pytest.mark.parametrize("strategy", [None, *STRATEGIES])
def test_long_text_is_truncated_like_hf(pipelines, strategy):
    ctx, hf = pipelines
    options = {} if strategy is None else {"aggregation_strategy": strategy, "ignore_labels": []}
    ours, theirs = call_both(ctx, hf, long_text(), **options)
    assert_same(ours, theirs)
    if ctx.max_length == 24:
        assert max(entity["end"] for entity in ours) < 120  # only the first 22 tokens were classified


@pytest.mark.parametrize("strategy", [None, "simple", "first", "average", "max"])
@pytest.mark.parametrize("stride", [0, 5, 16])
def test_stride_chunks_match_hf(pipelines, strategy, stride):
    ctx, hf = pipelines
    options = {"stride": stride, "ignore_labels": []}
    if strategy is not None:
        options["aggregation_strategy"] = strategy
    if ctx.max_length == 512 and stride == 16:
        options["ignore_labels"] = ["O", "B-PER"]
    ours, theirs = call_both(ctx, hf, [long_text(), conll_sentences()[2]], **options)
    assert_same(ours, theirs, str(options))
    if ctx.max_length == 24:
        assert max(entity["end"] for entity in ours[0]) > 650  # the whole text was classified, chunk by chunk


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_unknown_tokens_and_accents_match_hf(full, strategy):
    ctx, hf = full
    text = "Müller flew from 東京 to Zürich — via Paris, 2 ½ hours."
    ours, theirs = call_both(ctx, hf, text, aggregation_strategy=strategy, ignore_labels=[])
    assert_same(ours, theirs)
    spaced = "  Tom   went\tto\nNew-York ``quickly''  "
    assert_same(*call_both(ctx, hf, spaced, aggregation_strategy=strategy, ignore_labels=[]))
    assert any(entity["word"] == "東京" for entity in ours) or strategy != "none"  # <unk> shows the source text


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_pre_split_words_match_hf(full, strategy):
    ctx, hf = full
    words = conll_words()
    for inputs, options in [
        (words[2], {"is_split_into_words": True}),  # one word list: HF answers with a batch of one
        (words[:4], {"is_split_into_words": True}),
        (words[1], {"is_split_into_words": True, "delimiter": "  "}),
    ]:
        ours, theirs = call_both(ctx, hf, inputs, aggregation_strategy=strategy, **options)
        assert_same(ours, theirs, f"{inputs} {options}")


@pytest.mark.parametrize(
    "options",
    [
        {"grouped_entities": True},
        {"grouped_entities": True, "ignore_subwords": True},
        {"grouped_entities": False, "ignore_subwords": True},
    ],
)
def test_deprecated_grouping_options_match_hf(full, options):
    ctx, hf = full
    with pytest.warns(UserWarning, match="deprecated"):
        ours = call_head(ner, ctx, conll_sentences()[:3], **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = hf(conll_sentences()[:3], **options)
    assert_same(ours, theirs)


def test_empty_text_has_no_entities(full):
    ctx, hf = full
    assert call_head(ner, ctx, "") == hf("") == []
    assert call_head(ner, ctx, ["", "Tom"], ignore_labels=[])[0] == []


def test_fallback_heuristic_warns_for_word_strategies(full):
    ctx, _ = full
    with pytest.warns(UserWarning, match="fallback heuristic"):
        call_head(ner, ctx, "Hello there", aggregation_strategy="average")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call_head(ner, ctx, "Hello there", aggregation_strategy="simple")


BAD_INPUTS = [
    ([], {}, ValueError, "At least one input is required"),
    (None, {}, ValueError, "At least one input is required"),
    (("a tuple", "of texts"), {}, ValueError, "must be an untokenized string"),
    ("Hello", {"is_split_into_words": True}, ValueError, "must be a list of tokens"),
    ("Hello", {"aggregation_strategy": "longest"}, KeyError, "LONGEST|longest"),
    ("Hello", {"stride": 512}, ValueError, "`stride` must be less than `tokenizer.model_max_length`"),
    ("Hello", {"stride": 4, "aggregation_strategy": "none"}, ValueError, "please select another one"),
    ("Hello", {"aggregation": "simple"}, TypeError, "aggregation"),
]


@pytest.mark.parametrize("inputs, options, error, message", BAD_INPUTS)
def test_bad_inputs_raise_what_hf_raises(full, inputs, options, error, message):
    ctx, hf = full
    with pytest.raises(error, match=message):
        hf(inputs, **options)
    with pytest.raises(error, match=message):
        call_head(ner, ctx, inputs, **options)


def test_unknown_strategy_error_names_the_choices(full):
    ctx, _ = full
    with pytest.raises(ValueError, match="none, simple, first, average, max"):
        call_head(ner, ctx, "Hello", aggregation_strategy="longest")


def test_shared_tokenizer_is_left_unconfigured(full):
    ctx, _ = full
    call_head(ner, ctx, long_text(), stride=4, aggregation_strategy="first")
    assert ctx.tokenizer.truncation is None and ctx.tokenizer.padding is None


def test_scores_are_float32_softmax_of_the_logits(full):
    ctx, _ = full
    entity = call_head(ner, ctx, "Tom", ignore_labels=[])[0]
    logits = ctx.runner.run([{
        "input_ids": np.array(ctx.tokenizer.encode("Tom").ids, dtype=np.int64),
        "attention_mask": np.ones(len(ctx.tokenizer.encode("Tom").ids), dtype=np.int64),
        "token_type_ids": np.zeros(len(ctx.tokenizer.encode("Tom").ids), dtype=np.int64),
    }])[0]["logits"][entity["index"]]
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert isinstance(entity["score"], np.float32)
    assert entity["score"] == pytest.approx(float(probabilities.max()), abs=1e-6)
    assert entity["entity"] == LABELS[int(probabilities.argmax())]


class TorchBackend:
    """The Backend protocol over a torch module, for the runtime's own BatchRunner (padded batches)."""

    input_names = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def infer(self, inputs):
        with torch.no_grad():
            return {"logits": self.model(**{k: torch.from_numpy(v) for k, v in inputs.items()})["logits"].numpy()}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_runtime_batch_runner_with_padding_matches_hf(pipelines, model, strategy):
    """Through the runtime's BatchRunner: sentences and stride chunks of different lengths padded in batches of 3."""
    ctx, hf = pipelines
    ctx = TaskContext(**{**ctx.__dict__, "runner": BatchRunner(TorchBackend(model), {"logits": (1,)}, batch_size=3)})
    texts = conll_sentences() + [long_text()]
    options = {"aggregation_strategy": strategy, "ignore_labels": []}
    if strategy != "none":
        options["stride"] = 6
    ours, theirs = call_both(ctx, hf, texts, **options)
    assert_same(ours, theirs, str(options))


@pytest.mark.parametrize("strategy", ["none", "first"])
def test_given_offset_mapping_is_used_like_hf(full, strategy):
    ctx, hf = full
    text = conll_sentences()[2]
    offsets = [(min(start + 1, end), end) for start, end in ctx.tokenizer.encode(text).offsets]
    ours, theirs = call_both(ctx, hf, text, offset_mapping=offsets, aggregation_strategy=strategy, ignore_labels=[])
    assert_same(ours, theirs)
    assert ours != call_head(ner, ctx, text, aggregation_strategy=strategy, ignore_labels=[])


def test_config_without_id2label_gives_hf_default_labels(model):
    tokenizer = albert_tokenizer(512)
    fields = {k: v for k, v in model.config.to_dict().items() if k not in ("id2label", "label2id")}
    config = AlbertConfig(**fields, num_labels=len(LABELS))
    assert config.id2label[3] == "LABEL_3"
    plain = AlbertForTokenClassification(config).eval()
    plain.load_state_dict(model.state_dict())
    ctx = context_for(tokenizer, plain)
    del ctx.config["id2label"]
    hf = pipeline("token-classification", model=plain, tokenizer=tokenizer, device="cpu")
    ours, theirs = call_both(ctx, hf, conll_sentences()[:3], aggregation_strategy="simple", ignore_labels=[])
    assert_same(ours, theirs)
    assert {entity["entity_group"] for result in ours for entity in result} >= {"LABEL_1", "LABEL_3"}


@pytest.mark.parametrize("max_length, stride", [(24, 0), (24, 5), (24, 16), (40, 12)])
def test_chunks_are_the_hf_fast_tokenizer_chunks(max_length, stride):
    tokenizer = albert_tokenizer(max_length)
    theirs = tokenizer(long_text(), truncation=True, stride=stride, return_overflowing_tokens=True,
                       return_offsets_mapping=True, return_special_tokens_mask=True)
    ours = ner.encode_chunks(Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()), long_text(), max_length, stride)
    assert len(ours) == len(theirs["input_ids"]) > 10
    for i, encoding in enumerate(ours):
        assert encoding.ids == theirs["input_ids"][i]
        assert encoding.offsets == [tuple(o) for o in theirs["offset_mapping"][i]]
        assert encoding.special_tokens_mask == theirs["special_tokens_mask"][i]


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.integers(0, 270_000),
    length=st.integers(0, 400),
    strategy=st.sampled_from([None, *STRATEGIES]),
    stride=st.one_of(st.none(), st.integers(0, 15)),
    ignore_nothing=st.booleans(),
)
def test_random_botchan_spans_and_options_match_hf(short, start, length, strategy, stride, ignore_nothing):
    ctx, hf = short
    text = (DATA / "botchan.txt").read_text()[start : start + length]
    options = {"aggregation_strategy": strategy, "stride": stride, "ignore_labels": [] if ignore_nothing else None}
    options = {name: value for name, value in options.items() if value is not None}
    if stride is not None and strategy == "none":
        return  # an error, tested above
    assert_same(*call_both(ctx, hf, text, **options), str(options))

