"""The bundle's Hugging Face tokenizer files, so that transformers' AutoTokenizer and transformers.js load the
tokenizer the runtime runs: tokenizer_config.json, special_tokens_map.json and, when the checkpoint has one,
spiece.model (what SentencePiece's own library, and transformers' slow AlbertTokenizer, read).

The checkpoint's own files are the starting point; what the runtime decides is written over them: the special
tokens, the lowercasing and accent flags tokenizer.json applies, and model_max_length. transformers saves
model_max_length as 1e30 when a checkpoint sets none, and AutoTokenizer then never truncates, so a long input
reaches onnxruntime past the model's positions and crashes there; the bundle says the length the runtime uses.
transformers.js loads no tokenizer without tokenizer_config.json (it needs tokenizer_class, the special tokens,
model_max_length and clean_up_tokenization_spaces).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from runtime.bundle import TokenizerSettings

from .tokenizer import SPECIAL_TOKENS_MAP, SPIECE, TOKENIZER_CONFIG, read_json_object, token_text

TOKENIZER_CLASS = "AlbertTokenizer"
# ALBERT's sentence-start and sentence-end tokens are its [CLS] and [SEP]
ROLE_ALIASES = {"bos": "cls", "eos": "sep"}


def special_tokens_map(settings: TokenizerSettings) -> dict[str, str]:
    roles = dict(settings.special_tokens)
    roles.update({alias: roles[role] for alias, role in ROLE_ALIASES.items() if role in roles and alias not in roles})
    return {f"{role}_token": text for role, text in sorted(roles.items())}


def with_special_tokens(source: dict[str, Any], settings: TokenizerSettings) -> dict[str, Any]:
    """source with every special token the runtime uses; a checkpoint's entry for the same text (a serialized
    AddedToken with its lstrip/rstrip) is kept as it is."""
    result = dict(source)
    for key, text in special_tokens_map(settings).items():
        if token_text(result.get(key)) != text:
            result[key] = text
    return result


def tokenizer_config(checkpoint_config: dict[str, Any], settings: TokenizerSettings, max_length: int) -> dict[str, Any]:
    config = with_special_tokens(checkpoint_config, settings)
    config.setdefault("tokenizer_class", TOKENIZER_CLASS)
    config.setdefault("remove_space", True)
    config.update(
        do_lower_case=settings.do_lower_case,
        keep_accents=settings.keep_accents,
        clean_up_tokenization_spaces=settings.clean_up_tokenization_spaces,
        model_max_length=max_length,
    )
    return config


def write_tokenizer_files(checkpoint: Path, bundle: Path, settings: TokenizerSettings, max_length: int) -> list[Path]:
    """Write the files into the bundle directory; max_length: what the runtime truncates to. Returns their paths."""
    written = [bundle / TOKENIZER_CONFIG, bundle / SPECIAL_TOKENS_MAP]
    config = tokenizer_config(read_json_object(checkpoint / TOKENIZER_CONFIG), settings, max_length)
    written[0].write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    special_map = with_special_tokens(read_json_object(checkpoint / SPECIAL_TOKENS_MAP), settings)
    written[1].write_text(json.dumps(special_map, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if (checkpoint / SPIECE).is_file():
        shutil.copyfile(checkpoint / SPIECE, bundle / SPIECE)
        written.append(bundle / SPIECE)
    return written
