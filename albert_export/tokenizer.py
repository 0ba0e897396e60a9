"""The bundle's tokenizer: a `tokenizers.Tokenizer` from an HF tokenizer.json or an ALBERT `spiece.model`.

From a SentencePiece model we build what transformers' `AlbertConverter` builds (the tokenizer behind
`AlbertTokenizerFast(vocab_file=...)`), without transformers: the .model file is read with SentencePiece's own
protobuf schema (sentencepiece_model_pb2, as the converter reads it). Special tokens the SentencePiece vocabulary
lacks ([CLS], [SEP], <pad>, [MASK]) become added tokens after it, in the order transformers adds them, so ids match.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from sentencepiece.sentencepiece_model_pb2 import ModelProto, TrainerSpec
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

from runtime.bundle import TOKENIZER, TokenizerSettings
from runtime.taskspec import TASKS
from runtime.tokenizer import ALBERT_SPECIAL_TOKENS

from .errors import ExportError

SPIECE = "spiece.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
MODEL_CONFIG = "config.json"
UNSTATED_MAX_LENGTH = 512  # neither tokenizer_config.json nor config.json gives one: BERT's and ALBERT's
# transformers writes int(1e30) as model_max_length when the checkpoint sets none
_UNSET_MAX_LENGTH = 1 << 40

_CONTROL, _USER_DEFINED = ModelProto.SentencePiece.CONTROL, ModelProto.SentencePiece.USER_DEFINED


class TokenizerError(ExportError, ValueError):
    """A tokenizer directory or file that cannot be turned into the bundle's tokenizer."""


# --- reading spiece.model (SentencePiece's own ModelProto) ----------------------------------------------

def _read_spiece(path: Path) -> ModelProto:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TokenizerError(f"cannot read the SentencePiece model {path}: {exc}") from exc
    model = ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as exc:
        raise TokenizerError(
            f"{path} is not a SentencePiece model ({exc}); pass the spiece.model of an ALBERT checkpoint"
        ) from exc
    if not model.pieces or any(not piece.piece for piece in model.pieces):
        raise TokenizerError(f"{path} holds no SentencePiece vocabulary; pass the spiece.model of an ALBERT checkpoint")
    if model.trainer_spec.model_type != TrainerSpec.UNIGRAM:
        kind = TrainerSpec.ModelType.Name(model.trainer_spec.model_type)
        raise TokenizerError(f"{path} is a SentencePiece model of type {kind}, not Unigram as ALBERT uses")
    if not 0 <= model.trainer_spec.unk_id < len(model.pieces):
        raise TokenizerError(f"{path} names unk id {model.trainer_spec.unk_id} outside its {len(model.pieces)} pieces")
    return model


# --- the tokenizer --------------------------------------------------------------------------------------

def _number_comma_penalized(piece: str, score: float) -> float:
    # AlbertTokenizer splits pieces like "9," into "9" + ","; the fast tokenizer gets there by making them
    # 100 nats less likely (transformers' AlbertConverter.vocab)
    if len(piece) >= 2 and piece[-1] == "," and piece[-2].isdigit():
        return score - 100
    return score


def _albert_normalizer(charsmap: bytes, do_lower_case: bool, keep_accents: bool) -> normalizers.Normalizer:
    steps = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"')]
    if not keep_accents:
        steps += [normalizers.NFKD(), normalizers.StripAccents()]
    if do_lower_case:
        steps.append(normalizers.Lowercase())
    if charsmap:
        steps.append(normalizers.Precompiled(charsmap))
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    return normalizers.Sequence(steps)


def apply_albert_layout(tokenizer: Tokenizer, charsmap: bytes = b"", *, do_lower_case: bool = True,
                        keep_accents: bool = False) -> Tokenizer:
    """Give `tokenizer` the normalizer, Metaspace pre-tokenizer and decoder of HF's ALBERT tokenizer.json; set
    before training a vocabulary, as they decide the pieces it learns."""
    tokenizer.normalizer = _albert_normalizer(charsmap, do_lower_case, keep_accents)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tokenizer


def apply_albert_templates(tokenizer: Tokenizer) -> Tokenizer:
    """[CLS] A [SEP] and [CLS] A [SEP] B [SEP] (B's type id 1), with the ids the vocabulary gives them."""
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")), ("[SEP]", tokenizer.token_to_id("[SEP]"))],
    )
    return tokenizer


def albert_special_token(content: str) -> AddedToken:
    """A special token as transformers adds it to an ALBERT tokenizer: matched before normalization, and
    [MASK] lstrip=True so "a [MASK]" keeps the space out of the following text."""
    return AddedToken(content, lstrip=content == "[MASK]", rstrip=False, normalized=False, special=True)


def _add_albert_special_tokens(tokenizer: Tokenizer, model: ModelProto) -> None:
    # the converter makes control pieces special added tokens and user-defined pieces plain added tokens
    spm_added = [
        AddedToken(piece.piece, normalized=False, special=piece.type == _CONTROL)
        for piece in model.pieces
        if piece.type in (_CONTROL, _USER_DEFINED)
    ]
    tokenizer.add_tokens(spm_added)
    # then AlbertTokenizerFast adds its special tokens that are not added tokens yet, in transformers' role
    # order (bos=[CLS], eos=[SEP], unk, sep, pad, cls, mask); [MASK] is always (re)added
    already = {token.content for token in spm_added}
    for content in ("[CLS]", "[SEP]", "<unk>", "<pad>"):
        if content not in already:
            tokenizer.add_tokens([albert_special_token(content)])
    tokenizer.add_tokens([albert_special_token("[MASK]")])


def tokenizer_from_spiece(
    spiece_path: str | Path, *, do_lower_case: bool = True, keep_accents: bool = False, remove_space: bool = True
) -> Tokenizer:
    """The tokenizer `AlbertTokenizerFast(vocab_file=spiece_path, ...)` runs, with no truncation or padding.

    remove_space is accepted because ALBERT tokenizer configs carry it, but as in AlbertTokenizerFast it changes
    nothing: runs of spaces are always collapsed (the slow tokenizer's sentencepiece model collapses them too)."""
    del remove_space
    model = _read_spiece(Path(spiece_path))
    vocab = [(piece.piece, _number_comma_penalized(piece.piece, piece.score)) for piece in model.pieces]
    tokenizer = Tokenizer(Unigram(vocab, unk_id=model.trainer_spec.unk_id, byte_fallback=False))
    _add_albert_special_tokens(tokenizer, model)
    apply_albert_layout(tokenizer, model.normalizer_spec.precompiled_charsmap, do_lower_case=do_lower_case,
                        keep_accents=keep_accents)
    return apply_albert_templates(tokenizer)


# --- a checkpoint's tokenizer directory -------------------------------------------------------------------

def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; {} where there is no such file; TokenizerError for anything but a JSON object."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"{path} is not valid JSON ({exc}); fix or remove it") from exc
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def token_text(value: Any) -> str | None:
    """A special token's text, from a string or a serialized AddedToken; None for anything else."""
    if isinstance(value, dict):  # serialized AddedToken
        value = value.get("content")
    return value if isinstance(value, str) else None


def _special_tokens(tokenizer_config: dict[str, Any], special_map: dict[str, Any]) -> dict[str, str]:
    roles = dict(ALBERT_SPECIAL_TOKENS)
    for role in roles:
        for source in (special_map, tokenizer_config):
            text = token_text(source.get(f"{role}_token"))
            if text is not None:
                roles[role] = text
    return roles


def _max_length(tokenizer_config: dict[str, Any], model_config: dict[str, Any]) -> int:
    value = tokenizer_config.get("model_max_length")
    if isinstance(value, (int, float)) and 0 < value < _UNSET_MAX_LENGTH:
        return int(value)
    value = model_config.get("max_position_embeddings")
    if isinstance(value, int) and value > 0:
        return value
    return UNSTATED_MAX_LENGTH


def _normalizer_types(normalizer: dict[str, Any] | None) -> set[str]:
    if not normalizer:
        return set()
    types = {normalizer.get("type", "")}
    for step in normalizer.get("normalizers", []):
        types |= _normalizer_types(step)
    return types


def _tokenizer_from_json(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception for every parse error
        raise TokenizerError(f"{path} is not a valid tokenizers tokenizer.json ({exc}); re-save the tokenizer") from exc


def tokenizer_from_pretrained(path_dir: str | Path) -> tuple[Tokenizer, TokenizerSettings]:
    """The tokenizer of a checkpoint directory (its tokenizer.json, else its spiece.model) and its settings."""
    root = Path(path_dir)
    if not root.is_dir():
        raise TokenizerError(
            f"{root} is not a directory; pass the checkpoint folder holding {TOKENIZER} or {SPIECE}"
        )
    tokenizer_config = read_json_object(root / TOKENIZER_CONFIG)
    do_lower_case = bool(tokenizer_config.get("do_lower_case", True))
    keep_accents = bool(tokenizer_config.get("keep_accents", False))
    if (root / TOKENIZER).is_file():
        tokenizer = _tokenizer_from_json(root / TOKENIZER)
        # tokenizer.json's normalizer is what runs (AlbertTokenizerFast ignores the config's flags then)
        steps = _normalizer_types(json.loads(tokenizer.to_str()).get("normalizer"))
        do_lower_case, keep_accents = "Lowercase" in steps, "StripAccents" not in steps
    elif (root / SPIECE).is_file():
        tokenizer = tokenizer_from_spiece(
            root / SPIECE,
            do_lower_case=do_lower_case,
            keep_accents=keep_accents,
            remove_space=bool(tokenizer_config.get("remove_space", True)),
        )
    else:
        raise TokenizerError(
            f"{root} has neither {TOKENIZER} nor {SPIECE}; save the tokenizer there "
            "(tokenizer.save_pretrained) or pass a directory that has one"
        )
    tokenizer.no_truncation()
    tokenizer.no_padding()
    special_tokens = _special_tokens(tokenizer_config, read_json_object(root / SPECIAL_TOKENS_MAP))
    missing = [f"{role}={text!r}" for role, text in special_tokens.items() if tokenizer.token_to_id(text) is None]
    if missing:
        raise TokenizerError(f"the tokenizer in {root} lacks the special tokens {', '.join(missing)}")
    settings = TokenizerSettings(
        max_length=_max_length(tokenizer_config, read_json_object(root / MODEL_CONFIG)),
        do_lower_case=do_lower_case,
        keep_accents=keep_accents,
        special_tokens=special_tokens,
        clean_up_tokenization_spaces=bool(tokenizer_config.get("clean_up_tokenization_spaces", False)),
    )
    return tokenizer, settings


# --- does the tokenizer fit the model? (refused at export: the runtime would die in a Gather) --------------


def largest_token_id(tokenizer: Tokenizer) -> int:
    """The largest id in the tokenizer's vocabulary, added tokens included (0 for an empty one)."""
    return max(tokenizer.get_vocab(with_added_tokens=True).values(), default=0)


def largest_type_id(tokenizer: Tokenizer) -> int:
    """The largest token type id the post-processor assigns (a pair's second segment gets 1 in ALBERT's)."""
    def type_ids(node: Any) -> Iterator[int]:
        if isinstance(node, dict):
            if node.get("type") == "BertProcessing":
                yield 1
            for key, value in node.items():
                if key == "type_id" and isinstance(value, int):
                    yield value
                else:
                    yield from type_ids(value)
        elif isinstance(node, list):
            for item in node:
                yield from type_ids(item)

    return max(type_ids(json.loads(tokenizer.to_str()).get("post_processor")), default=0)


def check_tokenizer_fits(tokenizer: Tokenizer, settings: TokenizerSettings, config, task: str) -> TokenizerSettings:
    """Refuse a tokenizer whose ids the model cannot embed; cap its max length at the model's positions (with a
    warning, as the runtime would otherwise feed positions the model does not have). `config`: AlbertConfig."""
    largest = largest_token_id(tokenizer)
    if largest >= config.vocab_size:
        raise TokenizerError(
            f"the tokenizer has token ids up to {largest} but the model's vocabulary has {config.vocab_size} entries "
            "(vocab_size in config.json); export the checkpoint with the tokenizer it was trained with")
    types = largest_type_id(tokenizer)
    if TASKS[task].pairs and types >= config.type_vocab_size:
        raise TokenizerError(
            f"the tokenizer gives token type id {types} to a text pair but the model has type_vocab_size "
            f"{config.type_vocab_size}; {task} needs pairs, so export with a checkpoint that has "
            f"type_vocab_size >= {types + 1}")
    if settings.max_length > config.max_position_embeddings:
        warnings.warn(f"the tokenizer's model_max_length {settings.max_length} exceeds the model's "
                      f"{config.max_position_embeddings} positions; the bundle uses {config.max_position_embeddings}")
        settings.max_length = config.max_position_embeddings
    return settings
