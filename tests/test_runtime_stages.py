"""The stage API (../shared/DESIGN.md, "Each head is three stages"): Pipeline.preprocess(item, **params) -> Features,
Pipeline.forward(windows) -> per-window outputs (the only engine call), Pipeline.postprocess(features, outputs)
-> exactly what run_each([item])[0] and pipe(item) give. Real bundles, onnxruntime CPU."""
from __future__ import annotations

import numpy as np
import pytest

from runtime import pipeline
from runtime.errors import InputError, OptionError, UnknownParameterError
from runtime.tasks.base import Features
from tests.test_runtime_heads import assert_same, botchan_masked, mrpc_pairs, swag_items

LONG_CONTEXT = " ".join(
    f"In year {1900 + i} the river town of Ashford counted {i * 7 % 97} boats and {i * 13 % 89} mills." for i in range(30)
)


def items_for(task: str) -> list:
    texts = [p["text"] for p in mrpc_pairs()[:3]]
    if task == "fill-mask":
        return botchan_masked(3, seed=4) + botchan_masked(1, masks=2, seed=5)
    if task == "text-classification":
        return [texts[0], mrpc_pairs()[1], texts[2]]
    if task == "token-classification":
        return texts + [LONG_CONTEXT]
    if task == "question-answering":
        return [{"question": "How many boats?", "context": texts[0]},
                {"question": "What did the town count?", "context": LONG_CONTEXT},
                {"question": "Who?", "context": texts[1]}]
    if task == "multiple-choice":
        item = swag_items()[0]
        return [item, {"prompt": item["prompt"], "choices": item["choices"][:3]}, swag_items()[1]]
    return texts


PARAMS = {"token-classification": {"aggregation_strategy": "simple", "stride": 16},
          "question-answering": {"max_seq_len": 48, "doc_stride": 16, "top_k": 2},
          "fill-mask": {"top_k": 3}, "text-classification": {"top_k": 2}}
TASKS = ["fill-mask", "text-classification", "token-classification", "question-answering", "multiple-choice",
         "feature-extraction"]


class Counting:
    """The pipeline's engine, counting its calls and the shape of each batch."""

    def __init__(self, engine):
        self.engine, self.shapes = engine, []
        self.input_names, self.output_names = engine.input_names, engine.output_names

    def infer(self, inputs):
        self.shapes.append(inputs["input_ids"].shape)
        return self.engine.infer(inputs)


@pytest.fixture(scope="module", params=TASKS)
def staged(request, handmade_bundle):
    task = request.param
    config = {"num_labels": 3} if task in ("text-classification", "token-classification") else {}
    pipe = pipeline(handmade_bundle(task, **config), threads=1, batch_size=4)
    pipe.runner.backend = counting = Counting(pipe.runner.backend)
    return task, pipe, counting


def test_stages_give_run_each_and_call_answers(staged):
    task, pipe, counting = staged
    params = PARAMS.get(task, {})
    items = items_for(task)
    features = [pipe.preprocess(item, **params) for item in items]
    for feature in features:
        assert isinstance(feature, Features) and feature.windows
        for window in feature.windows:
            rank = 2 if task == "multiple-choice" else 1
            assert set(window) == {"input_ids", "attention_mask", "token_type_ids"}
            assert all(value.dtype == np.int64 and value.ndim == rank for value in window.values()), task
    if task in ("token-classification", "question-answering"):
        assert max(len(feature.windows) for feature in features) > 2  # the long input is several windows
    # one forward over every input's windows, interleaved, then split back in order
    windows = [window for feature in features for window in feature.windows]
    counting.shapes.clear()
    outputs = pipe.forward(windows)
    assert len(outputs) == len(windows)
    assert len(counting.shapes) >= -(-len(windows) // pipe.batch_size)
    assert all(shape[0] <= pipe.batch_size for shape in counting.shapes)
    start, staged_results = 0, []
    for feature in features:
        staged_results.append(pipe.postprocess(feature, outputs[start:start + len(feature.windows)]))
        start += len(feature.windows)
    expected = pipe.run_each(items, **params)
    assert_same(staged_results, expected, numpy_floats_within_atol=True)
    for item, feature, result in zip(items, features, expected):
        assert_same(pipe.postprocess(feature, pipe.forward(feature.windows)), result, numpy_floats_within_atol=True)
        assert_same(pipe.run_each([item], **params)[0], result, numpy_floats_within_atol=True)
    if task != "question-answering":  # QA's call form reads items as question=/context= too; the rest take one item
        assert_same(pipe(items[0], **params), expected[0], numpy_floats_within_atol=True)


def test_forward_groups_by_choices_and_length_and_cuts_outputs_back(staged):
    task, pipe, counting = staged
    features = [pipe.preprocess(item, **PARAMS.get(task, {})) for item in items_for(task)]
    windows = [window for feature in features for window in feature.windows]
    counting.shapes.clear()
    outputs = pipe.forward(windows)
    # sorted by (choices, length), cut into batches of batch_size that never mix choice counts, each padded to
    # its own longest window
    keys = sorted((w["input_ids"].shape[:-1], w["input_ids"].shape[-1]) for w in windows)
    expected = []
    for rest, length in keys:
        if expected and expected[-1][0] == rest and len(expected[-1][1]) < pipe.batch_size:
            expected[-1][1].append(length)
        else:
            expected.append((rest, [length]))
    assert counting.shapes == [(len(lengths), *rest, max(lengths)) for rest, lengths in expected]
    for window, output in zip(windows, outputs):
        length = window["input_ids"].shape[-1]
        for name, value in output.items():
            if name in ("logits",) and task in ("fill-mask", "token-classification"):
                assert value.shape[0] == length, name
            if name in ("start_logits", "end_logits", "last_hidden_state"):
                assert value.shape[0] == length, name
            if task == "multiple-choice":
                assert value.shape == (window["input_ids"].shape[0],), name
    assert pipe.forward([]) == []


def test_forward_pads_per_batch_not_to_the_longest_of_all(handmade_bundle):
    pipe = pipeline(handmade_bundle("fill-mask"), threads=1, batch_size=2)
    pipe.runner.backend = counting = Counting(pipe.runner.backend)
    texts = ["a [MASK].", "The [MASK] " + "word " * 40, "b [MASK] c.", "The [MASK] " + "word " * 38]
    windows = [w for text in texts for w in pipe.preprocess(text).windows]
    pipe.forward(windows)
    lengths = sorted(w["input_ids"].shape[-1] for w in windows)
    assert counting.shapes == [(2, lengths[1]), (2, lengths[3])]  # short with short, long with long


def test_preprocess_checks_item_and_params(handmade_bundle):
    pipe = pipeline(handmade_bundle("fill-mask"), threads=1, top_k=2)
    with pytest.raises(InputError, match="mask"):
        pipe.preprocess("no mask here")
    with pytest.raises(OptionError, match="top_k"):
        pipe.preprocess("a [MASK]", top_k=0)
    with pytest.raises(UnknownParameterError, match="does not take aggregation_strategy"):
        pipe.preprocess("a [MASK]", aggregation_strategy="simple")
    features = pipe.preprocess("a [MASK].")
    assert features.settings.top_k == 2  # the pipeline's defaults merged
    outputs = pipe.forward(features.windows)
    assert len(pipe.postprocess(features, outputs)) == 2
    assert len(pipe.postprocess(features, outputs, top_k=4)) == 4  # postprocessing parameters may change
    with pytest.raises(InputError, match="got 0 outputs for 1 windows"):
        pipe.postprocess(features, [])


def test_text_classification_single_text_keeps_hf_legacy_form_through_the_stages(handmade_bundle):
    pipe = pipeline(handmade_bundle("text-classification", num_labels=3), threads=1)
    text = mrpc_pairs()[0]["text"]
    features = pipe.preprocess(text)
    assert_same(pipe.postprocess(features, pipe.forward(features.windows)), pipe.run_each([text])[0])
    assert_same(pipe.run_each([text])[0], pipe(text))
