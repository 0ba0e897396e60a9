"""Text -> ALBERT pretraining examples (masked LM + sentence order), with numpy and tokenizers only.

Shared by the training script (devtools.train) and the accuracy oracle (devtools.accuracy), so the
held-out numbers in the training report and those measured on an exported bundle come from the same examples.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL_TOKENS = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
FIRST_ORDINARY_ID = len(SPECIAL_TOKENS)
IGNORE = -100  # label of a position that is not predicted
HELDOUT_FRACTION = 0.1
GUTENBERG_START, GUTENBERG_END = "*** START OF", "*** END OF"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'])\s+")


class CorpusError(ValueError):
    """A text file that cannot serve as a pretraining corpus."""


def gutenberg_body(lines: list[str]) -> list[str]:
    """The book without Project Gutenberg's header and licence (the licence is not the book's language)."""
    starts = [i for i, line in enumerate(lines) if line.startswith(GUTENBERG_START)]
    ends = [i for i, line in enumerate(lines) if line.startswith(GUTENBERG_END)]
    start = starts[0] + 1 if starts else 0
    end = ends[-1] if ends and (not starts or ends[-1] > starts[0]) else len(lines)
    return lines[start:end]


def split_corpus(path: str | Path, heldout_fraction: float = HELDOUT_FRACTION) -> tuple[list[str], list[str]]:
    """(training lines, held-out lines): the first 90% of the book's non-empty lines, and the last 10%."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"corpus {path} does not exist")
    lines = [line.strip() for line in gutenberg_body(path.read_text(encoding="utf-8-sig").splitlines())]
    lines = [line for line in lines if line]
    if len(lines) < 10:
        raise CorpusError(f"corpus {path} has {len(lines)} non-empty lines; at least 10 are needed to hold some out")
    cut = int(round(len(lines) * (1.0 - heldout_fraction)))
    return lines[:cut], lines[cut:]


def sentences_of(lines: list[str]) -> list[str]:
    """Wrapped lines of prose -> sentences (split after . ! ? and an optional closing quote)."""
    text = " ".join(line.strip() for line in lines)
    return [sentence.strip() for sentence in SENTENCE_END.split(text) if sentence.strip()]


def encode_sentences(tokenizer: Tokenizer, sentences: list[str]) -> list[list[int]]:
    return [encoding.ids for encoding in tokenizer.encode_batch(sentences, add_special_tokens=False)]


@dataclass
class Examples:
    """A padded batch of examples: arrays (N, S) int64, and sentence-order labels (N,) (1 = swapped)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    sop_labels: np.ndarray
    mlm_labels: np.ndarray | None = None  # (N, S): the true id at masked positions, IGNORE elsewhere

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, rows: np.ndarray | slice) -> "Examples":
        labels = None if self.mlm_labels is None else self.mlm_labels[rows]
        return Examples(self.input_ids[rows], self.attention_mask[rows], self.token_type_ids[rows],
                        self.sop_labels[rows], labels)

    def trimmed(self, width: int) -> "Examples":
        """The first `width` positions of every row."""
        labels = None if self.mlm_labels is None else self.mlm_labels[:, :width]
        return Examples(self.input_ids[:, :width], self.attention_mask[:, :width], self.token_type_ids[:, :width],
                        self.sop_labels, labels)


def segment_pairs(encoded: list[list[int]], max_length: int, rng: np.random.Generator,
                  short_seq_prob: float = 0.1, random_start: bool = True) -> list[tuple[list[int], list[int]]]:
    """Consecutive sentences grouped into chunks that fill max_length - 3 tokens, each cut in two segments.

    A chunk of several sentences is cut between sentences; a single long sentence is cut inside. The longer
    segment is truncated away from the cut, so the two segments stay adjacent text.
    """
    budget = max_length - 3
    if budget < 2:
        raise CorpusError(f"max_length {max_length} leaves no room for two segments and three special tokens")
    pairs = []
    index = int(rng.integers(0, 2)) if random_start else 0  # a different chunking each epoch
    while index < len(encoded):
        target = int(rng.integers(2, budget + 1)) if rng.random() < short_seq_prob else budget
        chunk, length = [], 0
        while index < len(encoded) and (length < target or len(chunk) < 2):
            if encoded[index]:
                chunk.append(encoded[index])
                length += len(encoded[index])
            index += 1
            if length >= target and chunk:
                break
        if length < 2:
            continue
        if len(chunk) >= 2:
            cut = int(rng.integers(1, len(chunk)))
            first = [t for sentence in chunk[:cut] for t in sentence]
            second = [t for sentence in chunk[cut:] for t in sentence]
        else:
            tokens = chunk[0]
            cut = int(rng.integers(1, len(tokens)))
            first, second = tokens[:cut], tokens[cut:]
        while len(first) + len(second) > budget:
            if len(first) > len(second):
                first = first[1:]
            else:
                second = second[:-1]
        pairs.append((first, second))
    return pairs


def pack_pairs(pairs: list[tuple[list[int], list[int]]], rng: np.random.Generator,
               swap_probability: float = 0.5) -> Examples:
    """[CLS] A [SEP] B [SEP], with A and B swapped with swap_probability (label 1), padded to the longest."""
    length = max(len(a) + len(b) + 3 for a, b in pairs)
    count = len(pairs)
    ids = np.full((count, length), PAD, dtype=np.int64)
    mask = np.zeros((count, length), dtype=np.int64)
    types = np.zeros((count, length), dtype=np.int64)
    labels = np.zeros(count, dtype=np.int64)
    for row, (first, second) in enumerate(pairs):
        if rng.random() < swap_probability:
            first, second = second, first
            labels[row] = 1
        tokens = [CLS, *first, SEP, *second, SEP]
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
        types[row, len(first) + 2 : len(tokens)] = 1
    return Examples(ids, mask, types, labels)


def mask_tokens(examples: Examples, rng: np.random.Generator, vocab_size: int, fraction: float = 0.15,
                replace_with_mask: float = 0.8, replace_with_random: float = 0.1) -> Examples:
    """BERT masking: `fraction` of the ordinary tokens of each row (at least one) are predicted; of those
    80% become [MASK], 10% a random ordinary token, 10% stay as they are."""
    ids = examples.input_ids.copy()
    labels = np.full(ids.shape, IGNORE, dtype=np.int64)
    ordinary = ids >= FIRST_ORDINARY_ID
    for row in range(len(ids)):
        candidates = np.flatnonzero(ordinary[row])
        if candidates.size == 0:
            continue
        count = max(1, int(round(candidates.size * fraction)))
        chosen = rng.choice(candidates, size=count, replace=False)
        labels[row, chosen] = ids[row, chosen]
        fate = rng.random(count)
        to_mask = chosen[fate < replace_with_mask]
        to_random = chosen[(fate >= replace_with_mask) & (fate < replace_with_mask + replace_with_random)]
        ids[row, to_mask] = MASK
        ids[row, to_random] = rng.integers(FIRST_ORDINARY_ID, vocab_size, size=to_random.size)
    return Examples(ids, examples.attention_mask, examples.token_type_ids, examples.sop_labels, labels)


def evaluation_examples(tokenizer: Tokenizer, sentences: list[str], max_length: int,
                        seed: int = 0) -> tuple[Examples, Examples]:
    """Fixed held-out examples: (sentence-order pairs, each in order and swapped: balanced labels;
    the in-order pairs with 15% of their tokens -> [MASK]).

    Every masked position is replaced by [MASK] (the fill-mask use), so the score is that of predicting a
    hidden token, not of copying a visible one.
    """
    rng = np.random.default_rng(seed)
    pairs = segment_pairs(encode_sentences(tokenizer, sentences), max_length, rng, short_seq_prob=0.0,
                          random_start=False)
    if not pairs:
        raise CorpusError("the held-out text yields no example; give it at least two tokens")
    in_order, swapped = pack_pairs(pairs, rng, swap_probability=0.0), pack_pairs(pairs, rng, swap_probability=1.0)
    both = Examples(*(np.concatenate([getattr(in_order, name), getattr(swapped, name)])
                      for name in ("input_ids", "attention_mask", "token_type_ids", "sop_labels")))
    masked = mask_tokens(in_order, rng, tokenizer.get_vocab_size(), replace_with_mask=1.0, replace_with_random=0.0)
    return both, masked


def token_counts(encoded: list[list[int]], vocab_size: int) -> np.ndarray:
    counts = np.zeros(vocab_size, dtype=np.int64)
    for ids in encoded:
        np.add.at(counts, np.asarray(ids, dtype=np.int64), 1)
    counts[:FIRST_ORDINARY_ID] = 0
    return counts
