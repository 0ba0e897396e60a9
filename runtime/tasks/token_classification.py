"""Token classification (NER), reproducing transformers 4.57's `TokenClassificationPipeline` with a fast tokenizer.

Flow per text: tokenize (truncated to model_max_length, or split into overlapping chunks when `stride` is given)
-> logits per token -> softmax -> one pre-entity per non-special token (token text, scores, character offsets,
whether it continues the previous word) -> aggregation (none / simple / first / average / max) -> drop
`ignore_labels` -> with several chunks, keep the longest (then best-scoring) of overlapping entities.

Word boundaries: a tokenizer whose model has a `continuing_subword_prefix` (WordPiece "##") marks sub-words
exactly; others (ALBERT's SentencePiece Unigram) use HF's fallback heuristic, a token continues a word when the
characters around its start contain no space. Scores are numpy float32, as HF returns them.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from runtime.errors import InputError, OptionError, TruncationWarning, UnknownChoiceError, is_failure, one_line
from runtime.taskspec import TASKS
from runtime.tasks.base import CallForm, Features, TaskContext
from runtime.tasks.common import refuse_unknown, softmax
from runtime.tokenizer import feature_from_encoding, truncating_copy

STRATEGIES = ("none", "simple", "first", "average", "max")
WORD_STRATEGIES = ("first", "average", "max")
NO_TRUNCATION_ABOVE = int(1e20)  # HF's LARGE_INTEGER: a model_max_length past it means "no limit"
PARAMETERS = TASKS["token-classification"].parameters
LOGITS = TASKS["token-classification"].outputs[0]


class UnknownAggregationStrategy(UnknownChoiceError):
    """An aggregation_strategy outside none/simple/first/average/max (a KeyError like HF's, and a ValueError)."""


def items_from_inputs(inputs: Any, params: dict[str, Any]) -> tuple[list, bool]:
    """(texts, single): a text, or a list of texts; with is_split_into_words, one list of words is a batch of one
    (as HF answers it)."""
    texts, _ = _texts_from_inputs(inputs, params.get("offset_mapping"))
    if params.get("is_split_into_words") and not all(isinstance(text, list) for text in texts):
        return [inputs], False
    if isinstance(inputs, list):
        return texts, False
    return [inputs], True


CALL = CallForm(items=items_from_inputs)


@dataclass(frozen=True)
class NERSettings:
    """The token-classification parameters of one call, checked."""
    strategy: str | None  # None: none asked for (HF then aggregates as "none")
    ignore_labels: list[str]
    stride: int | None
    is_split_into_words: bool
    delimiter: str
    offset_mapping: Any


def settings(ctx: TaskContext, params: dict[str, Any]) -> NERSettings:
    """Parameters as in HF: aggregation_strategy, ignore_labels, stride, is_split_into_words, delimiter,
    offset_mapping, and the deprecated grouped_entities / ignore_subwords."""
    refuse_unknown("token-classification", params, PARAMETERS)
    delimiter = params.get("delimiter")
    strategy = _strategy_from_params(params)
    stride = params.get("stride")
    if stride is not None:
        _check_stride(ctx, stride, strategy)
    ignore_labels = params.get("ignore_labels")
    return NERSettings(strategy=strategy, ignore_labels=["O"] if ignore_labels is None else ignore_labels,
                       stride=stride, is_split_into_words=bool(params.get("is_split_into_words", False)),
                       delimiter=" " if delimiter is None else delimiter,
                       offset_mapping=_offset_mapping(params.get("offset_mapping")))


def preprocess(ctx: TaskContext, item: Any, settings: NERSettings) -> Features:
    """A text (or a list of words) as its chunk windows."""
    sentence, chunks = _chunks(ctx, item, settings.is_split_into_words, settings.delimiter, settings.stride)
    return Features([chunk.feature for chunk in chunks], settings, state=(sentence, chunks))


def postprocess(ctx: TaskContext, features: Features, outputs: list[dict[str, np.ndarray]]) -> list[dict]:
    """The text's entities (a list of entity dicts)."""
    (sentence, chunks), s = features.state, features.settings
    chunk_outputs = [(output[LOGITS], chunk) for output, chunk in zip(outputs, chunks)]
    return entities_from_chunks(ctx, sentence, chunk_outputs, s.strategy, s.ignore_labels, s.offset_mapping)


def _texts_from_inputs(inputs: Any, offset_mapping: Any) -> tuple[list, Any]:
    if inputs is not None and isinstance(inputs, (list, tuple)) and len(inputs) > 0:
        texts = list(inputs)
    elif isinstance(inputs, str):
        texts = [inputs]
    else:
        raise InputError("At least one input is required.")
    offset_mapping = _offset_mapping(offset_mapping)
    if offset_mapping and len(offset_mapping) != len(texts):
        raise InputError("offset_mapping should have the same batch size as the input")
    return texts, offset_mapping


def _offset_mapping(offset_mapping: Any) -> Any:
    """One text's [(start, end), ...] as a batch of one."""
    if offset_mapping and isinstance(offset_mapping, list) and isinstance(offset_mapping[0], tuple):
        return [offset_mapping]
    return offset_mapping


def _strategy_from_params(params: dict[str, Any]) -> str | None:
    """The requested strategy, or None when none was asked for (HF then aggregates as "none")."""
    strategy = params.get("aggregation_strategy")
    grouped, ignore_subwords = params.get("grouped_entities"), params.get("ignore_subwords")
    if grouped is not None or ignore_subwords is not None:
        if grouped and ignore_subwords:
            strategy = "first"
        elif grouped and not ignore_subwords:
            strategy = "simple"
        else:
            strategy = "none"
        for name, value in (("grouped_entities", grouped), ("ignore_subwords", ignore_subwords)):
            if value is not None:
                warnings.warn(
                    f"`{name}` is deprecated and will be removed in version v5.0.0, defaulted to"
                    f' `aggregation_strategy="{strategy}"` instead.',
                    stacklevel=4,
                )
    if strategy is None:
        return None
    name = str(getattr(strategy, "value", strategy)).lower()
    if name not in STRATEGIES:
        raise UnknownAggregationStrategy(f"aggregation_strategy must be one of {', '.join(STRATEGIES)} (got {strategy!r})")
    return name


def _check_stride(ctx: TaskContext, stride: int, strategy: str | None) -> None:
    if stride >= ctx.max_length:
        raise OptionError(
            "`stride` must be less than `tokenizer.model_max_length` (or even lower if the tokenizer adds special tokens)"
        )
    processor = ctx.tokenizer.post_processor
    room = ctx.max_length - (processor.num_special_tokens_to_add(False) if processor is not None else 0)
    if stride >= room:  # the tokenizer panics there
        raise OptionError(
            f"stride={stride} must be less than {room}, the text tokens a chunk of the model's {ctx.max_length} "
            f"positions holds; use a stride of at most {room - 1}"
        )
    if strategy == "none":
        raise OptionError(
            "`stride` was provided to process all the text but `aggregation_strategy="
            '"none"`, please select another one instead.'
        )


class Chunk:
    """One model input cut from a text, with what the postprocessing reads from its encoding, each list read once
    (every read of an Encoding property builds the whole list: read per token, a chunk costs its length squared)."""

    def __init__(self, encoding: Encoding, word_to_chars: list[tuple[int, int]] | None):
        self.encoding = encoding
        self.word_to_chars = word_to_chars
        self.feature = feature_from_encoding(encoding)
        self.ids: list[int] = self.feature["input_ids"].tolist()
        self.offsets: list[tuple[int, int]] = encoding.offsets
        self.special_tokens_mask: list[int] = encoding.special_tokens_mask
        self.word_ids: list[int | None] | None = encoding.word_ids if word_to_chars is not None else None


def _chunks(ctx: TaskContext, item: Any, is_split_into_words: bool, delimiter: str, stride: int | None):
    word_to_chars = None
    if is_split_into_words:
        if not isinstance(item, list):
            raise InputError("When `is_split_into_words=True`, `sentence` must be a list of tokens.")
        sentence = delimiter.join(item)
        word_to_chars, position = [], 0
        for word in item:
            word_to_chars.append((position, position + len(word)))
            position += len(word) + len(delimiter)
    elif not isinstance(item, str):
        raise InputError("When `is_split_into_words=False`, `sentence` must be an untokenized string.")
    else:
        sentence = item
    encodings = encode_chunks(ctx.tokenizer, item, ctx.max_length, stride, is_split_into_words)
    return sentence, [Chunk(encoding, word_to_chars) for encoding in encodings]


def encode_chunks(
    tokenizer: Tokenizer, text: str | list[str], max_length: int, stride: int | None, is_split_into_words: bool = False
) -> list[Encoding]:
    """The encodings HF's fast tokenizer makes for the pipeline: truncated at max_length (when it is a real limit);
    with `stride`, the first chunk and then the overflowing ones, each overlapping the previous by `stride` tokens.
    Padding the chunks to one length, as HF does, changes nothing for the result and is left out."""
    copy = truncating_copy(tokenizer, max_length if max_length and 0 < max_length <= NO_TRUNCATION_ABOVE else None,
                            stride or 0)
    try:
        encoding = copy.encode(text, is_pretokenized=is_split_into_words)
    except BaseException as error:  # a bare Exception, or a Rust panic, for impossible truncations
        if not is_failure(error):
            raise
        raise InputError(f"cannot split the text into chunks of {max_length} tokens with stride={stride}: "
                         f"{one_line(error)}") from error
    if stride is not None:
        return [encoding, *encoding.overflowing]
    if encoding.overflowing:  # HF truncates silently; say what was left out and how to classify all of it
        kept = max((end for (_, end), special in zip(encoding.offsets, encoding.special_tokens_mask) if not special),
                   default=0)
        warnings.warn(
            f"text is longer than the model's maximum of {max_length} tokens: only its first {kept} characters were "
            "classified; pass stride (albert-run --stride N) with an aggregation strategy to classify all of it",
            TruncationWarning,
            stacklevel=4,
        )
    return [encoding]


def entities_from_chunks(
    ctx: TaskContext,
    sentence: str,
    chunk_outputs: list[tuple[np.ndarray, Chunk]],
    strategy: str | None,
    ignore_labels: list[str],
    offset_mapping: Any = None,
) -> list[dict]:
    """HF's postprocess over all chunks of one text."""
    strategy = strategy or "none"
    all_entities: list[dict] = []
    for logits, chunk in chunk_outputs:
        scores = softmax(np.asarray(logits, dtype=np.float32)[: len(chunk.ids)])
        offsets = offset_mapping[0] if offset_mapping else chunk.offsets
        pre_entities = gather_pre_entities(ctx, sentence, chunk, scores, offsets, strategy)
        grouped = aggregate(ctx, pre_entities, strategy)
        all_entities.extend(
            entity
            for entity in grouped
            if entity.get("entity", None) not in ignore_labels and entity.get("entity_group", None) not in ignore_labels
        )
    if len(chunk_outputs) > 1:
        all_entities = aggregate_overlapping_entities(all_entities)
    return all_entities


def gather_pre_entities(
    ctx: TaskContext, sentence: str, chunk: Chunk, scores: np.ndarray, offsets: list, strategy: str
) -> list[dict]:
    """The scored tokens of one chunk of `sentence`, with their offsets, before aggregation."""
    tokenizer = ctx.tokenizer
    word_aware = bool(getattr(tokenizer.model, "continuing_subword_prefix", None))
    unk_id = ctx.token_id("unk")
    if not word_aware and strategy in WORD_STRATEGIES:
        warnings.warn("Tokenizer does not support real words, using fallback heuristic", UserWarning, stacklevel=4)

    pre_entities = []
    special, ids = chunk.special_tokens_mask, chunk.ids
    for idx, token_scores in enumerate(scores):
        if special[idx]:
            continue
        token_id = ids[idx]
        word = tokenizer.id_to_token(token_id)
        start_ind, end_ind = offsets[idx]
        if chunk.word_ids is not None:  # pre-split words: offsets are within each word
            word_index = chunk.word_ids[idx]
            if word_index is not None:
                start_char, _ = chunk.word_to_chars[word_index]
                start_ind += start_char
                end_ind += start_char
        word_ref = sentence[start_ind:end_ind]
        if word_aware:
            is_subword = len(word) != len(word_ref)
        else:
            is_subword = start_ind > 0 and " " not in sentence[start_ind - 1 : start_ind + 1]
        if token_id == unk_id:
            word = word_ref
            is_subword = False
        pre_entities.append(
            {"word": word, "scores": token_scores, "start": start_ind, "end": end_ind, "index": idx, "is_subword": is_subword}
        )
    return pre_entities


def aggregate(ctx: TaskContext, pre_entities: list[dict], strategy: str) -> list[dict]:
    """The entities that the pre-entities make under the aggregation strategy."""
    if not pre_entities:
        return []
    id2label = ctx.labels(pre_entities[0]["scores"].shape[-1])
    if strategy in ("none", "simple"):
        scores = np.stack([pre_entity["scores"] for pre_entity in pre_entities])  # (tokens, labels)
        best = scores.argmax(axis=-1)
        best_scores = scores[np.arange(len(best)), best]  # float32, as HF's scores[argmax]
        entities = [
            {
                "entity": id2label[label],
                "score": score,
                "index": pre_entity["index"],
                "word": pre_entity["word"],
                "start": pre_entity["start"],
                "end": pre_entity["end"],
            }
            for pre_entity, label, score in zip(pre_entities, best.tolist(), best_scores)
        ]
    else:
        entities = aggregate_words(ctx, pre_entities, strategy, id2label)
    if strategy == "none":
        return entities
    return group_entities(ctx, entities)


def aggregate_word(ctx: TaskContext, entities: list[dict], strategy: str, id2label: list[str]) -> dict:
    """One word from its tokens, the label chosen by the first token, the most confident token, or the mean."""
    word = tokens_to_string(ctx.tokenizer, [entity["word"] for entity in entities])
    if strategy == "first":
        scores = entities[0]["scores"]
        idx = scores.argmax()
        score = scores[idx]
    elif strategy == "max":
        scores = max(entities, key=lambda entity: entity["scores"].max())["scores"]
        idx = scores.argmax()
        score = scores[idx]
    elif strategy == "average":
        average_scores = np.nanmean(np.stack([entity["scores"] for entity in entities]), axis=0)
        idx = average_scores.argmax()
        score = average_scores[idx]
    else:
        raise OptionError(f"aggregation_strategy {strategy!r} does not aggregate words")
    return {
        "entity": id2label[int(idx)],
        "score": score,
        "word": word,
        "start": entities[0]["start"],
        "end": entities[-1]["end"],
    }


def aggregate_words(ctx: TaskContext, entities: list[dict], strategy: str, id2label: list[str]) -> list[dict]:
    """The entities with subword tokens merged into their words under `strategy`."""
    word_entities = []
    word_group = None
    for entity in entities:
        if word_group is None:
            word_group = [entity]
        elif entity["is_subword"]:
            word_group.append(entity)
        else:
            word_entities.append(aggregate_word(ctx, word_group, strategy, id2label))
            word_group = [entity]
    if word_group is not None:
        word_entities.append(aggregate_word(ctx, word_group, strategy, id2label))
    return word_entities


def group_sub_entities(ctx: TaskContext, entities: list[dict]) -> dict:
    """One entity for a group of tokens: its label without the B-/I- prefix, mean score, word and span."""
    first = entities[0]["score"]
    if len(entities) == 1 and isinstance(first, np.float32) and not np.isnan(first):
        score = first  # what nanmean and mean of one float32 give, without their ~20 us per group
    else:
        score = np.mean(np.nanmean([entity["score"] for entity in entities]))
    return {
        "entity_group": entities[0]["entity"].split("-", 1)[-1],
        "score": score,
        "word": tokens_to_string(ctx.tokenizer, [entity["word"] for entity in entities]),
        "start": entities[0]["start"],
        "end": entities[-1]["end"],
    }


def get_tag(entity_name: str) -> tuple[str, str]:
    """("B" | "I", tag); a label without a B-/I- prefix counts as a continuation."""
    if entity_name.startswith("B-"):
        return "B", entity_name[2:]
    if entity_name.startswith("I-"):
        return "I", entity_name[2:]
    return "I", entity_name


def group_entities(ctx: TaskContext, entities: list[dict]) -> list[dict]:
    """Merge adjacent entities of one tag; a B- label always starts a new group."""
    entity_groups = []
    current: list[dict] = []
    for entity in entities:
        if not current:
            current.append(entity)
            continue
        bi, tag = get_tag(entity["entity"])
        _, last_tag = get_tag(current[-1]["entity"])
        if tag == last_tag and bi != "B":
            current.append(entity)
        else:
            entity_groups.append(group_sub_entities(ctx, current))
            current = [entity]
    if current:
        entity_groups.append(group_sub_entities(ctx, current))
    return entity_groups


def aggregate_overlapping_entities(entities: list[dict]) -> list[dict]:
    """Across stride chunks: of entities that overlap, keep the longer one, or on a tie the higher score."""
    if len(entities) == 0:
        return entities
    entities = sorted(entities, key=lambda x: x["start"])
    aggregated = []
    previous = entities[0]
    for entity in entities:
        if previous["start"] <= entity["start"] < previous["end"]:
            current_length = entity["end"] - entity["start"]
            previous_length = previous["end"] - previous["start"]
            if current_length > previous_length or current_length == previous_length and entity["score"] > previous["score"]:
                previous = entity
        else:
            aggregated.append(previous)
            previous = entity
    aggregated.append(previous)
    return aggregated


def tokens_to_string(tokenizer: Tokenizer, tokens: list[str]) -> str:
    """HF's fast `convert_tokens_to_string`: the tokenizer's decoder, or tokens joined by spaces."""
    decoder = tokenizer.decoder
    return decoder.decode(tokens) if decoder is not None else " ".join(tokens)
