"""Calibration examples from a file (text lines, JSONL, SQuAD JSON) or the built-in default, tokenized as the
runtime tokenizes them (the bundle's `tokenizers` tokenizer, runtime.tokenizer.encode) into padded batches.

An example is a text, a (text, text_pair) pair, a question with its context, or a prompt with choices. Each task
takes what fits it: question answering encodes (question, context) pairs, multiple choice encodes one row per
choice, the other tasks encode texts and pairs. Text that does not fit a task is adapted (a plain text becomes
the context of a generic question; a question and context become a pair), so any data calibrates any task.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from runtime.errors import InputError
from runtime.taskspec import TASKS
from runtime.tokenizer import encode, feature_from_encoding, padded_batch, stacked_feature

from .errors import CalibrationDataError

DEFAULT_DATA = Path(__file__).with_name("default.jsonl")
DEFAULT_SAMPLES = 128
DEFAULT_BATCH_SIZE = 8
CALIBRATION_MAX_LENGTH = 384  # tokens per calibration example (SQuAD-style windows)
GENERIC_QUESTION = "What is this text about?"
JSONL_FIELDS = ("text", "text_pair", "question", "context", "prompt", "choices", "sentence", "sentence1",
                "sentence2", "words", "tokens", "sent1", "sent2")


@dataclass(frozen=True)
class Example:
    """One calibration example: a text, a pair, a question and context, or a prompt and its choices."""
    text: str
    text_pair: str | None = None  # the second segment; for question answering, the context
    choices: tuple[str, ...] = ()  # multiple choice: `text` is the prompt
    question: bool = False  # (text, text_pair) is (question, context)


def _read_text(path: Path) -> str:
    if not path.exists():
        raise CalibrationDataError(
            f"calibration data {str(path)!r} does not exist; pass a text, JSONL or SQuAD JSON file")
    if not path.is_file():
        raise CalibrationDataError(
            f"calibration data {str(path)!r} is not a file; pass a text, JSONL or SQuAD JSON file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CalibrationDataError(
            f"calibration data {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "pass text lines, JSONL or SQuAD JSON"
        ) from None


def _example_from_object(item: Any, where: str) -> Example:
    if isinstance(item, str):
        if not item.strip():
            raise CalibrationDataError(f"{where}: empty text")
        return Example(item)
    if not isinstance(item, dict):
        raise CalibrationDataError(f"{where}: expected a JSON object or string, got {type(item).__name__}")
    text = lambda key: item.get(key) if isinstance(item.get(key), str) and item.get(key).strip() else None  # noqa: E731
    if text("question") and text("context"):
        return Example(text("question"), text("context"), question=True)
    if text("prompt") and isinstance(item.get("choices"), list) and item["choices"]:
        return Example(text("prompt"), choices=tuple(str(c) for c in item["choices"]))
    if text("sent1") and any(text(f"ending{i}") for i in range(8)):  # SWAG
        lead = " ".join(filter(None, [text("sent2")]))
        endings = [f"{lead} {text(f'ending{i}')}".strip() for i in range(8) if text(f"ending{i}")]
        return Example(text("sent1"), choices=tuple(endings))
    for first, second in (("text", "text_pair"), ("sentence1", "sentence2"), ("sentence", None)):
        if text(first):
            return Example(text(first), text(second) if second else None)
    for key in ("words", "tokens"):
        if isinstance(item.get(key), list) and item[key]:
            return Example(" ".join(str(w) for w in item[key]))
    raise CalibrationDataError(
        f"{where}: no text field; give one of {', '.join(JSONL_FIELDS)} (e.g. {{\"text\": ...}} or "
        "{\"question\": ..., \"context\": ...})"
    )


def _squad_examples(data: dict, where: str) -> list[Example]:
    examples = []
    for article in data.get("data", []):
        for paragraph in article.get("paragraphs", []) if isinstance(article, dict) else []:
            context = paragraph.get("context", "")
            for qa in paragraph.get("qas", []):
                if isinstance(qa.get("question"), str) and qa["question"].strip() and context.strip():
                    examples.append(Example(qa["question"], context, question=True))
    if not examples:
        raise CalibrationDataError(
            f"{where}: a SQuAD-style JSON file with no (question, context) in data[].paragraphs[].qas[]")
    return examples


def load_examples(path: str | Path | None = None) -> list[Example]:
    """Every example in `path` (None: the built-in default). The format is read from the content: a JSON document
    (SQuAD {"data": ...} or a list), JSON lines (one object or string per line), else plain text lines."""
    path = DEFAULT_DATA if path is None else Path(path)
    content = _read_text(path)
    stripped = content.strip()
    if not stripped:
        raise CalibrationDataError(f"calibration data {str(path)!r} is empty; it needs at least one text")
    if path.suffix.lower() == ".json" or (stripped[0] in "[{" and path.suffix.lower() != ".jsonl"):
        try:
            document = json.loads(stripped)
        except json.JSONDecodeError as exc:
            if path.suffix.lower() == ".json":
                raise CalibrationDataError(
                    f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
            document = None  # perhaps JSON lines
        if isinstance(document, dict):
            return _squad_examples(document, str(path))
        if isinstance(document, list):
            examples = [_example_from_object(item, f"{path}: item {i}") for i, item in enumerate(document)]
            if not examples:
                raise CalibrationDataError(f"calibration data {str(path)!r} is an empty JSON list")
            return examples
    if path.suffix.lower() == ".jsonl" or stripped[0] in "[{\"":
        examples = []
        for number, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CalibrationDataError(f"{path}: line {number} is not JSON ({exc.msg}); "
                                           "JSONL needs one JSON object per line") from None
            examples.append(_example_from_object(item, f"{path}: line {number}"))
        return examples
    return [Example(line.strip()) for line in content.splitlines() if line.strip()]


def select(examples: list[Example], samples: int) -> list[Example]:
    """`samples` examples spread evenly over the file (not only its beginning, often a header)."""
    if samples < 1:
        raise CalibrationDataError(f"--calibration-samples must be at least 1, got {samples}")
    if len(examples) <= samples:
        return examples
    picks = np.linspace(0, len(examples) - 1, samples).round().astype(int)
    return [examples[i] for i in picks]


def choice_segments(example: Example) -> list[str | tuple[str, str]]:
    """(prompt, choice) per choice; an example without choices is one row."""
    if example.choices:
        return [(example.text, choice) for choice in example.choices]
    return [example.text if example.text_pair is None else (example.text, example.text_pair)]


def question_segments(example: Example) -> list[str | tuple[str, str]]:
    """(question, context); a text becomes the context of a generic question."""
    if example.question:
        return [(example.text, example.text_pair)]
    context = example.text if example.text_pair is None else f"{example.text} {example.text_pair}"
    return [(GENERIC_QUESTION, context)]


def text_segments(example: Example) -> list[str | tuple[str, str]]:
    """The text, or the (text, text_pair) pair; a prompt with choices becomes (prompt, first choice)."""
    if example.choices:
        return [(example.text, example.choices[0])]
    return [example.text if example.text_pair is None else (example.text, example.text_pair)]


# how an example becomes tokenizer input, by the task config's `calibration` (runtime.taskspec.TaskConfig)
ENCODINGS = {"choices": choice_segments, "question": question_segments, "text": text_segments}


def _segments(example: Example, task: str) -> list[str | tuple[str, str]]:
    """The tokenizer inputs (one, or one per choice) that `task` makes of `example`."""
    return ENCODINGS[TASKS[task].calibration](example)


def _encode(tokenizer: Tokenizer, segments: list, max_length: int, question: bool):
    if question:  # as the QA head: cut the context, never the question
        try:
            return encode(tokenizer, segments, max_length=max_length, truncation="only_second")
        except InputError:
            pass
    return encode(tokenizer, segments, max_length=max_length, truncation=True)


def calibration_batches(tokenizer: Tokenizer, task: str, examples: list[Example], *,
                        max_length: int = CALIBRATION_MAX_LENGTH, batch_size: int = DEFAULT_BATCH_SIZE,
                        pad_token_id: int | None = None) -> list[dict[str, np.ndarray]]:
    """Model inputs for `task`: batches of up to batch_size examples, right-padded to the longest
    (multiple choice: one example per batch, shaped (1, choices, sequence))."""
    if pad_token_id is None:
        pad_token_id = tokenizer.token_to_id("<pad>") or 0
    spec, features = TASKS[task], []
    for example in examples:
        segments = _segments(example, task)
        encodings = _encode(tokenizer, segments, max_length, question=spec.calibration == "question" and example.question)
        if spec.multiple_choice:
            features.append(stacked_feature(encodings, pad_token_id))
        else:
            features.append(feature_from_encoding(encodings[0]))
    size = 1 if spec.multiple_choice else batch_size
    return [padded_batch(features[i:i + size], pad_token_id) for i in range(0, len(features), size)]

