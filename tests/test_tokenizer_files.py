"""The bundle's Hugging Face tokenizer files: transformers' AutoTokenizer (fast, from tokenizer.json) and the
slow AlbertTokenizer (from spiece.model) load a bundle and tokenize as the runtime does, truncating at the
model's length; every file is listed and checksummed in the manifest."""
from __future__ import annotations

import json

import pytest
import sentencepiece
import torch
from tokenizers import Tokenizer
from transformers import AlbertTokenizer, AutoTokenizer

from albert_export.exporter import export
from albert_export.tokenizer_files import tokenizer_config
from runtime.bundle import TokenizerSettings, load_bundle, sha256_file
from runtime.tokenizer import load_tokenizer
from tests.export_helpers import TINY, quiet, save_checkpoint

torch.set_num_threads(1)
TEXTS = [("Hello world, ALBERT!", None), ("Plants create [MASK] through photosynthesis.", None),
         ("Who wrote it?", "It was written in 1999, by Émile."), ("naïve café  spaces", "9, 10,")]
ALBERT_SPECIAL = {"cls": "[CLS]", "sep": "[SEP]", "pad": "<pad>", "mask": "[MASK]", "unk": "<unk>"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizer-files")
    save_checkpoint(root / "checkpoint", "fill-mask")
    return root / "checkpoint", export(root / "checkpoint", "fill-mask", root / "bundle", log=quiet)


def runtime_ids(bundle, text, pair):
    return load_tokenizer(bundle / "tokenizer.json").encode(text, pair).ids


def test_bundle_lists_and_checksums_the_tokenizer_files(exported):
    checkpoint, bundle = exported
    files = load_bundle(bundle).manifest.files  # load_bundle verifies every sha256
    for name in ("tokenizer_config.json", "special_tokens_map.json", "spiece.model"):
        assert files[name] == sha256_file(bundle / name)
    assert (bundle / "spiece.model").read_bytes() == (checkpoint / "spiece.model").read_bytes()


def test_auto_tokenizer_truncates_at_the_models_length_and_gives_the_runtimes_ids(exported):
    checkpoint, bundle = exported
    assert json.loads((checkpoint / "tokenizer_config.json").read_text())["model_max_length"] > 1e29  # unset
    for hf in (AutoTokenizer.from_pretrained(bundle), AlbertTokenizer.from_pretrained(bundle)):
        assert hf.model_max_length == TINY["max_position_embeddings"] == 40
        assert (hf.cls_token, hf.sep_token, hf.pad_token, hf.mask_token, hf.unk_token) == (
            "[CLS]", "[SEP]", "<pad>", "[MASK]", "<unk>")
        for text, pair in TEXTS:
            assert hf(text, pair)["input_ids"] == runtime_ids(bundle, text, pair), (type(hf).__name__, text)
        assert len(hf("word " * 100, truncation=True)["input_ids"]) == 40
    assert type(AutoTokenizer.from_pretrained(bundle)).__name__ == "AlbertTokenizerFast"


def test_a_checkpoint_with_only_spiece_model_gets_generated_files(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    save_checkpoint(checkpoint, "text-classification", max_position_embeddings=33)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        (checkpoint / name).unlink()
    bundle = export(checkpoint, "text-classification", tmp_path / "bundle", log=quiet)
    config = json.loads((bundle / "tokenizer_config.json").read_text())
    assert {key: config[key] for key in ("tokenizer_class", "model_max_length", "clean_up_tokenization_spaces",
                                         "do_lower_case", "keep_accents", "remove_space")} == {
        "tokenizer_class": "AlbertTokenizer", "model_max_length": 33, "clean_up_tokenization_spaces": False,
        "do_lower_case": True, "keep_accents": False, "remove_space": True}
    special = json.loads((bundle / "special_tokens_map.json").read_text())
    assert special == {**{f"{role}_token": text for role, text in ALBERT_SPECIAL.items()},
                       "bos_token": "[CLS]", "eos_token": "[SEP]"}
    assert sorted(load_bundle(bundle).manifest.files) == [
        "config.json", "model.onnx", "special_tokens_map.json", "spiece.model", "tokenizer.json",
        "tokenizer_config.json"]
    hf = AutoTokenizer.from_pretrained(bundle)
    assert hf.model_max_length == 33
    for text, pair in TEXTS:
        assert hf(text, pair)["input_ids"] == runtime_ids(bundle, text, pair)


def test_the_default_model_keeps_its_own_length_and_ships_a_spiece_written_from_tokenizer_json(tmp_path):
    bundle = export(None, "question-answering", tmp_path / "bundle", log=quiet)
    assert "spiece.model" in load_bundle(bundle).manifest.files
    assert AutoTokenizer.from_pretrained(bundle).model_max_length == 128
    processor = sentencepiece.SentencePieceProcessor(model_file=str(bundle / "spiece.model"))
    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    for text in [text for text, _ in TEXTS if "[MASK]" not in text]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert processor.encode(tokenizer.normalizer.normalize_str(text)) == ids, text


def test_checkpoint_config_is_kept_and_the_runtimes_decisions_written_over_it():
    settings = TokenizerSettings(max_length=512, do_lower_case=False, keep_accents=True,
                                 special_tokens={**ALBERT_SPECIAL, "mask": "<mask>"}, clean_up_tokenization_spaces=True)
    mask_entry = {"content": "[MASK]", "lstrip": True, "__type": "AddedToken"}
    cls_entry = {"content": "[CLS]", "lstrip": False, "__type": "AddedToken"}
    checkpoint = {"tokenizer_class": "AlbertTokenizerFast", "remove_space": False, "model_max_length": 10 ** 30,
                  "mask_token": mask_entry, "cls_token": cls_entry, "do_lower_case": True, "sp_model_kwargs": {}}
    config = tokenizer_config(checkpoint, settings, max_length=40)
    assert config == {"tokenizer_class": "AlbertTokenizerFast", "remove_space": False, "model_max_length": 40,
                      "mask_token": "<mask>", "cls_token": cls_entry, "do_lower_case": False, "keep_accents": True,
                      "sp_model_kwargs": {}, "clean_up_tokenization_spaces": True, "sep_token": "[SEP]",
                      "pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "[CLS]", "eos_token": "[SEP]"}


def test_clean_up_tokenization_spaces_reaches_the_manifest_and_the_bundle(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    save_checkpoint(checkpoint, "fill-mask")
    path = checkpoint / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "clean_up_tokenization_spaces": True}))
    bundle = export(checkpoint, "fill-mask", tmp_path / "bundle", log=quiet)
    assert load_bundle(bundle).manifest.tokenizer.clean_up_tokenization_spaces is True
    assert AutoTokenizer.from_pretrained(bundle).clean_up_tokenization_spaces is True
