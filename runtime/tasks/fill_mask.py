"""fill-mask, as transformers 4.57's FillMaskPipeline: top_k per mask, targets, several masks, `sequence`.

One text gives a list of {score, token, token_str, sequence} (top_k, best first); a text with several masks
gives one such list per mask (and `sequence` keeps the other masks, as HF does). A list of texts gives a list of
those — except a list of one text, which gives that text's result, as HF does.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers.decoders import Metaspace

from ..errors import NoMaskTokenError, OptionError
from ..taskspec import TASKS
from ..tokenizer import clean_up_tokenization, decode
from .base import CallForm, Features, TaskContext
from .common import encode_features, positive_int, refuse_unknown, softmax, text_or_pair, tokenizer_options

PARAMETERS = TASKS["fill-mask"].parameters
CALL = CallForm(list_of_one_gives_its_result=True)
LOGITS = TASKS["fill-mask"].outputs[0]


def mask_token_id(ctx: TaskContext) -> int:
    """The id of the tokenizer's mask token; OptionError where it has none."""
    mask_id = ctx.token_id("mask")
    if mask_id is None:
        raise OptionError("the bundle's tokenizer defines no mask token; fill-mask needs one (special_tokens.mask)")
    return mask_id


def no_mask(ctx: TaskContext) -> str:
    """The message HF gives for an input without a mask token."""
    return f"No mask_token ({ctx.special_tokens['mask']}) found on the input"


def target_ids(ctx: TaskContext, targets: str | list[str]) -> np.ndarray:
    """Vocabulary ids of the targets; a word outside the vocabulary becomes its first sub-token, with a warning."""
    if isinstance(targets, str):
        targets = [targets]
    vocab = ctx.tokenizer.get_vocab(with_added_tokens=True)
    ids = []
    for target in targets:
        id_ = vocab.get(target)
        if id_ is None:
            pieces = ctx.tokenizer.encode(target, add_special_tokens=False).ids
            if not pieces:
                warnings.warn(
                    f"The specified target token `{target}` does not exist in the model vocabulary. "
                    "We cannot replace it with anything meaningful, ignoring it"
                )
                continue
            id_ = pieces[0]
            warnings.warn(
                f"The specified target token `{target}` does not exist in the model vocabulary. "
                f"Replacing with `{ctx.tokenizer.id_to_token(id_)}`."
            )
        ids.append(id_)
    ids = list(set(ids))  # HF's order, which decides ties
    if not ids:
        raise OptionError("At least one target must be provided when passed.")
    return np.array(ids)


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """The k best indices of a 1-d array, best first, equal scores in index order: exactly
    np.argsort(-scores, kind="stable")[:k] (HF's order here), in O(n + c log c) for the c >= k scores at least
    the k-th best, not a sort of the whole vocabulary."""
    negated = -scores
    if k >= len(negated):
        return np.argsort(negated, kind="stable")
    kth = np.partition(negated, k - 1)[k - 1]
    if np.isnan(kth):  # fewer than k comparable scores: the full sort places the NaNs
        return np.argsort(negated, kind="stable")[:k]
    candidates = np.flatnonzero(negated <= kth)  # ascending indices, so a stable sort keeps ties in index order
    return candidates[np.argsort(negated[candidates], kind="stable")[:k]]


class ProposalText:
    """token_str and `sequence` of proposals, as tokenizer.decode gives them, without one decode of the whole
    input per proposal: token_str is decoded once per token id, and a `sequence` is the text before the mask,
    the proposal and the text after it, each decoded once per mask, where the tokenizer's decoder maps each token
    on its own (Metaspace, ALBERT's SentencePiece: only the first token of a text is decoded differently).
    Other decoders, and any mask whose first proposal's joined text differs from a full decode, decode in full."""

    def __init__(self, ctx: TaskContext, skip_special_tokens: bool):
        self.tokenizer = ctx.tokenizer
        self.clean = ctx.clean_up_tokenization_spaces
        self.skip = skip_special_tokens
        self.pad_id = ctx.token_id("pad")
        self.special = {i for i, token in self.tokenizer.get_added_tokens_decoder().items() if token.special}
        self.token_local = isinstance(self.tokenizer.decoder, Metaspace)
        self._token_str: dict[int, str] = {}

    def token_str(self, token: int) -> str:
        """The decoded text of one token, cached."""
        text = self._token_str.get(token)
        if text is None:
            text = self._token_str[token] = decode(self.tokenizer, [token], clean_up_tokenization_spaces=self.clean)
        return text

    def full(self, input_ids: np.ndarray, position: int, token: int) -> str:
        """The input text with `token` put at `position`, decoded without padding."""
        tokens = input_ids.copy()
        tokens[position] = token
        if self.pad_id is not None:
            tokens = tokens[tokens != self.pad_id]
        return decode(self.tokenizer, tokens, skip_special_tokens=self.skip, clean_up_tokenization_spaces=self.clean)

    def sequences(self, input_ids: np.ndarray, position: int, tokens: list[int]) -> list[str]:
        """The `sequence` of each proposal in `tokens` for the mask at `position`."""
        if not tokens:
            return []
        joined = self._joined(input_ids, position) if self.token_local else None
        if joined is None or joined(tokens[0]) != self.full(input_ids, position, tokens[0]):
            return [self.full(input_ids, position, token) for token in tokens]
        return [joined(token) for token in tokens]

    def _kept(self, token: int) -> bool:
        return token != self.pad_id and not (self.skip and token in self.special)

    def _joined(self, input_ids: np.ndarray, position: int):
        decoder, to_token = self.tokenizer.decoder, self.tokenizer.id_to_token
        ids = input_ids.tolist()
        before = [to_token(i) for i in ids[:position] if self._kept(i)]
        after = [to_token(i) for i in ids[position + 1:] if self._kept(i)]

        def not_first(pieces: list[str]) -> str:  # the pieces decoded where they do not start the text
            if not pieces:
                return ""
            return decoder.decode([pieces[0], *pieces])[len(decoder.decode([pieces[0]])):]

        prefix, after_rest = decoder.decode(before) if before else "", not_first(after)
        after_first = decoder.decode(after) if after else ""
        clean = clean_up_tokenization if self.clean else (lambda text: text)

        def joined(token: int) -> str:
            if not self._kept(token):
                return clean(prefix + (after_rest if before else after_first))
            piece = not_first([to_token(token)]) if before else decoder.decode([to_token(token)])
            return clean(prefix + piece + after_rest)

        return joined


def mask_predictions(
    ctx: TaskContext, input_ids: np.ndarray, logits: np.ndarray, top_k: int, targets: np.ndarray | None
) -> list[list[dict[str, Any]]]:
    """One list of top_k proposals per mask position (FillMaskPipeline.postprocess), in O(vocabulary + top_k) per
    mask (with the text of each proposal's `sequence` on top)."""
    mask_id = mask_token_id(ctx)
    positions = np.flatnonzero(input_ids == mask_id)
    probs = softmax(logits[positions].astype(np.float32))
    if targets is not None:
        probs = probs[..., targets]
        top_k = min(top_k, targets.shape[0])
    top_k = min(top_k, probs.shape[-1])
    text = ProposalText(ctx, skip_special_tokens=len(positions) == 1)
    rows = []
    for i, position in enumerate(positions):
        best = top_indices(probs[i], top_k)
        tokens = (targets[best] if targets is not None else best).tolist()
        sequences = text.sequences(input_ids, int(position), tokens)
        rows.append([{"score": score, "token": token, "token_str": text.token_str(token), "sequence": sequence}
                     for score, token, sequence in zip(probs[i, best].tolist(), tokens, sequences)])
    return rows


@dataclass(frozen=True)
class FillMaskSettings:
    """The fill-mask parameters of one call, checked."""
    top_k: int
    truncation: Any
    max_length: int
    mask_id: int
    targets: np.ndarray | None  # vocabulary ids, HF's order


def settings(ctx: TaskContext, params: dict[str, Any]) -> FillMaskSettings:
    """The fill-mask parameters checked; CallError for unknown ones."""
    refuse_unknown("fill-mask", params, PARAMETERS)
    top_k = positive_int("top_k", params.get("top_k", 5))
    truncation, max_length = tokenizer_options(ctx, params.get("tokenizer_kwargs"), truncation=params.get("truncation"))
    targets = params.get("targets")
    return FillMaskSettings(top_k, truncation, max_length, mask_token_id(ctx),
                            target_ids(ctx, targets) if targets is not None else None)


def preprocess(ctx: TaskContext, item: Any, settings: FillMaskSettings) -> Features:
    """The features of one fill-mask input; NoMaskTokenError for an empty text."""
    if isinstance(item, str) and not item.strip():  # HF: tokenized to [CLS] [SEP], so no mask either
        raise NoMaskTokenError("fill-mask", "albert", f"{no_mask(ctx)}: the text is empty")
    text = text_or_pair(item, "fill-mask", pairs=False)
    encodings, features = encode_features(ctx, [text], settings.truncation, settings.max_length)
    if settings.mask_id not in encodings[0].ids:
        raise NoMaskTokenError("fill-mask", "albert", f"{no_mask(ctx)}: {text[:80]!r}")
    return Features(features, settings)


def postprocess(ctx: TaskContext, features: Features, outputs: list[dict[str, np.ndarray]]) -> Any:
    """The top proposals for each mask of one input (one list where there is a single mask)."""
    s = features.settings
    rows = mask_predictions(ctx, features.windows[0]["input_ids"], outputs[0][LOGITS], s.top_k, s.targets)
    return rows[0] if len(rows) == 1 else rows
