"""fill-mask, as transformers 4.57's FillMaskPipeline: top_k per mask, targets, several masks, `sequence`.

One text gives a list of {score, token, token_str, sequence} (top_k, best first); a text with several masks
gives one such list per mask (and `sequence` keeps the other masks, as HF does). A list of texts gives a list of
those — except a list of one text, which gives that text's result, as HF does.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..errors import NoMaskTokenError, OptionError
from ..taskspec import TASKS
from ..tokenizer import decode
from .base import CallForm, TaskContext
from .common import encode_features, positive_int, softmax, text_or_pair, tokenizer_options

PARAMETERS = frozenset({"top_k", "targets", "truncation", "tokenizer_kwargs"})
CALL = CallForm(list_of_one_gives_its_result=True)


def mask_token_id(ctx: TaskContext) -> int:
    mask_id = ctx.token_id("mask")
    if mask_id is None:
        raise OptionError("the bundle's tokenizer defines no mask token; fill-mask needs one (special_tokens.mask)")
    return mask_id


def no_mask(ctx: TaskContext) -> str:
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


def mask_predictions(
    ctx: TaskContext, input_ids: np.ndarray, logits: np.ndarray, top_k: int, targets: np.ndarray | None
) -> list[list[dict[str, Any]]]:
    """One list of top_k proposals per mask position (FillMaskPipeline.postprocess)."""
    mask_id = mask_token_id(ctx)
    pad_id = ctx.token_id("pad")
    positions = np.flatnonzero(input_ids == mask_id)
    probs = softmax(logits[positions].astype(np.float32))
    if targets is not None:
        probs = probs[..., targets]
        top_k = min(top_k, targets.shape[0])
    top_k = min(top_k, probs.shape[-1])
    single_mask = len(positions) == 1
    rows = []
    for i, position in enumerate(positions):
        best = np.argsort(-probs[i], kind="stable")[:top_k]
        row = []
        for p in best:
            token = int(targets[p]) if targets is not None else int(p)
            tokens = input_ids.copy()
            tokens[position] = token
            if pad_id is not None:
                tokens = tokens[tokens != pad_id]
            clean = ctx.clean_up_tokenization_spaces
            row.append(
                {
                    "score": float(probs[i, p]),
                    "token": token,
                    "token_str": decode(ctx.tokenizer, [token], clean_up_tokenization_spaces=clean),
                    "sequence": decode(
                        ctx.tokenizer, tokens, skip_special_tokens=single_mask, clean_up_tokenization_spaces=clean
                    ),
                }
            )
        rows.append(row)
    return rows


def run_each(
    ctx: TaskContext,
    items: list,
    top_k: int = 5,
    targets: str | list[str] | None = None,
    truncation: Any = None,
    tokenizer_kwargs: dict[str, Any] | None = None,
) -> list:
    top_k = positive_int("top_k", top_k)
    truncation, max_length = tokenizer_options(ctx, tokenizer_kwargs, truncation=truncation)
    mask_id = mask_token_id(ctx)
    ids = target_ids(ctx, targets) if targets is not None else None
    for item in items:
        if isinstance(item, str) and not item.strip():  # HF: tokenized to [CLS] [SEP], so no mask either
            raise NoMaskTokenError("fill-mask", "albert", f"{no_mask(ctx)}: the text is empty")
    texts = [text_or_pair(item, "fill-mask", pairs=False) for item in items]
    encodings, features = encode_features(ctx, texts, truncation, max_length)
    for text, encoding in zip(texts, encodings):
        if mask_id not in encoding.ids:
            raise NoMaskTokenError("fill-mask", "albert", f"{no_mask(ctx)}: {text[:80]!r}")
    logits_name = TASKS["fill-mask"].outputs[0]
    results = []
    for feature, output in zip(features, ctx.runner.run(features)):
        rows = mask_predictions(ctx, feature["input_ids"], output[logits_name], top_k, ids)
        results.append(rows[0] if len(rows) == 1 else rows)
    return results
