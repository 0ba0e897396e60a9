"""question-answering head vs transformers 4.57's QuestionAnsweringPipeline on the same random ALBERT.

The runtime head gets the HF model through a test-only runner (torch allowed here), so any difference comes from
tokenization or postprocessing. Scores must agree within 1e-4; starts, ends and answer strings exactly.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch
from tokenizers import Tokenizer
from transformers import AlbertConfig, AlbertForQuestionAnswering, AlbertTokenizerFast, pipeline
from transformers.modeling_outputs import QuestionAnsweringModelOutput

from runtime.pipelines import call_head
from runtime.runner import BatchRunner
from runtime.tasks import question_answering as qa
from runtime.tasks.base import TaskContext
from tests.conftest import DATA
from tests.test_runtime_heads import assert_same

torch.set_num_threads(1)
SPECIAL_TOKENS = {"cls": "[CLS]", "sep": "[SEP]", "pad": "<pad>", "mask": "[MASK]", "unk": "<unk>"}


class TorchRunner:
    """The Runner contract over a torch module, one feature at a time (as the HF pipeline runs them)."""

    def __init__(self, model: torch.nn.Module, output_names: tuple[str, ...]):
        self.model = model
        self.output_names = output_names
        self.calls = 0

    def run(self, features):
        self.calls += 1
        outputs = []
        with torch.no_grad():
            for feature in features:
                result = self.model(**{name: torch.from_numpy(array)[None] for name, array in feature.items()})
                outputs.append({name: result[name][0].numpy() for name in self.output_names})
        return outputs


class TorchBackend:
    """The Backend protocol over a torch module, for the runtime's own BatchRunner (padded batches)."""

    input_names = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, model: torch.nn.Module, output_names: tuple[str, ...]):
        self.model = model
        self.output_names = output_names

    def infer(self, inputs):
        with torch.no_grad():
            result = self.model(**{name: torch.from_numpy(array) for name, array in inputs.items()})
        return {name: result[name].numpy() for name in self.output_names}


def context_for(tokenizer: AlbertTokenizerFast, model: torch.nn.Module) -> TaskContext:
    return TaskContext(
        tokenizer=Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()),  # its own: HF mutates its backend
        runner=TorchRunner(model, ("start_logits", "end_logits")),
        config=json.loads(model.config.to_json_string()),
        max_length=tokenizer.model_max_length,
        special_tokens=SPECIAL_TOKENS,
    )


@pytest.fixture(scope="module")
def tokenizer():
    return AlbertTokenizerFast(vocab_file=str(DATA / "sentencepiece_test_model.model"), model_max_length=512)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = AlbertConfig(
        vocab_size=len(tokenizer), embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512, initializer_range=0.2,
    )
    model = AlbertForQuestionAnswering(config).eval()
    with torch.no_grad():
        model.qa_outputs.weight.mul_(8.0)  # peaked start/end distributions, so scores are not all ~1e-4
    return model


@pytest.fixture(scope="module")
def hf_qa(model, tokenizer):
    return pipeline("question-answering", model=model, tokenizer=tokenizer, device="cpu")


@pytest.fixture(scope="module")
def ctx(model, tokenizer):
    return context_for(tokenizer, model)


def squad_examples() -> list[dict[str, str]]:
    squad = json.loads((DATA / "squad_v2_dev_sample.json").read_text())
    return [
        {"question": qas["question"], "context": paragraph["context"]}
        for article in squad["data"]
        for paragraph in article["paragraphs"]
        for qas in paragraph["qas"]
    ]


def long_context() -> str:
    text = (DATA / "botchan.txt").read_text()
    start = text.index("CHAPTER I")
    return text[start : start + 6000]




def test_all_squad_questions_are_examples():
    assert len(squad_examples()) == 14


@pytest.mark.parametrize("handle_impossible_answer", [False, True])
@pytest.mark.parametrize("top_k", [1, 3])
def test_squad_questions_match_hf(ctx, hf_qa, top_k, handle_impossible_answer):
    options = {"top_k": top_k, "handle_impossible_answer": handle_impossible_answer}
    for i, example in enumerate(squad_examples()):
        theirs = hf_qa(question=example["question"], context=example["context"], **options)
        ours = call_head(qa, ctx, question=example["question"], context=example["context"], **options)
        assert_same(ours, theirs, f"squad[{i}] {options}")
        if top_k == 3:
            assert len(ours) == 3


def test_squad_batch_is_one_runner_call_and_matches_hf(ctx, hf_qa):
    examples = squad_examples()
    calls = ctx.runner.calls
    ours = call_head(qa, ctx, examples, top_k=2, handle_impossible_answer=True)
    assert ctx.runner.calls == calls + 1
    assert_same(ours, hf_qa(examples, top_k=2, handle_impossible_answer=True))


LONG_CONTEXT_OPTIONS = [
    {},
    {"top_k": 3, "handle_impossible_answer": True},
    {"max_seq_len": 48, "doc_stride": 16},
    {"max_seq_len": 64, "doc_stride": 20, "top_k": 5, "align_to_words": False},
    {"max_seq_len": 100, "doc_stride": 30, "top_k": 4, "max_answer_len": 4, "padding": True},
    {"top_k": 2, "padding": "max_length"},
]


@pytest.mark.parametrize("options", LONG_CONTEXT_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
@pytest.mark.parametrize("question", ["Who threw the narrator out of the window?", "What did his father say?"])
def test_long_context_windows_match_hf(ctx, hf_qa, question, options):
    context = long_context()
    windows = qa.windows_for_example(ctx, question, context, qa.settings_from_params(ctx, options))
    assert len(windows) >= 10  # the context really is split, into many overlapping doc_stride windows
    assert_same(call_head(qa, ctx, question=question, context=context, **options), hf_qa(question=question, context=context, **options))


@pytest.mark.parametrize("max_seq_len, doc_stride", [(384, 128), (48, 16), (64, 20), (33, 1)])
def test_windows_are_the_hf_fast_tokenizer_windows(ctx, tokenizer, max_seq_len, doc_stride):
    question, context = "Who threw the narrator out of the window?", long_context()[:3000]
    theirs = tokenizer(
        question, context, truncation="only_second", max_length=max_seq_len, stride=doc_stride,
        return_overflowing_tokens=True, return_offsets_mapping=True, return_token_type_ids=True,
    )
    ours = qa.encode_with_overflow(ctx.tokenizer, question, context, max_seq_len, doc_stride)
    assert len(ours) == len(theirs["input_ids"]) > 1
    for i, encoding in enumerate(ours):
        assert encoding.ids == theirs["input_ids"][i]
        assert encoding.type_ids == theirs["token_type_ids"][i]
        assert encoding.offsets == [tuple(o) for o in theirs["offset_mapping"][i]]
        assert encoding.sequence_ids == theirs.sequence_ids(i)
        assert encoding.word_ids == theirs.word_ids(i)


def test_input_shapes_match_hf(ctx, hf_qa):
    examples = squad_examples()
    first, second = examples[0], examples[5]
    questions = [first["question"], second["question"]]
    cases = [
        ((first,), {}),  # one dict -> one result
        (([first],), {}),  # a list of one -> still one result, as HF does
        (([first, second],), {}),
        ((), {"question": questions, "context": first["context"]}),
        ((), {"question": questions, "context": [first["context"], second["context"]]}),
        ((), {"question": [first["question"]], "context": first["context"]}),
        (([],), {}),
    ]
    for args, kwargs in cases:
        ours = call_head(qa, ctx, *args, **kwargs)
        theirs = hf_qa(*args, **kwargs)
        if theirs == []:
            assert ours == []
        else:
            assert_same(ours, theirs, f"{args} {kwargs}")


@pytest.mark.parametrize(
    "example, options",
    [
        ({"question": "Who?", "context": "   "}, {}),  # no context tokens: HF answers "" at CLS
        ({"question": "Who?", "context": "   "}, {"top_k": 3, "handle_impossible_answer": True}),
        ({"question": "Where?", "context": "Paris"}, {"top_k": 5}),  # fewer spans than top_k
        ({"question": "Where is it?", "context": "In Paris, France."}, {"top_k": 20, "max_answer_len": 1}),
        ({"question": "Where?", "context": "He said ``Zürich'' \u2014 and 東京, Ǆemal\tok.\n\n  Then   left."}, {"top_k": 10}),
        ({"question": "  Where?  ", "context": "\n  Paris  \n"}, {"top_k": 3, "align_to_words": False}),
    ],
)
def test_tiny_contexts_match_hf(ctx, hf_qa, example, options):
    assert_same(call_head(qa, ctx, example, **options), hf_qa(example, **options))


class KeywordQA(torch.nn.Module):
    """Start and end logits that peak on chosen token ids: makes the same answer appear twice in a context."""

    def __init__(self, config: AlbertConfig, start_ids: dict[int, float], end_ids: dict[int, float]):
        super().__init__()
        self.config = config
        self.start_ids, self.end_ids = start_ids, end_ids

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **_):
        start = torch.zeros(input_ids.shape, dtype=torch.float32)
        end = torch.zeros(input_ids.shape, dtype=torch.float32)
        for token_id, value in self.start_ids.items():
            start[input_ids == token_id] = value
        for token_id, value in self.end_ids.items():
            end[input_ids == token_id] = value
        return QuestionAnsweringModelOutput(start_logits=start, end_logits=end)


def keyword_pipelines(model, tokenizer, start_logits: dict[str, float], end_logits: dict[str, float]):
    """(runtime ctx, HF pipeline) over one KeywordQA, logits given per token text."""
    start_ids = {tokenizer.convert_tokens_to_ids(token): value for token, value in start_logits.items()}
    end_ids = {tokenizer.convert_tokens_to_ids(token): value for token, value in end_logits.items()}
    keyword = KeywordQA(model.config, start_ids, end_ids)
    hf_model = AlbertForQuestionAnswering(model.config).eval()
    hf_model.forward = keyword.forward  # the HF pipeline drives the same keyword logits
    return context_for(tokenizer, keyword), pipeline("question-answering", model=hf_model, tokenizer=tokenizer, device="cpu")


def test_answers_equal_ignoring_case_have_their_scores_summed(model, tokenizer):
    context = "It is school and it is SCHOOL or it is father"
    logits = {"▁school": 6.0, "▁father": 6.2}
    ctx, hf_keyword = keyword_pipelines(model, tokenizer, logits, logits)
    ours = call_head(qa, ctx, question="Which place?", context=context, top_k=2)
    # The two " school" spans merge (scores summed, the first span kept) and so outrank the single better
    # " father". (ALBERT's offsets include the space before a word: "School" at the very start would not merge.)
    assert [a["answer"].lower() for a in ours] == [" school", " father"]
    assert (ours[0]["start"], ours[0]["end"]) in [(5, 12), (22, 29)]
    assert_same(ours, hf_keyword(question="Which place?", context=context, top_k=2))


@pytest.mark.parametrize("max_seq_len, doc_stride", [(384, 128), (40, 10)])
def test_null_answer_is_the_minimum_over_windows(model, tokenizer, max_seq_len, doc_stride):
    """CLS outscores spans in some windows only, so which window's null score is kept decides the ranking."""
    logits = {"[CLS]": 5.0, "▁school": 4.0, "▁father": 6.0}
    ctx, hf_keyword = keyword_pipelines(model, tokenizer, logits, logits)
    context = long_context()[:2500]
    options = {"top_k": 5, "handle_impossible_answer": True, "max_seq_len": max_seq_len, "doc_stride": doc_stride}
    ours = call_head(qa, ctx, question="Which place?", context=context, **options)
    assert "" in [answer["answer"] for answer in ours]
    assert_same(ours, hf_keyword(question="Which place?", context=context, **options))


BAD_INPUTS = [
    ((), {"question": "", "context": "Some context."}, ValueError, "`question` cannot be empty"),
    ((), {"question": "Why?", "context": ""}, ValueError, "`context` cannot be empty"),
    (({"question": None, "context": "Some context."},), {}, ValueError, "`question` cannot be None"),
    (({"question": "Why?"},), {}, KeyError, "question:..., context:..."),
    ((["just a string"],), {}, ValueError, "argument needs to be of type"),
    ((), {"question": ["a", "b"], "context": ["c"]}, ValueError, "don't have the same lengths"),
    ((), {"question": 3, "context": "Some context."}, ValueError, "Arguments can't be understood"),
    ((), {"question": "Why?"}, ValueError, "Unknown arguments"),
    ((), {"question": "Why?", "context": "Some context.", "top_k": 0}, ValueError, r"top_k parameter should be >= 1"),
    ((), {"question": "Why?", "context": "Some context.", "max_answer_len": 0}, ValueError, "max_answer_len parameter should be >= 1"),
    ((), {"question": "Why?", "context": "Some context.", "max_seq_len": 50, "doc_stride": 60}, ValueError,
     r"`doc_stride` \(60\) is larger than `max_seq_len` \(50\)"),
]


@pytest.mark.parametrize("args, kwargs, error, message", BAD_INPUTS)
def test_bad_inputs_raise_what_hf_raises(ctx, hf_qa, args, kwargs, error, message):
    with pytest.raises(error, match=message):
        hf_qa(*args, **kwargs)
    with pytest.raises(error, match=message):
        call_head(qa, ctx, *args, **kwargs)


def first_tokens(tokenizer, text: str, count: int) -> str:
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return text[: offsets[count - 1][1]]


def test_a_question_too_long_for_the_windows_is_cut_as_hf_cuts_it_to_max_question_len(ctx, hf_qa, tokenizer):
    """HF's fast path fails there (a Rust panic or a truncation error); its slow path cuts the question to
    max_question_len tokens. Ours cuts it to that, and further until each window keeps more than doc_stride
    context tokens: the answer is HF's for the cut question."""
    question = " ".join(["Who threw the narrator out of the window"] * 10)
    with pytest.raises(Exception, match="Sequence to truncate too short to respect the provided max_length"):
        hf_qa(question=question, context=long_context(), max_seq_len=48, doc_stride=16)
    with pytest.warns(UserWarning, match="cut to 28"):  # 48 - 3 special tokens - 16 stride - 1
        ours = call_head(qa, ctx, question=question, context=long_context(), max_seq_len=48, doc_stride=16)
    assert_same(ours, hf_qa(question=first_tokens(tokenizer, question, 28), context=long_context(),
                            max_seq_len=48, doc_stride=16))
    with pytest.warns(UserWarning, match="cut to 20 .max_question_len=20"):
        ours = call_head(qa, ctx, question=question, context=long_context(), max_seq_len=64, max_question_len=20)
    cut = first_tokens(tokenizer, question, 20)  # and the default doc_stride, 32, shrinks to 64 - 3 - 20 - 1 = 40
    assert_same(ours, hf_qa(question=cut, context=long_context(), max_seq_len=64, doc_stride=32))


@pytest.mark.parametrize("max_seq_len", [5, 8, 10, 12])
def test_small_max_seq_len_with_the_default_doc_stride_shrinks_the_stride_instead_of_panicking(ctx, hf_qa,
                                                                                              max_seq_len):
    question = "Who went?"  # 3 tokens: windows of max_seq_len - 6 context tokens, less than the default stride
    context = long_context()[:600]
    with pytest.warns(UserWarning, match="so that the context fits"):
        ours = call_head(qa, ctx, question=question, context=context, max_seq_len=max_seq_len)
    stride = max(0, min(max_seq_len // 2, max_seq_len - 3 - 3 - 1))
    if max_seq_len - 6 < 1:  # no room for a context token: HF's tokenizer fails; ours cuts the question too
        with pytest.raises(Exception, match="Sequence to truncate too short to respect the provided max_length"):
            hf_qa(question=question, context=context, max_seq_len=max_seq_len, doc_stride=stride)
        assert context[ours["start"]:ours["end"]] == ours["answer"] and ours["answer"]
        return
    assert_same(ours, hf_qa(question=question, context=context, max_seq_len=max_seq_len, doc_stride=stride))


@pytest.mark.parametrize("options, message", [
    ({"max_seq_len": 513}, "max_seq_len=513 is more than the model's 512 positions; use at most 512"),
    ({"max_seq_len": 100000}, "use at most 512"),
    ({"max_seq_len": 4}, "max_seq_len=4 cannot hold the 3 special tokens, a question token and a context token"),
    ({"max_seq_len": 20, "doc_stride": 16}, "use a doc_stride of at most 15"),
    ({"max_seq_len": 20, "doc_stride": 20}, "use a doc_stride of at most 15"),
])
def test_windows_the_model_or_the_tokenizer_cannot_take_are_refused(ctx, options, message):
    with pytest.raises(qa.OptionError, match=message):
        call_head(qa, ctx, question="Who?", context="Botchan went.", **options)


def test_shared_tokenizer_is_left_unconfigured(ctx):
    call_head(qa, ctx, question="Who?", context=long_context(), max_seq_len=64, doc_stride=16)
    assert ctx.tokenizer.truncation is None and ctx.tokenizer.padding is None


def test_decode_spans_keeps_hf_index_zero_quirk():
    """HF's isin() over nonzero()'s (rows, cols) lets index 0 through; kept so top_k tails match HF."""
    start = np.array([[0.0, 0.5, 0.5]], dtype=np.float32)
    end = np.array([[0.0, 0.5, 0.5]], dtype=np.float32)
    undesired = np.array([[0, 0, 1]])
    starts, ends, scores = qa.decode_spans(start, end, 4, 15, undesired)
    assert (0, 0) in set(zip(starts.tolist(), ends.tolist()))
    assert (2, 2) in set(zip(starts.tolist(), ends.tolist()))
    assert (1, 1) not in set(zip(starts.tolist(), ends.tolist()))


def test_runtime_batch_runner_with_padding_matches_hf(model, tokenizer, hf_qa):
    """Through the runtime's BatchRunner: windows of different lengths padded together in batches of 4."""
    outputs = ("start_logits", "end_logits")
    ctx = context_for(tokenizer, model)
    ctx.runner = BatchRunner(TorchBackend(model, outputs), {name: (1,) for name in outputs}, batch_size=4,
                             pad_token_id=tokenizer.pad_token_id)
    examples = squad_examples()
    options = {"top_k": 3, "handle_impossible_answer": True}
    assert_same(call_head(qa, ctx, examples, **options), hf_qa(examples, **options))
    long = {"question": "What did his father say?", "context": long_context()}
    options = {"top_k": 3, "max_seq_len": 64, "doc_stride": 20}
    assert_same(call_head(qa, ctx, [long, examples[0]], **options), hf_qa([long, examples[0]], **options))


def test_deprecated_topk_and_unknown_options_warn_like_hf(ctx, hf_qa):
    example = squad_examples()[0]
    with pytest.warns(UserWarning, match="topk parameter is deprecated"):
        ours = call_head(qa, ctx, example, topk=2)
    with pytest.warns(UserWarning, match="topk parameter is deprecated"):
        theirs = hf_qa(example, topk=2)
    assert_same(ours, theirs)
    with pytest.warns(UserWarning, match=r"ignores unknown parameters \['top_n'\]"):
        call_head(qa, ctx, example, top_n=2)


def test_max_question_len_is_accepted_and_ignored_as_hf_fast_path_does(ctx, hf_qa):
    example = squad_examples()[3]
    assert_same(call_head(qa, ctx, example, max_question_len=2), hf_qa(example, max_question_len=2))
    assert_same(call_head(qa, ctx, example, max_question_len=2), call_head(qa, ctx, example))


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.integers(0, 200_000),
    length=st.integers(1, 1500),
    max_seq_len=st.integers(40, 200),
    stride_fraction=st.floats(0.0, 0.4),
    top_k=st.integers(1, 6),
    max_answer_len=st.integers(1, 30),
    handle_impossible_answer=st.booleans(),
    align_to_words=st.booleans(),
)
def test_random_botchan_spans_and_options_match_hf(
    ctx, hf_qa, start, length, max_seq_len, stride_fraction, top_k, max_answer_len, handle_impossible_answer,
    align_to_words,
):
    text = (DATA / "botchan.txt").read_text()
    context = text[start : start + length]
    if not context.strip():
        return
    options = {
        "max_seq_len": max_seq_len, "doc_stride": int(stride_fraction * (max_seq_len - 20)), "top_k": top_k,
        "max_answer_len": max_answer_len, "handle_impossible_answer": handle_impossible_answer,
        "align_to_words": align_to_words,
    }
    question = "What did the narrator do?"
    assert_same(call_head(qa, ctx, question=question, context=context, **options),
                hf_qa(question=question, context=context, **options), str(options))
