"""Bundles in Node.js, against the Python runtime on the same inputs: transformers.js loads a bundle directory as a
local model (fill-mask, text-classification, question-answering, feature-extraction; it has no ALBERT
token-classification class), and examples/node/qa.mjs answers questions with onnxruntime-node exactly as the
runtime does. Needs `scripts/setup-node.sh` (npm ci in examples/node) to have run."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from albert_export.exporter import export
from runtime import pipeline
from runtime.tokenizer import load_tokenizer
from tests.export_helpers import quiet, save_checkpoint

torch.set_num_threads(1)
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "node"
NODE = "node"
SCORE_ATOL = 1e-4
MAX_LENGTH = 64
TEXTS = ["Plants create [MASK] through photosynthesis.", "The capital of France is [MASK].",
         "I [MASK] this movie, it was wonderful and long."]
QUESTIONS = [
    {"question": "Who wrote it?", "context": "It was written by Emile Zola."},
    {"question": "Where is the café?", "context": "The  café is in Paris, near the river and the old bridge."},
    {"question": "What do plants create?", "context": "Plants create energy through photosynthesis, says the book."},
    {"question": "Who sings?", "context": "  The choir   sings, the  organ plays. "},
]
SHORT_QUESTIONS = [  # at most 15 context tokens: transformers.js has no max_answer_len
    {"question": "Who wrote it?", "context": "It was written by Emile Zola."},
    {"question": "Where is the café?", "context": "The café is in Paris, by the sea."},
    {"question": "What do plants make?", "context": "Plants make it in the sun."},
]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    if not (EXAMPLE / "node_modules" / "@huggingface" / "transformers").is_dir():
        pytest.fail("examples/node/node_modules is missing: run scripts/setup-node.sh (npm ci) first")
    root = tmp_path_factory.mktemp("node")
    made = {}
    for task in ("fill-mask", "text-classification", "question-answering", "feature-extraction",
                 "token-classification"):
        save_checkpoint(root / f"{task}-checkpoint", task, max_position_embeddings=MAX_LENGTH)
        made[task] = export(root / f"{task}-checkpoint", task, root / task, ort_format=task == "question-answering",
                            log=quiet)
    return made


def node(script: str, *args: str, lines: list) -> subprocess.CompletedProcess:
    stdin = "".join(json.dumps(line) + "\n" for line in lines)
    return subprocess.run([NODE, script, *map(str, args)], input=stdin, cwd=EXAMPLE, capture_output=True, text=True,
                          timeout=300)


def node_results(script: str, *args: str, lines: list) -> list:
    done = node(script, *args, lines=lines)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def assert_same_entries(theirs: list[dict], ours: list[dict], exact_keys: tuple[str, ...]):
    assert len(theirs) == len(ours)
    for their, our in zip(theirs, ours):
        assert {key: their[key] for key in exact_keys} == {key: our[key] for key in exact_keys}
        assert their["score"] == pytest.approx(our["score"], abs=SCORE_ATOL)


def test_transformers_js_fill_mask_gives_the_runtimes_tokens_and_scores(bundles):
    theirs = node_results("pipeline.mjs", "fill-mask", bundles["fill-mask"], lines=TEXTS)
    ours = pipeline(str(bundles["fill-mask"]))(TEXTS)
    for their, our in zip(theirs, ours, strict=True):
        assert_same_entries(their, our, ("token", "token_str", "sequence"))


def test_transformers_js_text_classification_gives_the_runtimes_labels_and_scores(bundles):
    theirs = node_results("pipeline.mjs", "text-classification", bundles["text-classification"], lines=TEXTS)
    ours = pipeline(str(bundles["text-classification"]))(TEXTS)
    assert_same_entries([result[0] for result in theirs], ours, ("label",))


def test_transformers_js_feature_extraction_gives_the_runtimes_hidden_states(bundles):
    theirs = node_results("pipeline.mjs", "feature-extraction", bundles["feature-extraction"], lines=TEXTS)
    ours = pipeline(str(bundles["feature-extraction"]))(TEXTS)
    for their, our in zip(theirs, ours, strict=True):
        np.testing.assert_allclose(np.array(their), np.array(our), atol=SCORE_ATOL, rtol=0)


def test_transformers_js_question_answering_decodes_the_runtimes_token_span(bundles):
    """transformers.js picks the best token span as HF does, then decodes its tokens (normalized text: lowercase,
    no leading space) where HF slices the context, widened to whole words; with word alignment off (token spans)
    and short contexts without <unk> tokens (transformers.js masks those too), the spans and scores agree."""
    bundle = bundles["question-answering"]
    theirs = node_results("pipeline.mjs", "question-answering", bundle, lines=SHORT_QUESTIONS)
    qa = pipeline(str(bundle))
    tokenizer = load_tokenizer(bundle / "tokenizer.json")
    for their, item in zip(theirs, SHORT_QUESTIONS, strict=True):
        encoding = tokenizer.encode(item["question"], item["context"])
        assert tokenizer.token_to_id("<unk>") not in encoding.ids and encoding.sequence_ids.count(1) <= 15
        ours = qa(**item, align_to_words=False)
        span = [token for token, (start, end), sequence in zip(encoding.ids, encoding.offsets, encoding.sequence_ids)
                if sequence == 1 and ours["start"] <= start and end <= ours["end"]]
        assert their["answer"] == tokenizer.decode(span, skip_special_tokens=True)
        assert their["score"] == pytest.approx(ours["score"], abs=SCORE_ATOL)


def test_transformers_js_has_no_albert_token_classification(bundles):
    done = node("pipeline.mjs", "token-classification", bundles["token-classification"], lines=["Hello world"])
    assert done.returncode == 1 and done.stderr.strip() == "pipeline.mjs: Unsupported model type: albert"


@pytest.mark.parametrize("model", ["model.onnx", "model.ort"])
def test_node_example_answers_as_the_runtime(model, bundles):
    bundle = bundles["question-answering"]
    theirs = node_results("qa.mjs", "--model", model, bundle, lines=QUESTIONS + [{**QUESTIONS[1], "top_k": 3}])
    qa = pipeline(str(bundle))
    ours = [qa(**item) for item in QUESTIONS] + [qa(**QUESTIONS[1], top_k=3)]
    for their, our in zip(theirs, ours, strict=True):
        their, our = ([their], [our]) if isinstance(our, dict) else (their, our)
        assert_same_entries(their, our, ("answer", "start", "end"))
    one = node("qa.mjs", bundle, QUESTIONS[0]["question"], QUESTIONS[0]["context"], lines=[])
    assert json.loads(one.stdout) == theirs[0]


def test_node_example_refuses_what_it_cannot_answer(bundles):
    bundle = bundles["question-answering"]
    tokens = len(load_tokenizer(bundle / "tokenizer.json").encode("Who?", "word " * 80).ids)
    too_long = node("qa.mjs", bundle, "Who?", "word " * 80, lines=[])
    assert too_long.returncode == 1
    assert too_long.stderr.strip() == (f"qa.mjs: question and context take {tokens} tokens, more than the "
                                       f"{MAX_LENGTH} this example answers in one window")
    wrong_task = node("qa.mjs", bundles["fill-mask"], "Who?", "Zola.", lines=[])
    assert wrong_task.returncode == 1 and "is a fill-mask bundle" in wrong_task.stderr
    unlisted = node("qa.mjs", "--model", "../outside.onnx", bundle, "Who?", "Zola.", lines=[])
    assert unlisted.returncode == 1
    assert unlisted.stderr.strip() == "qa.mjs: the bundle's manifest lists no ../outside.onnx"
    assert node("qa.mjs", lines=[]).returncode == 2
    assert node("qa.mjs", "--model", lines=[]).returncode == 2
