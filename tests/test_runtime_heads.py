"""The runtime's heads against transformers 4.57 pipelines on the same HF torch model and tokenizer.

The runtime side runs through its own BatchRunner over a TorchBackend wrapping the HF model, so these tests
check tokenization, batching/padding and postprocessing; the ONNX path is covered in test_runtime_pipeline.
"""
from __future__ import annotations

import csv
import json
import random
import warnings

import numpy as np
import pytest
import torch
from transformers import AlbertForMaskedLM
from transformers import pipeline as hf_pipeline

from runtime.errors import InputError, OptionError, TruncationWarning
from runtime.pipelines import call_head
from runtime.runner import BatchRunner
from runtime.taskspec import SEQUENCE, TASKS
from runtime.tasks import feature_extraction, fill_mask, multiple_choice, pretraining, text_classification
from runtime.tasks.base import TaskContext
from tests.conftest import DATA
from tests.handmade import MAX_LENGTH, SPECIAL_TOKENS, TorchBackend, hf_tokenizer, runtime_tokenizer, tiny_model

torch.set_num_threads(1)
ATOL = 1e-4
HF_TASK = {"fill-mask": "fill-mask", "text-classification": "text-classification", "feature-extraction": "feature-extraction"}


def context(model, task: str, batch_size: int = 4) -> tuple[TaskContext, TorchBackend]:
    backend = TorchBackend(model, task)
    axes = {name: tuple(i for i, d in enumerate(dims) if d == SEQUENCE)
            for name, dims in zip(TASKS[task].outputs, TASKS[task].output_dims)}
    hf = hf_tokenizer()
    ctx = TaskContext(
        tokenizer=runtime_tokenizer(hf),
        runner=BatchRunner(backend, axes, batch_size=batch_size, pad_token_id=hf.pad_token_id),
        config=json.loads(model.config.to_json_string()),
        max_length=MAX_LENGTH,
        special_tokens=dict(SPECIAL_TOKENS),
    )
    return ctx, backend


def assert_same(ours, theirs, path="result", numpy_floats_within_atol=False, atol=ATOL):
    """Same structure (dict keys in HF's order), equal strings/ints/labels of the same type, floats of the same type
    within atol; numpy float scores (token-classification's float32) of the same type within atol when asked, else
    equal. The one comparison of answers every test uses (with HF's pipelines, albert-run-cpp's, Triton's)."""
    if numpy_floats_within_atol and isinstance(theirs, np.floating):
        assert type(ours) is type(theirs) and abs(ours - theirs) <= atol, f"{path}: {ours!r} vs {theirs!r}"
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and list(ours) == list(theirs), f"{path}: keys {ours!r} vs {theirs!r}"
        for key in theirs:
            assert_same(ours[key], theirs[key], f"{path}.{key}", numpy_floats_within_atol, atol)
    elif isinstance(theirs, (list, tuple)):
        assert isinstance(ours, list) and len(ours) == len(theirs), f"{path}: {ours!r} vs {theirs!r}"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{path}[{i}]", numpy_floats_within_atol, atol)
    elif isinstance(theirs, float):
        assert type(ours) is type(theirs) and abs(ours - theirs) <= atol, f"{path}: {ours!r} vs {theirs!r}"
    else:
        assert type(ours) is type(theirs) and ours == theirs, f"{path}: {ours!r} vs {theirs!r}"


def botchan_masked(count: int, masks: int = 1, seed: int = 0) -> list[str]:
    lines = [l.strip() for l in (DATA / "botchan.txt").read_text(encoding="utf-8").splitlines()]
    lines = [l for l in lines if 40 <= len(l) <= 90 and len(l.split()) >= 6]
    rng = random.Random(seed)
    texts = []
    for line in rng.sample(lines, count):
        words = line.split()
        for position in sorted(rng.sample(range(1, len(words) - 1), masks)):
            words[position] = "[MASK]"
        texts.append(" ".join(words))
    return texts


def mrpc_pairs() -> list[dict[str, str]]:
    with open(DATA / "mrpc_dev_sample.tsv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [{"text": r["#1 String"], "text_pair": r["#2 String"]} for r in rows]


def swag_items() -> list[dict]:
    items = []
    for line in (DATA / "swag_sample.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        items.append({"prompt": row["sent1"], "choices": [f"{row['sent2']} {row[f'ending{i}']}" for i in range(4)]})
    return items


@pytest.fixture(scope="module")
def mlm():
    model = tiny_model("fill-mask")
    return model, context(model, "fill-mask"), hf_pipeline("fill-mask", model=model, tokenizer=hf_tokenizer())


# ---- fill-mask ----------------------------------------------------------------------------------------------


def test_fill_mask_matches_hf_on_botchan(mlm):
    _, (ctx, backend), hf = mlm
    texts = botchan_masked(8)
    theirs = hf(texts)
    ours = call_head(fill_mask, ctx, texts)
    assert_same(ours, theirs)
    assert {len(r) for r in ours} == {5}
    assert max(r[0]["score"] for r in ours) > 0.05  # the model is peaked enough for ATOL to mean something
    assert len(backend.calls) == 2  # 8 texts in batches of 4


def test_fill_mask_single_text_top_k_and_list_of_one(mlm):
    _, (ctx, _), hf = mlm
    text = botchan_masked(1, seed=3)[0]
    assert_same(call_head(fill_mask, ctx, text, top_k=3), hf(text, top_k=3))
    assert_same(call_head(fill_mask, ctx, [text], top_k=2), hf([text], top_k=2))  # HF gives the single result
    assert_same(call_head(fill_mask, ctx, text, top_k=2000), hf(text, top_k=len(hf.tokenizer)))


def test_fill_mask_several_masks_gives_list_per_mask(mlm):
    _, (ctx, _), hf = mlm
    texts = botchan_masked(4, masks=2, seed=5)
    ours = call_head(fill_mask, ctx, texts, top_k=3)
    assert_same(ours, hf(texts, top_k=3))
    assert all(len(r) == 2 and len(r[0]) == 3 for r in ours)
    assert "[MASK]" in ours[0][0][0]["sequence"]


def test_fill_mask_targets_match_hf_and_warn_for_unknown_words(mlm):
    _, (ctx, _), hf = mlm
    texts = botchan_masked(3, seed=7)
    in_vocab = hf.tokenizer.convert_ids_to_tokens([20, 33, 47, 81])
    assert_same(call_head(fill_mask, ctx, texts, targets=in_vocab), hf(texts, targets=in_vocab))
    assert_same(call_head(fill_mask, ctx, texts, targets="▁the", top_k=3), hf(texts, targets="▁the", top_k=3))
    mixed = ["▁the", "teacher", "botchan"]  # not vocabulary entries: their first sub-token is used
    with pytest.warns(UserWarning, match="does not exist in the model vocabulary"):
        ours = call_head(fill_mask, ctx, texts, targets=mixed)
    assert_same(ours, hf(texts, targets=mixed))


def test_fill_mask_truncates_long_text_with_a_warning(mlm):
    _, (ctx, _), hf = mlm
    text = "The [MASK] said " + " ".join(["nothing"] * 150) + "."
    with pytest.warns(TruncationWarning, match=f"maximum of {MAX_LENGTH} tokens"):
        ours = call_head(fill_mask, ctx, text)
    assert_same(ours, hf(text, tokenizer_kwargs={"truncation": True}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call_head(fill_mask, ctx, text, truncation=True)
    with pytest.raises(InputError, match=f"takes at most {MAX_LENGTH}"):
        call_head(fill_mask, ctx, text, truncation=False)


@pytest.mark.parametrize("bad", ["", "   ", "no mask in this one"])
def test_fill_mask_refuses_empty_text_and_missing_mask(mlm, bad):
    _, (ctx, _), _ = mlm
    with pytest.raises(InputError, match="empty|No mask_token"):
        call_head(fill_mask, ctx, ["a [MASK]", bad])


def test_fill_mask_bad_options(mlm):
    _, (ctx, _), _ = mlm
    with pytest.raises(OptionError, match="top_k"):
        call_head(fill_mask, ctx, "a [MASK]", top_k=0)
    with pytest.raises(OptionError, match="At least one target"):
        with pytest.warns(UserWarning):
            call_head(fill_mask, ctx, "a [MASK]", targets=[""])


def test_batching_does_not_change_results(mlm):
    model, _, _ = mlm
    texts = botchan_masked(7, seed=11) + ["a [MASK]", "The [MASK] " + "end " * 30]
    results = []
    for batch_size in (1, 3, 16):
        ctx, backend = context(model, "fill-mask", batch_size=batch_size)
        results.append(call_head(fill_mask, ctx, texts, top_k=5))
        lengths = [shape[-1] for shape in backend.calls]
        assert lengths == sorted(lengths)  # grouped by length
        assert len(backend.calls) == -(-len(texts) // batch_size)
    assert_same(results[1], results[0])
    assert_same(results[2], results[0])


# ---- text-classification ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[1, 2, 3], ids=lambda n: f"{n}labels")
def classifier(request):
    model = tiny_model("text-classification", num_labels=request.param)
    if request.param == 3:
        model.config.id2label = {0: "contradiction", 1: "entailment", 2: "neutral"}
        model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    return model, context(model, "text-classification")[0], hf_pipeline("text-classification", model=model, tokenizer=hf_tokenizer())


def test_text_classification_pairs_match_hf(classifier):
    _, ctx, hf = classifier
    pairs = mrpc_pairs()
    for params in ({}, {"top_k": None}, {"top_k": 1}, {"top_k": 2}, {"function_to_apply": "none"},
                   {"function_to_apply": "sigmoid", "top_k": None}, {"function_to_apply": "softmax"}):
        with pytest.warns(TruncationWarning):  # one MRPC pair is longer than 128 tokens
            ours = call_head(text_classification, ctx, pairs, **params)
        assert_same(ours, hf(pairs, truncation=True, **params))
        assert_same(call_head(text_classification, ctx, pairs[0], **params), hf(pairs[0], **params))


def test_text_classification_single_texts_legacy_shapes(classifier):
    _, ctx, hf = classifier
    texts = [p["text"] for p in mrpc_pairs()]
    for params in ({}, {"top_k": None}, {"top_k": 1}, {"return_all_scores": True}, {"return_all_scores": False}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected_one, expected_many = hf(texts[0], **params), hf(texts, **params)
        assert_same(call_head(text_classification, ctx, texts[0], **params), expected_one)
        assert_same(call_head(text_classification, ctx, texts, **params), expected_many)
    assert isinstance(call_head(text_classification, ctx, texts[0]), list)  # HF's legacy [ {label, score} ]


def test_text_classification_problem_type_decides_the_function():
    model = tiny_model("text-classification", num_labels=3, problem_type="multi_label_classification")
    ctx, _ = context(model, "text-classification")
    hf = hf_pipeline("text-classification", model=model, tokenizer=hf_tokenizer())
    pairs = mrpc_pairs()[:3]
    ours = call_head(text_classification, ctx, pairs, top_k=None, truncation=True)
    assert_same(ours, hf(pairs, top_k=None, truncation=True))
    assert sum(entry["score"] for entry in ours[0]) != pytest.approx(1.0, abs=1e-3)  # sigmoid, not softmax


def test_text_classification_bad_inputs(classifier):
    _, ctx, _ = classifier
    with pytest.raises(InputError, match="text pairs"):
        call_head(text_classification, ctx, [["a", "b"]])
    with pytest.raises(InputError, match="empty"):
        call_head(text_classification, ctx, {"text": "fine", "text_pair": ""})
    with pytest.raises(OptionError, match="function_to_apply"):
        call_head(text_classification, ctx, "fine", function_to_apply="tanh")


def test_text_classification_takes_a_numpy_top_k_as_the_other_heads_do(classifier):
    _, ctx, _ = classifier
    expected = call_head(text_classification, ctx, "fine", top_k=2)
    assert_same(call_head(text_classification, ctx, "fine", top_k=np.int64(2)), expected)


# ---- feature-extraction -------------------------------------------------------------------------------------


def test_feature_extraction_matches_hf_and_pools():
    model = tiny_model("feature-extraction")
    ctx, _ = context(model, "feature-extraction")
    hf = hf_pipeline("feature-extraction", model=model, tokenizer=hf_tokenizer())
    texts = [p["text"] for p in mrpc_pairs()]
    ours, theirs = call_head(feature_extraction, ctx, texts), hf(texts)
    assert_same(ours, theirs)
    assert_same(call_head(feature_extraction, ctx, texts[0]), hf(texts[0]))
    hidden = np.array(theirs[2][0])  # (S, H)
    assert np.allclose(call_head(feature_extraction, ctx, texts[2], pooling="cls"), hidden[0], atol=ATOL)
    assert np.allclose(call_head(feature_extraction, ctx, texts[2], pooling="mean"), hidden.mean(axis=0), atol=ATOL)
    tensor = call_head(feature_extraction, ctx, texts[2], return_tensors=True)
    assert isinstance(tensor, np.ndarray) and tensor.shape == hidden[None].shape
    with pytest.raises(OptionError, match="pooling"):
        call_head(feature_extraction, ctx, texts[0], pooling="max")


# ---- multiple-choice ----------------------------------------------------------------------------------------


def test_multiple_choice_matches_albert_for_multiple_choice_on_swag():
    model = tiny_model("multiple-choice")
    ctx, _ = context(model, "multiple-choice")
    hf = hf_tokenizer()
    items = swag_items()
    ours = call_head(multiple_choice, ctx, items)
    assert len(ours) == len(items)
    for item, result in zip(items, ours):
        encoded = hf([item["prompt"]] * 4, item["choices"], padding=True, return_tensors="pt")
        with torch.no_grad():
            probs = model(**{k: v[None] for k, v in encoded.items()}).logits.softmax(-1)[0].numpy()
        order = np.argsort(-probs, kind="stable")
        assert [r["choice"] for r in result] == order.tolist()
        assert [r["text"] for r in result] == [item["choices"][i] for i in order]
        assert np.allclose([r["score"] for r in result], probs[order], atol=ATOL)
    assert call_head(multiple_choice, ctx, items[0], top_k=2) == ours[0][:2]
    mixed = [items[1], {"prompt": items[2]["prompt"], "choices": items[2]["choices"][:2]}, items[3]]
    together = call_head(multiple_choice, ctx, mixed)  # 4, 2 and 4 choices in one call
    assert [len(r) for r in together] == [4, 2, 4]
    assert_same(together[0], ours[1])
    assert_same(together[1], call_head(multiple_choice, ctx, mixed[1]))


def test_multiple_choice_bad_inputs():
    ctx, _ = context(tiny_model("multiple-choice"), "multiple-choice")
    for bad in ({"prompt": "x"}, {"prompt": "x", "choices": ["only one"]}, {"prompt": "", "choices": ["a", "b"]},
                {"prompt": "x", "choices": ["a", " "]}, "plain text"):
        with pytest.raises(InputError):
            call_head(multiple_choice, ctx, bad)


# ---- pretraining --------------------------------------------------------------------------------------------


def test_pretraining_masks_match_fill_mask_pipeline_and_sop_matches_torch():
    model = tiny_model("pretraining")
    ctx, _ = context(model, "pretraining")
    mlm = AlbertForMaskedLM(model.config).eval()
    missing, _ = mlm.load_state_dict(model.state_dict(), strict=False)
    assert not missing  # albert.* and predictions.* are the same modules
    hf_fill = hf_pipeline("fill-mask", model=mlm, tokenizer=hf_tokenizer())
    texts = botchan_masked(3, seed=2) + botchan_masked(2, masks=2, seed=4)
    pairs = [{"text": t, "text_pair": p["text"]} for t, p in zip(texts, mrpc_pairs())]
    ours = call_head(pretraining, ctx, pairs, top_k=3)
    hf = hf_tokenizer()
    for pair, result in zip(pairs, ours):
        encoded = hf(pair["text"], pair["text_pair"], return_tensors="pt")
        with torch.no_grad():
            out = model(**encoded)
        sop = out.sop_logits.softmax(-1)[0].numpy()
        assert [e["label"] for e in result["sentence_order"]] == (["original", "swapped"] if sop[0] >= sop[1] else ["swapped", "original"])
        assert np.allclose(sorted(e["score"] for e in result["sentence_order"]), sorted(sop), atol=ATOL)
        positions = (encoded.input_ids[0] == hf.mask_token_id).nonzero()[:, 0]
        assert len(result["masks"]) == len(positions)
        for position, proposals in zip(positions, result["masks"]):
            probs = out.prediction_logits[0, position].softmax(-1)
            values, tokens = probs.topk(3)
            assert [p["token"] for p in proposals] == tokens.tolist()
            assert np.allclose([p["score"] for p in proposals], values.numpy(), atol=ATOL)
    single = [t for t in texts if t.count("[MASK]") == 1][0]
    assert_same(call_head(pretraining, ctx, single, top_k=4)["masks"][0], hf_fill(single, top_k=4))
    assert call_head(pretraining, ctx, "no mask at all")["masks"] == []
    targets = hf.convert_ids_to_tokens([20, 33, 47])
    assert_same(call_head(pretraining, ctx, single, targets=targets)["masks"][0], hf_fill(single, targets=targets))


# ---- tokenizer options (HF's tokenizer_kwargs / tokenize_kwargs / **tokenizer_kwargs) -------------------------


def test_tokenizer_options_match_hf(mlm):
    _, (ctx, _), hf = mlm
    long_text = "This is a simple [MASK]. " + "...with a large amount of repeated text appended. " * 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for truncation: no warning
        ours = call_head(fill_mask, ctx, long_text, tokenizer_kwargs={"truncation": True})
    assert_same(ours, hf(long_text, tokenizer_kwargs={"truncation": True}))
    short = {"truncation": True, "max_length": 12}
    assert_same(call_head(fill_mask, ctx, long_text, tokenizer_kwargs=short), hf(long_text, tokenizer_kwargs=short))

    model = tiny_model("text-classification", num_labels=2)
    ctx_cls, _ = context(model, "text-classification")
    hf_cls = hf_pipeline("text-classification", model=model, tokenizer=hf_tokenizer())
    pairs = mrpc_pairs()
    for strategy, max_length in ((True, 40), ("longest_first", 17), ("only_first", 110), ("only_second", 110)):
        params = {"truncation": strategy, "max_length": max_length, "padding": True, "top_k": None}
        assert_same(call_head(text_classification, ctx_cls, pairs, **params), hf_cls(pairs, **params))
    with pytest.raises(InputError, match="cannot fit the input into 40 tokens"):  # HF raises too
        call_head(text_classification, ctx_cls, pairs[0], truncation="only_second", max_length=40)

    model = tiny_model("feature-extraction")
    ctx_fe, _ = context(model, "feature-extraction")
    hf_fe = hf_pipeline("feature-extraction", model=model, tokenizer=hf_tokenizer())
    texts = [p["text"] for p in pairs]
    options = {"truncation": True, "max_length": 9}
    assert_same(call_head(feature_extraction, ctx_fe, texts, tokenize_kwargs=options), hf_fe(texts, tokenize_kwargs=options))
    assert len(call_head(feature_extraction, ctx_fe, texts[0], truncation=True, tokenize_kwargs={"max_length": 9})[0]) == 9
    with pytest.raises(OptionError, match="defined twice"):
        call_head(feature_extraction, ctx_fe, texts[0], truncation=True, tokenize_kwargs={"truncation": True})
    with pytest.raises(OptionError, match="not supported"):
        call_head(fill_mask, ctx, "a [MASK]", tokenizer_kwargs={"stride": 3})


@pytest.mark.parametrize("task", ["feature-extraction", "fill-mask", "multiple-choice", "pretraining",
                                  "text-classification", "token-classification"])
def test_a_head_called_directly_names_the_parameters_it_does_not_take(task):
    """pipeline() refuses unknown parameters first (UnknownParameterError); a head's own settings() does too, for
    callers of the stages, before it reads anything of its context."""
    from runtime.errors import CallError
    from runtime.pipelines import head_for
    from runtime.taskspec import TASKS

    with pytest.raises(CallError) as refused:
        head_for(task).settings(None, {"bogus": 1, "another": 2})
    known = sorted(TASKS[task].parameters)
    assert str(refused.value) == f"{task} got unexpected parameters ['another', 'bogus']; known: {known}"
