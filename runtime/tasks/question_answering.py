"""Extractive question answering, reproducing transformers 4.57's `QuestionAnsweringPipeline` (fast tokenizer path).

Flow per example: tokenize (question, context) with "only_second" truncation, `doc_stride` overlap and overflow
windows -> p_mask (1 where a token cannot be part of the answer) -> start/end logits per window -> softmax with
masked logits at -10000 -> best (start, end) spans of at most `max_answer_len` tokens -> character spans in the
context (widened to whole words when `align_to_words`) -> answers whose text agrees ignoring case have their
scores summed -> the `top_k` best, plus the null answer (its score the minimum over windows) when
`handle_impossible_answer`.

The numpy steps are kept operation for operation as HF writes them (float32, argpartition, the `np.isin` over
`nonzero()`), because the candidate order and the tie-breaks depend on them.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from runtime.errors import InputError, InputKeyError, OptionError, TruncationWarning, is_failure, one_line
from runtime.taskspec import TASKS
from runtime.tasks.base import CallForm, Feature, Features, TaskContext
from runtime.tasks.common import is_stream
from runtime.tokenizer import feature_from_encoding, truncating_copy

DEFAULT_MAX_SEQ_LEN = 384
DEFAULT_MAX_DOC_STRIDE = 128
DEFAULT_MAX_QUESTION_LEN = 64
UNDESIRED_LOGIT = -10000.0
NULL_SCORE_START = 1000000  # large and positive: any window's null score replaces it

PARAMETERS = TASKS["question-answering"].parameters


@dataclass(frozen=True)
class QASettings:
    """The question-answering parameters of one call, checked."""
    max_seq_len: int
    doc_stride: int
    padding: str  # "do_not_pad" | "longest" | "max_length"
    top_k: int = 1
    max_answer_len: int = 15
    handle_impossible_answer: bool = False
    align_to_words: bool = True
    stride_given: bool = True  # False: doc_stride is the default, which may shrink where a question leaves no room
    max_question_len: int = 64


@dataclass
class Window:
    """One model input cut from an example: the tokenizer's encoding plus the masks the postprocessing needs."""

    encoding: Encoding
    feature: Feature
    p_mask: np.ndarray  # (1, S) int64, 1 where the token cannot be part of an answer
    attention_mask: np.ndarray  # (1, S) int64
    _offsets: list[tuple[int, int]] | None = None

    @property
    def offsets(self) -> list[tuple[int, int]]:
        """The encoding's character offsets, read once (each read of Encoding.offsets builds the whole list)."""
        if self._offsets is None:
            self._offsets = self.encoding.offsets
        return self._offsets


def settings(ctx: TaskContext, params: dict[str, Any]) -> QASettings:
    """The question-answering parameters checked (see settings_from_params)."""
    return settings_from_params(ctx, params)


def preprocess(ctx: TaskContext, item: Any, settings: QASettings) -> Features:
    """An example ({"question", "context"} dict or SquadExample-like object) as its windows."""
    question, context = _example_from_item(item)
    windows = windows_for_example(ctx, question, context, settings)
    return Features([window.feature for window in windows], settings, state=(context, windows))


def postprocess(ctx: TaskContext, features: Features, outputs: list[dict[str, np.ndarray]]) -> Any:
    """The answer: a dict, or a list of dicts when top_k > 1 finds several answers."""
    context, windows = features.state
    return answers_from_windows(context, list(zip(outputs, windows)), features.settings)


def inputs_from_call(args: tuple, params: dict[str, Any]) -> Any:
    """What `qa(*args, **params)` asks about, as HF's QuestionAnsweringPipeline.__call__ and its argument handler
    read it (FutureWarnings included); pops X/data/question/context from params. Returns a list of examples
    (dicts, or SquadExample-like objects with .question_text/.context_text), or a stream (is_stream) as it is."""
    if args:
        warnings.warn(
            "Passing a list of SQuAD examples to the pipeline is deprecated and will be removed in v5. Inputs should "
            "be passed using the `question` and `context` keyword arguments instead.",
            FutureWarning,
            stacklevel=3,
        )
    given = {key: params.pop(key) for key in ("X", "data", "question", "context") if key in params}
    if args:
        if len(args) == 1:
            inputs = args[0]
        elif len(args) == 2 and {type(arg) for arg in args} == {str}:
            inputs = [{"question": args[0], "context": args[1]}]
        else:
            inputs = list(args)
    elif "X" in given or "data" in given:
        key = "X" if "X" in given else "data"
        warnings.warn(
            f"Passing the `{key}` argument to the pipeline is deprecated and will be removed in v5. Inputs should be "
            "passed using the `question` and `context` keyword arguments instead.",
            FutureWarning,
            stacklevel=3,
        )
        inputs = given[key]
    elif "question" in given and "context" in given:
        inputs = items_from_keywords(given["question"], given["context"])
    else:
        raise InputError(f"Unknown arguments {params}: pass question= and context=, or {{'question', 'context'}} dicts")
    if is_stream(inputs):
        return inputs
    if isinstance(inputs, dict):
        return [inputs]
    if isinstance(inputs, Iterable):
        return list(inputs)
    raise InputError(f"Invalid arguments {inputs!r}: expected {{'question', 'context'}} dicts or a list of them")


def items_from_inputs(inputs: Any, params: dict[str, Any]) -> tuple[list, bool]:
    """(examples, False) from a {"question", "context"} dict, a list of them, or question=/context= (strings or
    lists): HF's QuestionAnsweringArgumentHandler, its accepted shapes and its error messages."""
    if inputs is not None:
        items = inputs
    elif "question" in params and "context" in params:
        items = items_from_keywords(params["question"], params["context"])
    else:
        raise InputError(
            f"Unknown arguments {params}: pass question= and context=, or a {{'question', 'context'}} dict or a list of them"
        )

    if isinstance(items, dict):
        items = [items]
    elif isinstance(items, (list, tuple)):
        items = list(items)
    else:
        raise InputError(f"Invalid arguments {params}: expected a {{'question', 'context'}} dict or a list of them")
    return items, False


CALL = CallForm(items=items_from_inputs, inputs=inputs_from_call, list_of_one_gives_its_result=True,
                json_objects=(frozenset({"question", "context"}),))


def items_from_keywords(question: Any, context: Any) -> list[dict[str, Any]]:
    """The question/context items that question= and context= keywords give."""
    if isinstance(question, list) and isinstance(context, str):
        return [{"question": q, "context": context} for q in question]
    if isinstance(question, list) and isinstance(context, list):
        if len(question) != len(context):
            raise InputError("Questions and contexts don't have the same lengths")
        return [{"question": q, "context": c} for q, c in zip(question, context)]
    if isinstance(question, str) and isinstance(context, str):
        return [{"question": question, "context": context}]
    raise InputError("Arguments can't be understood")


def _example_from_item(item: Any) -> tuple[str, str]:
    if hasattr(item, "question_text") and hasattr(item, "context_text"):  # HF's SquadExample, taken as it is
        return item.question_text, item.context_text
    if not isinstance(item, dict):
        raise InputError(f"{item} argument needs to be of type (SquadExample, dict)")
    for key in ("question", "context"):
        if key not in item:
            raise InputKeyError("You need to provide a dictionary with keys {question:..., context:...}")
        if item[key] is None:
            raise InputError(f"`{key}` cannot be None")
        if not isinstance(item[key], str):
            raise InputError(f"`{key}` must be a string, got {item[key]!r:.40}")
        if len(item[key]) == 0:
            raise InputError(f"`{key}` cannot be empty")
    return item["question"], item["context"]


def settings_from_params(ctx: TaskContext, params: dict[str, Any]) -> QASettings:
    """The question-answering parameters checked; unknown ones warned about and ignored."""
    unknown = sorted(set(params) - PARAMETERS)
    if unknown:
        warnings.warn(f"question-answering ignores unknown parameters {unknown}", UserWarning, stacklevel=3)

    top_k = params.get("top_k")
    if params.get("topk") is not None and top_k is None:
        warnings.warn("topk parameter is deprecated, use top_k instead", UserWarning, stacklevel=3)
        top_k = params["topk"]
    if top_k is not None and top_k < 1:
        raise OptionError(f"top_k parameter should be >= 1 (got {top_k})")
    max_answer_len = params.get("max_answer_len")
    if max_answer_len is not None and max_answer_len < 1:
        raise OptionError(f"max_answer_len parameter should be >= 1 (got {max_answer_len}")

    max_seq_len = params.get("max_seq_len")
    if max_seq_len is None:
        max_seq_len = min(ctx.max_length, DEFAULT_MAX_SEQ_LEN)
    doc_stride = params.get("doc_stride")
    stride_given = doc_stride is not None
    if not stride_given:
        doc_stride = min(max_seq_len // 2, DEFAULT_MAX_DOC_STRIDE)
    if doc_stride > max_seq_len:
        raise OptionError(f"`doc_stride` ({doc_stride}) is larger than `max_seq_len` ({max_seq_len})")
    check_window_size(ctx, max_seq_len, doc_stride, stride_given)
    max_question_len = params.get("max_question_len")
    max_question_len = DEFAULT_MAX_QUESTION_LEN if max_question_len is None else max_question_len

    given = {
        name: value
        for name, value in (
            ("top_k", top_k),
            ("max_answer_len", max_answer_len),
            ("handle_impossible_answer", params.get("handle_impossible_answer")),
            ("align_to_words", params.get("align_to_words")),
        )
        if value is not None
    }
    return QASettings(max_seq_len=max_seq_len, doc_stride=doc_stride, padding=_padding_strategy(params.get("padding")),
                      stride_given=stride_given, max_question_len=max_question_len, **given)


def pair_special_tokens(tokenizer: Tokenizer) -> int:
    """How many special tokens the tokenizer adds to a pair of texts."""
    processor = tokenizer.post_processor
    return 0 if processor is None else processor.num_special_tokens_to_add(True)


def check_window_size(ctx: TaskContext, max_seq_len: int, doc_stride: int, stride_given: bool) -> None:
    """Refuse windows the model cannot take or that cannot hold the special tokens, one question token and more
    context tokens than doc_stride (the tokenizer's own requirement)."""
    if max_seq_len > ctx.max_length:
        raise OptionError(
            f"max_seq_len={max_seq_len} is more than the model's {ctx.max_length} positions; use at most {ctx.max_length}"
        )
    special = pair_special_tokens(ctx.tokenizer)
    smallest = special + 2
    if max_seq_len < smallest:
        raise OptionError(
            f"max_seq_len={max_seq_len} cannot hold the {special} special tokens, a question token and a context "
            f"token; use at least {smallest}"
        )
    if stride_given and doc_stride > max_seq_len - smallest:
        raise OptionError(
            f"doc_stride={doc_stride} leaves no context in windows of max_seq_len={max_seq_len} (the {special} special "
            f"tokens and at least one question token take the rest); use a doc_stride of at most {max_seq_len - smallest}"
        )


def _padding_strategy(padding: Any) -> str:
    if padding is None or padding is False or padding == "do_not_pad":
        return "do_not_pad"
    if padding is True or padding == "longest":
        return "longest"
    if padding == "max_length":
        return "max_length"
    raise OptionError(f"padding must be one of False/'do_not_pad', True/'longest', 'max_length' (got {padding!r})")


def windows_for_example(ctx: TaskContext, question: str, context: str, settings: QASettings) -> list[Window]:
    """Tokenize like HF's fast path: question first, context truncated "only_second" into overlapping windows."""
    question, doc_stride = fitted_question(ctx.tokenizer, question, context, settings)
    encodings = encode_with_overflow(ctx.tokenizer, question, context, settings.max_seq_len, doc_stride)
    pad_to = None
    if settings.padding == "max_length":
        pad_to = settings.max_seq_len
    elif settings.padding == "longest":
        pad_to = len(encodings[0].ids)
    cls_id = ctx.token_id("cls")
    return [_window(encoding, cls_id, pad_to) for encoding in encodings]


def fitted_question(tokenizer: Tokenizer, question: str, context: str, settings: QASettings) -> tuple[str, int]:
    """(question, doc_stride) as given where HF's fast path can window them; else what HF's other (slow tokenizer)
    path does: the question cut to max_question_len tokens, and further, or a default doc_stride made smaller,
    until every window holds more context tokens than doc_stride (where HF's fast path fails or panics)."""
    max_seq_len, stride = settings.max_seq_len, settings.doc_stride
    special = pair_special_tokens(tokenizer)
    tokenizer = truncating_copy(tokenizer, None)
    question_tokens = tokenizer.encode(question, add_special_tokens=False)
    length = len(question_tokens.ids)
    if max_seq_len - special - length > stride:
        return question, stride  # room for a window: HF's own windows, whatever the context's length
    if length + special + len(tokenizer.encode(context, add_special_tokens=False).ids) <= max_seq_len:
        return question, stride  # one window, nothing to cut
    keep = min(length, settings.max_question_len)
    if not settings.stride_given:
        stride = max(0, min(stride, max_seq_len - special - keep - 1))
    keep = min(keep, max_seq_len - special - stride - 1)  # >= 1: check_window_size saw to it
    while keep > 0:
        cut = question[: question_tokens.offsets[keep - 1][1]]
        if len(tokenizer.encode(cut, add_special_tokens=False).ids) <= max_seq_len - special - stride - 1:
            break
        keep -= 1  # the cut re-tokenized to more pieces: cut one more
    else:
        raise InputError(f"the question cannot be cut to fit windows of max_seq_len={max_seq_len} with "
                         f"doc_stride={stride}; use a larger max_seq_len or a smaller doc_stride")
    warnings.warn(
        f"question of {length} tokens cut to {keep} (max_question_len={settings.max_question_len}, "
        f"max_seq_len={max_seq_len}, doc_stride={stride}) so that the context fits in windows",
        TruncationWarning,
        stacklevel=4,
    )
    return cut, stride


def encode_with_overflow(
    tokenizer: Tokenizer, question: str, context: str, max_seq_len: int, doc_stride: int
) -> list[Encoding]:
    """The encodings HF's fast tokenizer makes for `tokenizer(question, context, truncation="only_second",
    max_length=max_seq_len, stride=doc_stride, return_overflowing_tokens=True)`: the first window, then the
    overflowing ones. Raises InputError when the question leaves no room for the context."""
    windowing = truncating_copy(tokenizer, max_seq_len, doc_stride, strategy="only_second")
    try:
        encoding = windowing.encode(question, context)
    except BaseException as error:  # a bare Exception, or a Rust panic, for impossible truncations
        if not is_failure(error):
            raise
        raise InputError(
            f"cannot split the context into windows of max_seq_len={max_seq_len} with doc_stride={doc_stride}: "
            f"{one_line(error)}. Use a shorter question, a larger max_seq_len or a smaller doc_stride."
        ) from error
    return [encoding, *encoding.overflowing]


def _window(encoding: Encoding, cls_id: int | None, pad_to: int | None) -> Window:
    feature = feature_from_encoding(encoding)
    ids = feature["input_ids"]
    length = len(ids)
    p_mask = np.array([sequence_id != 1 for sequence_id in encoding.sequence_ids], dtype=np.int64)
    if cls_id is not None:
        p_mask[ids == cls_id] = 0  # keep CLS unmasked: it carries the null answer
    attention_mask = feature["attention_mask"]
    if pad_to is not None and pad_to > length:
        # Padding never changes an answer (pad positions are masked out), only the array sizes HF searches over;
        # the model runs on the unpadded window and the logits are padded afterwards.
        extra = pad_to - length
        p_mask = np.concatenate([p_mask, np.ones(extra, dtype=np.int64)])
        attention_mask = np.concatenate([attention_mask, np.zeros(extra, dtype=np.int64)])
    return Window(encoding=encoding, feature=feature, p_mask=p_mask[None], attention_mask=attention_mask[None])


def answers_from_windows(context: str, outputs: list[tuple[dict[str, np.ndarray], Window]], settings: QASettings):
    """HF's postprocess: collect span candidates from every window, merge case-insensitive duplicates, rank."""
    min_null_score: float = NULL_SCORE_START
    answers: list[dict[str, Any]] = []
    by_text: dict[str, dict[str, Any]] = {}  # HF's get_answer scans every answer per candidate; a dict is linear
    pre_top_k = settings.top_k * 2 + 10 if settings.align_to_words else settings.top_k  # alignment may drop some
    for output, window in outputs:
        padded_length = window.p_mask.shape[1]
        start = _padded_logits(output["start_logits"], padded_length)
        end = _padded_logits(output["end_logits"], padded_length)
        starts, ends, scores, min_null_score = select_starts_ends(
            start,
            end,
            window.p_mask,
            window.attention_mask,
            min_null_score,
            pre_top_k,
            settings.handle_impossible_answer,
            settings.max_answer_len,
        )
        for s, e, score in zip(starts, ends, scores):
            start_index, end_index = char_span(window, int(s), int(e), settings.align_to_words)
            text = context[start_index:end_index]
            same = by_text.get(text.lower())
            if same is not None:
                same["score"] += score.item()
            else:
                by_text[text.lower()] = {"score": score.item(), "start": start_index, "end": end_index, "answer": text}
                answers.append(by_text[text.lower()])

    if settings.handle_impossible_answer:
        answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
    answers = sorted(answers, key=lambda answer: answer["score"], reverse=True)[: settings.top_k]
    if len(answers) == 1:
        return answers[0]
    return answers


def _padded_logits(logits: np.ndarray, length: int) -> np.ndarray:
    """(1, length) float32 logits: HF's arrays for a window, padded (with values that get masked) when asked."""
    logits = np.asarray(logits, dtype=np.float32)[:length]
    if logits.shape[-1] < length:
        logits = np.concatenate([logits, np.zeros(length - logits.shape[-1], dtype=np.float32)])
    return logits[None]


def select_starts_ends(
    start: np.ndarray,
    end: np.ndarray,
    p_mask: np.ndarray,
    attention_mask: np.ndarray | None,
    min_null_score: float = NULL_SCORE_START,
    top_k: int = 1,
    handle_impossible_answer: bool = False,
    max_answer_len: int = 15,
):
    """HF's `select_starts_ends`: mask tokens that cannot answer, softmax, keep the null (CLS) score, decode."""
    undesired_tokens = np.abs(np.array(p_mask) - 1)
    if attention_mask is not None:
        undesired_tokens = undesired_tokens & attention_mask
    undesired_tokens_mask = undesired_tokens == 0.0

    start = np.where(undesired_tokens_mask, UNDESIRED_LOGIT, start)
    end = np.where(undesired_tokens_mask, UNDESIRED_LOGIT, end)

    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()

    if handle_impossible_answer:
        min_null_score = min(min_null_score, (start[0, 0] * end[0, 0]).item())

    start[0, 0] = end[0, 0] = 0.0  # CLS is never a span
    starts, ends, scores = decode_spans(start, end, top_k, max_answer_len, undesired_tokens)
    return starts, ends, scores, min_null_score


def decode_spans(start: np.ndarray, end: np.ndarray, topk: int, max_answer_len: int, undesired_tokens: np.ndarray):
    """HF's `decode_spans`: score every (start, end) with start <= end < start + max_answer_len, keep the best."""
    if start.ndim == 1:
        start = start[None]
    if end.ndim == 1:
        end = end[None]

    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    candidates = np.tril(np.triu(outer), max_answer_len - 1)

    scores_flat = candidates.flatten()
    if topk == 1:
        idx_sort = [np.argmax(scores_flat)]
    elif len(scores_flat) < topk:
        idx_sort = np.argsort(-scores_flat)
    else:
        idx = np.argpartition(-scores_flat, topk)[0:topk]
        idx_sort = idx[np.argsort(-scores_flat[idx])]

    starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
    # As in HF, isin() sees nonzero()'s (rows, cols) tuple, so index 0 (the row index) always counts as allowed.
    allowed = undesired_tokens.nonzero()
    desired_spans = np.isin(starts, allowed) & np.isin(ends, allowed)
    starts = starts[desired_spans]
    ends = ends[desired_spans]
    scores = candidates[0, starts, ends]
    return starts, ends, scores


def char_span(window: Window, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
    """Character span of tokens s..e in the context; whole words when aligning (HF's `get_indices`)."""
    encoding = window.encoding
    if align_to_words:
        try:
            start_word = encoding.token_to_word(s)
            end_word = encoding.token_to_word(e)
            start_index = encoding.word_to_chars(start_word, sequence_index=1)[0]
            end_index = encoding.word_to_chars(end_word, sequence_index=1)[1]
            return start_index, end_index
        except Exception:  # special tokens have no word: fall back to token offsets, as HF does
            pass
    return window.offsets[s][0], window.offsets[e][1]
