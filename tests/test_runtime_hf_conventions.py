"""The ways transformers 4.57's pipelines are called, side by side with the runtime on the same tiny model.

Every case calls transformers' pipeline and ours the same way and asserts equal results (scores within 1e-4),
the same warning categories and the same exception types: factory forms, QA's positional / X= / data= /
SquadExample inputs, generators and datasets streamed lazily, batch_size and num_workers in either place, device
forms, PipelineException, the tokenizer's HF attributes and a settable model_max_length.
"""
from __future__ import annotations

import functools
import warnings
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import pipeline as hf_pipeline
from transformers.data.processors.squad import SquadExample
from transformers.pipelines.base import PipelineException as HFPipelineException

import runtime.backends.ort as ort_backend
from runtime import pipeline
from runtime.backends import Device, parse_device
from runtime.cli import main as albert_run
from runtime.cli import parser as albert_run_parser
from runtime.errors import BackendError, InputError, OptionError, PipelineException
from runtime.pipelines import ResultStream
from runtime.taskspec import UnknownTaskError
from tests.handmade import hf_tokenizer, tiny_model
from tests.test_runtime_heads import botchan_masked, mrpc_pairs
from tests.test_runtime_heads import assert_same as assert_same_within_atol
from tests.test_runtime_qa import squad_examples

torch.set_num_threads(1)
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


# token-classification's numpy float32 scores also within ATOL
assert_same = functools.partial(assert_same_within_atol, numpy_floats_within_atol=True)


def hf(task: str, **options):
    hf_task = {"token-classification": "ner"}.get(task, task)
    return hf_pipeline(hf_task, model=tiny_model(task), tokenizer=hf_tokenizer(), device=-1, **options)


@pytest.fixture(scope="module")
def qa_bundle(handmade_bundle):
    return handmade_bundle("question-answering")


@pytest.fixture(scope="module")
def qa_pair(qa_bundle):
    return pipeline("question-answering", model=qa_bundle, threads=1), hf("question-answering")


@pytest.fixture(scope="module")
def fill_pair(handmade_bundle):
    return pipeline(model=handmade_bundle("fill-mask"), threads=1), hf("fill-mask")


def squad(count: int) -> list[dict[str, str]]:
    return [{"question": e["question"], "context": e["context"]} for e in squad_examples()[:count]]


def no_future_warning():
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.simplefilter("error", FutureWarning)
    return context


class Counted:
    """A generator's items, counting how many were taken (streams must be lazy)."""

    def __init__(self, items):
        self.items, self.taken = list(items), 0

    def __iter__(self):
        for item in self.items:
            self.taken += 1
            yield item


class TextDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def test_factory_forms_task_first_model_keyword_and_aliases(qa_bundle, handmade_bundle):
    example = squad(1)[0]
    theirs = hf("question-answering")(**example)
    for ours in (
        pipeline("question-answering", model=qa_bundle),
        pipeline(model=qa_bundle),
        pipeline(qa_bundle),
        pipeline("qa", qa_bundle),
        pipeline(qa_bundle, "qa"),
        pipeline(qa_bundle, task="question-answering"),
        pipeline(task="qa", model=str(qa_bundle)),
        pipeline("question-answering", model=str(qa_bundle), tokenizer=str(qa_bundle)),  # HF code often does this
    ):
        assert ours.task == "question-answering"
        assert_same(ours(**example), theirs)
    assert pipeline("sentiment-analysis", model=handmade_bundle("text-classification")).task == "text-classification"
    assert pipeline("ner", model=handmade_bundle("token-classification")).task == "token-classification"


def test_factory_errors(qa_bundle):
    with pytest.raises(OptionError, match="exported for question-answering, not fill-mask"):
        pipeline("fill-mask", model=qa_bundle)
    with pytest.raises(KeyError) as theirs:  # transformers: KeyError for a task it does not know
        hf_pipeline("summarisation-typo", model=tiny_model("question-answering"), tokenizer=hf_tokenizer())
    with pytest.raises(type(theirs.value)) as ours:
        pipeline("summarisation-typo", model=qa_bundle)
    assert isinstance(ours.value, (UnknownTaskError, ValueError)) and str(ours.value).startswith("unknown task")
    with pytest.raises(OptionError, match=r"pipeline\('question-answering'\) needs the bundle"):
        pipeline("question-answering")
    with pytest.raises(TypeError, match="task twice"):
        pipeline("qa", "fill-mask", model=qa_bundle)
    for tokenizer in (qa_bundle.parent, hf_tokenizer()):
        with pytest.raises(OptionError, match="the bundle carries its own tokenizer"):
            pipeline("question-answering", model=qa_bundle, tokenizer=tokenizer)


def test_qa_positional_forms_warn_as_hf_and_answer_the_same(qa_pair):
    ours, theirs = qa_pair
    first, second = squad(2)
    calls = [
        ((first["question"], first["context"]), {}),
        ((first,), {}),
        ((first, second), {}),
        (([first, second],), {}),
        (((first, second),), {}),
        (([SquadExample(None, e["question"], e["context"], None, None, None) for e in (first, second)],), {}),
        ((first,), {"top_k": 3}),
    ]
    for args, options in calls:
        with pytest.warns(FutureWarning, match="Passing a list of SQuAD examples"):
            expected = theirs(*args, **options)
        with pytest.warns(FutureWarning, match="Passing a list of SQuAD examples"):
            assert_same(ours(*args, **options), expected)
    squad_like = [SimpleNamespace(question_text=e["question"], context_text=e["context"]) for e in (first, second)]
    with pytest.warns(FutureWarning):
        assert_same(ours(squad_like), theirs([first, second]))


@pytest.mark.parametrize("keyword", ["X", "data"])
def test_qa_x_and_data_keywords_are_deprecated_as_in_hf(qa_pair, keyword):
    ours, theirs = qa_pair
    for value in (squad(1)[0], squad(2)):
        with pytest.warns(FutureWarning, match=f"Passing the `{keyword}` argument"):
            expected = theirs(**{keyword: value})
        with pytest.warns(FutureWarning, match=f"Passing the `{keyword}` argument"):
            assert_same(ours(**{keyword: value}), expected)


def test_qa_keywords_need_no_warning_and_lists_of_one_give_one_answer(qa_pair):
    ours, theirs = qa_pair
    examples = squad(3)
    context = no_future_warning()
    try:
        assert_same(ours(question=[e["question"] for e in examples], context=examples[0]["context"]),
                    theirs(question=[e["question"] for e in examples], context=examples[0]["context"]))
        assert_same(ours(question=[examples[1]["question"]], context=[examples[1]["context"]]),
                    theirs(question=[examples[1]["question"]], context=[examples[1]["context"]]))
        assert isinstance(ours(question=[examples[1]["question"]], context=[examples[1]["context"]]), dict)
    finally:
        context.__exit__(None, None, None)


def test_qa_iterables_generators_and_datasets(qa_pair):
    ours, theirs = qa_pair
    examples = squad(5)
    with pytest.warns(FutureWarning):
        mapped = ours(map(dict, examples))
    assert isinstance(mapped, list)
    with pytest.warns(FutureWarning):
        assert_same(mapped, theirs(map(dict, examples)))
    with pytest.warns(FutureWarning):
        expected = list(theirs(e for e in examples))
    counted = Counted(examples)
    with pytest.warns(FutureWarning):
        stream = ours(iter(counted), batch_size=2)
    assert isinstance(stream, ResultStream) and counted.taken == 0  # nothing computed before it is read
    assert_same(next(stream), expected[0])
    assert counted.taken == 2  # one batch
    assert_same([expected[0], *stream], expected)
    with pytest.warns(FutureWarning):
        from_dataset = ours(TextDataset(examples))
    assert len(from_dataset) == len(examples)
    assert_same(list(from_dataset), expected)
    with pytest.raises(TypeError, match="no length"):
        len(pipeline_stream(ours, examples))


def pipeline_stream(pipe, examples):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return pipe(e for e in examples)


def test_qa_argument_errors_are_hf_types(qa_pair):
    ours, theirs = qa_pair
    context = squad(1)[0]["context"]
    cases = [
        ((), {"question": "Who?"}),  # context missing
        ((), {"inputs": {"question": "Who?", "context": context}}),
        (({"question": "Who?"},), {}),  # key missing
        (({"question": None, "context": context},), {}),
        (({"question": "", "context": context},), {}),
        (("one string",), {}),
        ((SquadExample(None, "Who?", context, None, None, None),), {}),  # HF takes SquadExamples in a list only
        ((), {"question": 3, "context": context}),
        ((), {"question": ["a", "b"], "context": [context]}),
        ((), {"question": "Who?", "context": context, "top_k": 0}),
        ((), {"question": "Who?", "context": context, "max_answer_len": 0}),
        ((), {"question": "Who?", "context": context, "doc_stride": 90, "max_seq_len": 64}),
    ]
    for args, options in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            with pytest.raises(Exception) as expected:
                theirs(*args, **options)
            with pytest.raises(type(expected.value)):
                ours(*args, **options)


@pytest.mark.parametrize("task", ["fill-mask", "text-classification", "token-classification", "feature-extraction"])
def test_lists_generators_and_datasets_for_every_task(handmade_bundle, task):
    ours = pipeline(model=handmade_bundle(task), threads=1)
    theirs = hf(task)
    texts = botchan_masked(5, seed=3) if task == "fill-mask" else [p["text"] for p in mrpc_pairs()[:5]]
    assert_same(ours(texts), theirs(texts))
    assert_same(ours(texts[:1]), theirs(texts[:1]))
    expected = list(theirs(t for t in texts))
    counted = Counted(texts)
    stream = ours(iter(counted), batch_size=3)
    assert isinstance(stream, ResultStream) and counted.taken == 0
    assert_same(list(stream), expected)
    for batch_size in (1, 2, 8):
        assert_same(list(ours((t for t in texts), batch_size=batch_size)), expected)
    dataset = ours(TextDataset(texts))
    assert len(dataset) == len(texts)
    assert_same(list(dataset), list(theirs(TextDataset(texts))))
    if task == "feature-extraction":  # HF's feature-extraction alone takes *args, and ignores all but the first
        assert_same(ours(texts[0], texts[1]), theirs(texts[0], texts[1]))


def test_inputs_keyword_and_extra_positionals(fill_pair):
    ours, theirs = fill_pair
    text = botchan_masked(1, seed=5)[0]
    assert_same(ours(inputs=text), theirs(inputs=text))
    with pytest.raises(TypeError):
        theirs(text, text)
    with pytest.raises(TypeError):
        ours(text, text)
    with pytest.raises(TypeError):  # HF: _sanitize_parameters() got an unexpected keyword argument
        theirs(text, pooling="cls")
    with pytest.raises(TypeError):
        ours(text, pooling="cls")
    with pytest.raises(OptionError):  # and the runtime's own option error, which albert-run reports
        ours(text, pooling="cls")


def test_batch_size_and_num_workers_in_either_place(handmade_bundle):
    texts = botchan_masked(7, seed=8)
    theirs = hf("fill-mask", batch_size=2, num_workers=0)
    expected = theirs(texts)
    assert_same(pipeline("fill-mask", model=handmade_bundle("fill-mask"), batch_size=3, num_workers=2)(texts), expected)
    ours = pipeline(model=handmade_bundle("fill-mask"))
    assert_same(ours(texts, batch_size=2, num_workers=0), hf("fill-mask")(texts, batch_size=2, num_workers=0))
    assert_same(list(ours((t for t in texts), batch_size=4, num_workers=1)), expected)
    for bad in (-1, 1.5, "2"):
        with pytest.raises(OptionError, match="num_workers"):
            ours(texts, num_workers=bad)
        with pytest.raises(OptionError, match="num_workers"):
            pipeline(model=handmade_bundle("fill-mask"), num_workers=bad)


def test_fill_mask_without_mask_raises_a_pipeline_exception_like_hf(fill_pair):
    ours, theirs = fill_pair
    assert [c.__name__ for c in PipelineException.__mro__] == [c.__name__ for c in HFPipelineException.__mro__]
    with pytest.raises(HFPipelineException) as expected:
        theirs("no mask in this text")
    with pytest.raises(PipelineException) as got:
        ours("no mask in this text")
    assert (got.value.task, got.value.model) == (expected.value.task, expected.value.model) == ("fill-mask", "albert")
    assert str(got.value).startswith(str(expected.value))
    assert isinstance(got.value, InputError)  # albert-run reports it as a bad line
    with pytest.raises(PipelineException):
        ours(["a [MASK] here", "none here"])
    for empty in ("", " \t "):
        with pytest.raises(HFPipelineException):
            theirs(empty)
        with pytest.raises(PipelineException, match="No mask_token .* the text is empty"):
            ours(empty)


def test_option_errors_have_hf_types(handmade_bundle, fill_pair):
    ours, theirs = pipeline(model=handmade_bundle("text-classification")), hf("text-classification")
    for call in (lambda p: p("a text", function_to_apply="bogus"),):
        with pytest.raises(KeyError):
            call(theirs)
        with pytest.raises(KeyError, match="function_to_apply 'bogus'"):
            call(ours)
    fill, hf_fill = fill_pair
    with pytest.raises(ValueError, match="At least one target"):
        hf_fill("a [MASK]", targets=[])
    with pytest.raises(ValueError, match="At least one target"):
        fill("a [MASK]", targets=[])


def test_device_forms():
    assert parse_device("cpu") == parse_device(-1) == parse_device(torch.device("cpu")) == Device("cpu")
    assert parse_device("cuda") == parse_device("cuda:0") == parse_device(torch.device("cuda")) == Device("cuda", 0)
    assert parse_device("CUDA:3") == parse_device(torch.device("cuda:3")) == Device("cuda", 3)
    assert parse_device(2) == Device("cuda", 2, cpu_fallback=True)  # transformers: cuda:2, or the CPU without one
    assert parse_device(None) == Device("cuda", 0, cpu_fallback=True)  # transformers' default: 0
    for bad in ("gpu", "cpu:1", "cuda:x", "cuda:-1", 1.0, True):
        with pytest.raises(OptionError, match="is not one of cpu, cuda, cuda:N"):
            parse_device(bad)


def test_devices_reach_the_onnxruntime_providers(fill_pair, handmade_bundle, monkeypatch):
    bundle = handmade_bundle("fill-mask")
    for device in ("cpu", -1):
        assert pipeline(bundle, device=device).backend.providers == ["CPUExecutionProvider"]
    if not HAS_CUDA:
        for device in ("cuda", "cuda:0", "cuda:1"):
            with pytest.raises(BackendError, match=r"albert-export\[gpu\]"):
                pipeline(bundle, device=device)
        for device in (0, None):  # transformers runs on the CPU here, and so do we, saying so
            with pytest.warns(RuntimeWarning, match=r"running on the CPU as transformers does.*albert-export\[gpu\]"):
                pipe = pipeline(bundle, device=device)
            assert pipe.backend.providers == ["CPUExecutionProvider"]
            text = botchan_masked(1, seed=9)[0]
            assert_same(pipe(text), fill_pair[1](text))
    seen = []

    class Stop(Exception):
        pass

    def session(path, sess_options=None, providers=None):
        seen.append(providers)
        raise Stop("stopped after seeing the providers")

    monkeypatch.setattr(ort_backend, "cuda_available", lambda: True)
    monkeypatch.setattr(ort_backend.ort, "InferenceSession", session)
    for device, index in (("cuda", 0), ("cuda:1", 1), (3, 3), (torch.device("cuda:2"), 2)):
        with pytest.raises(BackendError, match="stopped after seeing the providers"):
            pipeline(bundle, device=device)
        assert seen.pop() == [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


def test_a_cuda_session_that_fell_back_to_the_cpu_is_an_error(handmade_bundle, monkeypatch):
    real_session = ort.InferenceSession

    def cpu_only(path, sess_options=None, providers=None):  # what onnxruntime-gpu does without its CUDA libraries
        return real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort_backend, "cuda_available", lambda: True)
    monkeypatch.setattr(ort_backend.ort, "InferenceSession", cpu_only)
    with pytest.raises(BackendError, match="could not start CUDA on device 1 .*fell back to CPUExecutionProvider"):
        pipeline(handmade_bundle("fill-mask"), device="cuda:1")


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a GPU")
def test_cuda_device_runs_on_the_gpu_with_the_same_answers(fill_pair, handmade_bundle):
    texts = botchan_masked(4, seed=12)
    for device in ("cuda", "cuda:0", 0):
        pipe = pipeline(handmade_bundle("fill-mask"), device=device)
        assert pipe.backend.providers[0] == "CUDAExecutionProvider"
        assert_same(pipe(texts), fill_pair[1](texts))


def test_albert_run_device_flag(handmade_bundle, capsys):
    bundle = str(handmade_bundle("fill-mask"))
    for flag, device in (("cpu", "cpu"), ("cuda", "cuda:0"), ("cuda:1", "cuda:1"), ("CUDA:2", "cuda:2")):
        assert albert_run_parser().parse_args([bundle, "--device", flag]).device == device
    for bad in ("gpu", "1", "cuda:"):
        with pytest.raises(SystemExit) as exit_:
            albert_run_parser().parse_args([bundle, "--device", bad])
        assert exit_.value.code == 2
        assert f"'{bad}' is not cpu, cuda or cuda:N" in capsys.readouterr().err
    if not HAS_CUDA:
        assert albert_run([bundle, "--device", "cuda:1"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("albert-run: error: device cuda:1 needs onnxruntime-gpu")
        assert "albert-export[gpu]" in err


def test_tokenizer_answers_as_hf(fill_pair):
    ours, theirs = fill_pair
    mine, hf_tok = ours.tokenizer, theirs.tokenizer
    assert mine.model_max_length == hf_tok.model_max_length == 128
    for role in ("mask", "cls", "sep", "pad", "unk"):
        assert getattr(mine, f"{role}_token") == getattr(hf_tok, f"{role}_token")
        assert getattr(mine, f"{role}_token_id") == getattr(hf_tok, f"{role}_token_id")
    assert len(mine) == len(hf_tok) and mine.vocab_size == hf_tok.vocab_size
    pair = mrpc_pairs()[0]
    texts = [p["text"] for p in mrpc_pairs()[:3]]
    assert mine(pair["text"]) == dict(hf_tok(pair["text"]))
    assert mine(pair["text"], pair["text_pair"]) == dict(hf_tok(pair["text"], pair["text_pair"]))
    assert mine(texts) == dict(hf_tok(texts))
    assert mine(texts, padding=True) == dict(hf_tok(texts, padding=True))
    assert mine(texts, truncation=True, max_length=9) == dict(hf_tok(texts, truncation=True, max_length=9))
    assert mine(texts, padding="max_length", max_length=60) == dict(hf_tok(texts, padding="max_length", max_length=60))
    for name, array in hf_tok(texts, padding=True, return_tensors="np").items():
        np.testing.assert_array_equal(mine(texts, padding=True, return_tensors="np")[name], array)
    ids = hf_tok.encode(pair["text"])
    assert mine.encode(pair["text"]) == ids
    for skip in (False, True):
        assert mine.decode(ids, skip_special_tokens=skip) == hf_tok.decode(ids, skip_special_tokens=skip)
    assert mine.decode(ids[3]) == hf_tok.decode(ids[3])
    assert mine.tokenize(pair["text"]) == hf_tok.tokenize(pair["text"])
    assert mine.convert_ids_to_tokens(ids) == hf_tok.convert_ids_to_tokens(ids)
    pieces = ["[MASK]", "no-such-piece"]
    assert mine.convert_tokens_to_ids(pieces) == hf_tok.convert_tokens_to_ids(pieces)
    assert mine.backend_tokenizer.token_to_id("[MASK]") == mine.token_to_id("[MASK]") == hf_tok.mask_token_id
    with pytest.raises(ValueError, match="np"):
        mine(texts, padding=True, return_tensors="pt")


def test_setting_model_max_length_is_honoured_as_in_hf(qa_bundle, handmade_bundle):
    ours, theirs = pipeline(model=qa_bundle), hf("question-answering")
    examples = squad(3)
    ours.tokenizer.model_max_length = theirs.tokenizer.model_max_length = 48  # QA windows: min(48, 384) tokens
    assert_same(ours(question=[e["question"] for e in examples], context=[e["context"] for e in examples]),
                theirs(question=[e["question"] for e in examples], context=[e["context"] for e in examples]))
    classify, hf_classify = pipeline(model=handmade_bundle("text-classification")), hf("text-classification")
    classify.tokenizer.model_max_length = hf_classify.tokenizer.model_max_length = 12
    texts = [p["text"] for p in mrpc_pairs()[:3]]
    assert_same(classify(texts, truncation=True), hf_classify(texts, truncation=True))
    assert_same(classify(texts, truncation=True, max_length=7), hf_classify(texts, truncation=True, max_length=7))
    for bad in (0, 129, "64"):
        with pytest.raises(OptionError, match="model_max_length must be an integer from 1 to 128"):
            classify.tokenizer.model_max_length = bad


def test_model_task_and_backend_attributes(handmade_bundle):
    bundle = handmade_bundle("text-classification", num_labels=3)
    ours = pipeline("text-classification", model=bundle)
    model = tiny_model("text-classification", num_labels=3)
    theirs = hf_pipeline("text-classification", model=model, tokenizer=hf_tokenizer(), device=-1)
    assert ours.task == theirs.task == "text-classification"
    assert ours.model.config.id2label == theirs.model.config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert ours.model.config.num_labels == theirs.model.config.num_labels == 3  # AlbertConfig's derived field
    assert ours.model.base_model_prefix == theirs.model.base_model_prefix
    assert ours.model.name_or_path == str(bundle)
    encoded = theirs.tokenizer(mrpc_pairs()[0]["text"], return_tensors="np")
    outputs = ours.backend.infer(dict(encoded))
    with torch.no_grad():
        expected = model(**theirs.tokenizer(mrpc_pairs()[0]["text"], return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(outputs["logits"], expected, atol=1e-4)


def test_conventions_on_a_bundle_albert_export_wrote(tmp_path):
    from albert_export import export

    checkpoint = tmp_path / "checkpoint"
    tiny_model("question-answering").save_pretrained(checkpoint)
    hf_tokenizer().save_pretrained(checkpoint)
    bundle = export(checkpoint, "qa", tmp_path / "qa", layers="loop", atol=1e-3, log=lambda _: None)
    ours = pipeline("question-answering", model=bundle, tokenizer=bundle, device=-1, batch_size=2)
    theirs = hf_pipeline("question-answering", model=str(checkpoint), device=-1, batch_size=2)
    windows = {"max_seq_len": 48, "doc_stride": 16}  # several windows per context
    examples = squad(3)
    with pytest.warns(FutureWarning):
        expected = theirs(examples[0]["question"], examples[0]["context"], **windows)
    with pytest.warns(FutureWarning):
        assert_same(ours(examples[0]["question"], examples[0]["context"], **windows), expected)
    with pytest.warns(FutureWarning):
        expected = list(theirs((e for e in examples), **windows))
    with pytest.warns(FutureWarning):
        assert_same(list(ours((e for e in examples), **windows)), expected)
    assert ours.tokenizer.model_max_length == theirs.tokenizer.model_max_length == 128
    for role in ("mask", "cls", "sep", "pad", "unk"):
        assert getattr(ours.tokenizer, f"{role}_token_id") == getattr(theirs.tokenizer, f"{role}_token_id")
    assert ours.tokenizer(examples[0]["question"]) == dict(theirs.tokenizer(examples[0]["question"]))
