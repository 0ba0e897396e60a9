"""Every bundle carries a spiece.model: a checkpoint without one (the embedded default model, trained with
tokenizers) gets one written from tokenizer.json's Unigram vocabulary, that SentencePiece loads and that gives
tokenizer.json's ids for text normalized as tokenizer.json normalizes it. The one difference, tested: SentencePiece
drops the "▁" that tokenizers keeps for trailing whitespace (the C++ example appends it)."""
from __future__ import annotations

import json
import random

import pytest
import sentencepiece
from sentencepiece import sentencepiece_model_pb2 as spm_model
from tokenizers import Tokenizer

from albert_export.checkpoint import default_model_dir
from albert_export.tokenizer import TokenizerError
from albert_export.tokenizer_files import spiece_from_tokenizer
from tests.test_cpp import HARD

DEFAULT_MODEL_DIR = default_model_dir()
TOKENIZER_JSON = DEFAULT_MODEL_DIR / "tokenizer.json"


ADDED = ("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]")


def plain(texts: list[str]) -> list[str]:
    """The texts SentencePiece alone tokenizes: no added token (tokenizers splits those out first) and no trailing
    whitespace (the one difference, tested below)."""
    return [t for t in texts if not any(token in t for token in ADDED) and t.rstrip() == t]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("spiece") / "spiece.model"
    path.write_bytes(spiece_from_tokenizer(json.loads(TOKENIZER_JSON.read_text(encoding="utf-8"))))
    return sentencepiece.SentencePieceProcessor(model_file=str(path)), Tokenizer.from_file(str(TOKENIZER_JSON))


def ids_of_both(written, text: str) -> tuple[list[int], list[int]]:
    processor, tokenizer = written
    return processor.encode(tokenizer.normalizer.normalize_str(text)), tokenizer.encode(text, add_special_tokens=False).ids


def test_pieces_ids_and_scores_are_tokenizer_jsons(written):
    processor, tokenizer = written
    vocab = json.loads(TOKENIZER_JSON.read_text(encoding="utf-8"))["model"]["vocab"]
    assert processor.get_piece_size() == len(vocab) == tokenizer.get_vocab_size(with_added_tokens=False)
    assert [(processor.id_to_piece(i), processor.get_score(i)) for i in range(len(vocab))] == [
        (piece, pytest.approx(score, rel=1e-6)) for piece, score in vocab]
    assert [processor.is_control(tokenizer.token_to_id(t)) for t in ("<pad>", "[CLS]", "[SEP]", "[MASK]")] == [True] * 4
    assert processor.unk_id() == tokenizer.token_to_id("<unk>") and processor.is_unknown(processor.unk_id())


def test_ids_equal_tokenizers_on_hard_inputs_held_out_words_and_random_strings(written):
    words = [word for line in (DEFAULT_MODEL_DIR / "heldout.txt").read_text(encoding="utf-8").splitlines()
             for word in line.split()]
    vocab = json.loads(TOKENIZER_JSON.read_text(encoding="utf-8"))["model"]["vocab"]
    chars = sorted({c for piece, _ in vocab for c in piece if c != "▁"}) + [" "] * 8
    rng = random.Random(0)
    fuzz = ["".join(rng.choice(chars) for _ in range(rng.randint(1, 16))).strip() for _ in range(3000)]
    texts = plain(HARD) + words[:2000] + [t for t in fuzz if t]
    differ = [text for text in texts if ids_of_both(written, text)[0] != ids_of_both(written, text)[1]]
    assert differ == [] and len(texts) > 4000


def test_trailing_whitespace_is_the_one_difference(written):
    processor, tokenizer = written
    ours, theirs = ids_of_both(written, "trailing spaces   ")
    assert theirs == ours + [processor.piece_to_id("▁")]


def test_a_tokenizer_that_is_not_unigram_gets_no_spiece_model():
    with pytest.raises(TokenizerError, match="not Unigram: no spiece.model"):
        spiece_from_tokenizer({"model": {"type": "BPE", "vocab": {}, "merges": []}})


def test_a_converted_tokenizers_precompiled_charsmap_is_kept(tmp_path):
    from tests.export_helpers import tokenizer_files

    converted = json.loads((tokenizer_files() / "tokenizer.json").read_text(encoding="utf-8"))
    proto = spm_model.ModelProto()
    proto.ParseFromString(spiece_from_tokenizer(converted))
    original = spm_model.ModelProto()
    original.ParseFromString((tokenizer_files() / "spiece.model").read_bytes())
    assert proto.normalizer_spec.precompiled_charsmap == original.normalizer_spec.precompiled_charsmap != b""
    (tmp_path / "spiece.model").write_bytes(proto.SerializeToString())
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
    tokenizer = Tokenizer.from_file(str(tokenizer_files() / "tokenizer.json"))
    for text in plain(HARD):
        assert processor.encode(tokenizer.normalizer.normalize_str(text)) == tokenizer.encode(text, add_special_tokens=False).ids, text
