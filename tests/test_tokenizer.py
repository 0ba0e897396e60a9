"""The bundle tokenizer against transformers' AlbertTokenizer (slow) and AlbertTokenizerFast, on the shared data."""
from __future__ import annotations

import csv
import io
import json

import pytest
import sentencepiece as spm
from transformers import AlbertTokenizer, AlbertTokenizerFast

from albert_export.tokenizer import TokenizerError, tokenizer_from_pretrained, tokenizer_from_spiece
from tests.conftest import DATA

SPIECE = DATA / "sentencepiece_test_model.model"
SETTINGS = {
    "default": {},
    "cased": {"do_lower_case": False},
    "accents": {"keep_accents": True},
}
MASKED = "Plants create [MASK] through photosynthesis."


def _single_texts() -> list[str]:
    texts = [line for line in (DATA / "botchan.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    squad = json.loads((DATA / "squad_v2_dev_sample.json").read_text(encoding="utf-8"))
    for article in squad["data"]:
        for paragraph in article["paragraphs"]:
            texts.append(paragraph["context"])
            texts += [qa["question"] for qa in paragraph["qas"]]
    for line in (DATA / "conll2003_sample.jsonl").read_text(encoding="utf-8").splitlines():
        texts.append(" ".join(json.loads(line)["words"]))
    for item in _swag():
        texts += [item["sent1"], item["sent2"]] + [item[f"ending{i}"] for i in range(4)]
    return texts


def _swag() -> list[dict]:
    return [json.loads(line) for line in (DATA / "swag_sample.jsonl").read_text(encoding="utf-8").splitlines()]


def _pairs() -> list[tuple[str, str]]:
    with open(DATA / "mrpc_dev_sample.tsv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    pairs = [(row["#1 String"], row["#2 String"]) for row in rows]
    squad = json.loads((DATA / "squad_v2_dev_sample.json").read_text(encoding="utf-8"))
    for article in squad["data"]:
        for paragraph in article["paragraphs"]:
            pairs += [(qa["question"], paragraph["context"]) for qa in paragraph["qas"]]
    for item in _swag():  # multiple choice: (context, question start + ending)
        pairs += [(item["sent1"], f"{item['sent2']} {item[f'ending{i}']}") for i in range(4)]
    return pairs


SINGLES = _single_texts()
PAIRS = _pairs()


@pytest.fixture(scope="module", params=list(SETTINGS))
def tokenizers_under_test(request):
    options = SETTINGS[request.param]
    ours = tokenizer_from_spiece(SPIECE, **options)
    slow = AlbertTokenizer(vocab_file=str(SPIECE), **options)
    return ours, slow, AlbertTokenizerFast(vocab_file=str(SPIECE), **options)


def _ours(tokenizer, inputs):
    encodings = tokenizer.encode_batch(inputs)
    return [(e.ids, e.type_ids, e.offsets) for e in encodings]


def _theirs(hf_tokenizer, inputs, offsets: bool):
    """(ids, type ids[, offsets]) per input from a transformers tokenizer; inputs are texts or (text, pair)."""
    if isinstance(inputs[0], tuple):
        batch = hf_tokenizer([a for a, _ in inputs], [b for _, b in inputs], return_offsets_mapping=offsets)
    else:
        batch = hf_tokenizer(inputs, return_offsets_mapping=offsets)
    rows = []
    for i, ids in enumerate(batch["input_ids"]):
        row = (ids, batch["token_type_ids"][i])
        if offsets:
            row += ([tuple(span) for span in batch["offset_mapping"][i]],)
        rows.append(row)
    return rows


def _first_mismatch(inputs, got, expected):
    for text, mine, theirs in zip(inputs, got, expected):
        if mine != theirs:
            return text, mine, theirs
    return None


def test_data_is_the_size_the_suite_claims():
    assert len(SINGLES) > 3500 and len(PAIRS) == 6 + 14 + 40


@pytest.mark.parametrize("inputs", [SINGLES, PAIRS], ids=["singles", "pairs"])
def test_ids_type_ids_offsets_match_fast(tokenizers_under_test, inputs):
    ours, _, fast = tokenizers_under_test
    got = _ours(ours, inputs)
    expected = _theirs(fast, inputs, offsets=True)
    assert _first_mismatch(inputs, got, expected) is None


@pytest.mark.parametrize("inputs", [SINGLES, PAIRS], ids=["singles", "pairs"])
def test_ids_type_ids_match_slow(tokenizers_under_test, inputs):
    ours, slow, _ = tokenizers_under_test
    got = [(ids, type_ids) for ids, type_ids, _ in _ours(ours, inputs)]
    expected = _theirs(slow, inputs, offsets=False)
    assert _first_mismatch(inputs, got, expected) is None


def test_pair_type_ids_and_template():
    ours = tokenizer_from_spiece(SPIECE)
    encoding = ours.encode("a question", "the context")
    cls, sep = ours.token_to_id("[CLS]"), ours.token_to_id("[SEP]")
    first_sep = encoding.ids.index(sep)
    assert encoding.ids[0] == cls and encoding.ids[-1] == sep
    assert encoding.type_ids == [0] * (first_sep + 1) + [1] * (len(encoding.ids) - first_sep - 1)


def test_missing_special_tokens_are_added_after_the_vocab_like_transformers():
    ours = tokenizer_from_spiece(SPIECE)
    fast = AlbertTokenizerFast(vocab_file=str(SPIECE))
    slow = AlbertTokenizer(vocab_file=str(SPIECE))
    for token in ("[CLS]", "[SEP]", "<pad>", "[MASK]", "<unk>", "<s>", "</s>"):
        assert ours.token_to_id(token) == fast.convert_tokens_to_ids(token) == slow.convert_tokens_to_ids(token)
    assert [ours.token_to_id(t) for t in ("[CLS]", "[SEP]", "<pad>", "[MASK]")] == [1000, 1001, 1002, 1003]
    assert ours.get_vocab_size() == len(fast) == 1004


@pytest.mark.parametrize("options", list(SETTINGS.values()), ids=list(SETTINGS))
def test_mask_token_in_text(options):
    ours = tokenizer_from_spiece(SPIECE, **options)
    fast = AlbertTokenizerFast(vocab_file=str(SPIECE), **options)
    slow = AlbertTokenizer(vocab_file=str(SPIECE), **options)
    texts = [MASKED, "The capital of France is [MASK].", "[MASK] [MASK]", "no space[MASK]here"]
    got = _ours(ours, texts)
    assert got == _theirs(fast, texts, offsets=True)
    assert [(ids, type_ids) for ids, type_ids, _ in got] == _theirs(slow, texts, offsets=False)
    mask_id = ours.token_to_id("[MASK]")
    encoding = ours.encode(MASKED)
    start, end = encoding.offsets[encoding.ids.index(mask_id)]
    assert encoding.ids.count(mask_id) == 1 and MASKED[start:end] == " [MASK]"


@pytest.mark.parametrize(
    "options", list(SETTINGS.values()) + [{"remove_space": False}], ids=list(SETTINGS) + ["keep-space"]
)
def test_normalization_edge_cases_match_fast(options):
    ours = tokenizer_from_spiece(SPIECE, **options)
    fast = AlbertTokenizerFast(vocab_file=str(SPIECE), **options)
    texts = ["``Quoted'' Café NAÏVE façade", "Ångström   spaced  out", "It cost 12,345 yen, 9,9", "ﬁ ½ Ⅻ ①"]
    assert _ours(ours, texts) == _theirs(fast, texts, offsets=True)


def test_settings_change_the_tokens():
    text = "Café NAÏVE"
    default, cased, accents = (
        tokenizer_from_spiece(SPIECE, **options).encode(text).ids for options in SETTINGS.values()
    )
    assert len({tuple(default), tuple(cased), tuple(accents)}) == 3


def _trained_spiece(tmp_path, **options):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        input=str(DATA / "botchan.txt"), model_writer=model, vocab_size=300, pad_id=0, unk_id=1, bos_id=-1,
        eos_id=-1, pad_piece="<pad>", minloglevel=2, **options,
    )
    path = tmp_path / "spiece.model"
    path.write_bytes(model.getvalue())
    return path


@pytest.mark.parametrize("kind", ["control_symbols", "user_defined_symbols"])
def test_serialized_tokenizer_equals_albert_converter_output(tmp_path, kind):
    """ALBERT-style models with [CLS]/[SEP]/[MASK] in the vocabulary, as control or user-defined pieces."""
    path = _trained_spiece(tmp_path, **{kind: ["[CLS]", "[SEP]", "[MASK]"]})
    for options in SETTINGS.values():
        fast = AlbertTokenizerFast(vocab_file=str(path), **options)
        ours = tokenizer_from_spiece(path, **options)
        assert json.loads(ours.to_str()) == json.loads(fast.backend_tokenizer.to_str())


def test_serialized_tokenizer_equals_albert_converter_output_for_test_model():
    for options in SETTINGS.values():
        fast = AlbertTokenizerFast(vocab_file=str(SPIECE), **options)
        ours = tokenizer_from_spiece(SPIECE, **options)
        assert json.loads(ours.to_str()) == json.loads(fast.backend_tokenizer.to_str())


def test_number_comma_pieces(tmp_path):
    """Pieces like "▁12," are 100 nats less likely, as AlbertConverter makes them (the slow tokenizer splits them)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(SPIECE.read_bytes())
    for text in ("▁12,", "▁1919,", "9,"):
        piece = proto.pieces.add()
        piece.piece, piece.score = text, -1.0
    path = tmp_path / "spiece.model"
    path.write_bytes(proto.SerializeToString())
    ours = tokenizer_from_spiece(path)
    fast = AlbertTokenizerFast(vocab_file=str(path))
    assert json.loads(ours.to_str()) == json.loads(fast.backend_tokenizer.to_str())
    texts = ["then 12,345 and 12, too", "In 2000, 12, said Tom."]
    assert _ours(ours, texts) == _theirs(fast, texts, offsets=True)
    assert [(ids, type_ids) for ids, type_ids, _ in _ours(ours, texts)] == _theirs(
        AlbertTokenizer(vocab_file=str(path)), texts, offsets=False
    )
    assert "▁12," not in [ours.id_to_token(i) for i in ours.encode(texts[0]).ids]


def test_spiece_reader_matches_sentencepiece():
    from albert_export.tokenizer import _read_spiece

    model = _read_spiece(SPIECE)
    processor = spm.SentencePieceProcessor(model_file=str(SPIECE))
    assert len(model.pieces) == processor.get_piece_size() == 1000
    for i, piece in enumerate(model.pieces):
        assert piece.piece == processor.id_to_piece(i)
        assert piece.score == processor.get_score(i)
        assert (piece.type == 2) == processor.is_unknown(i) and (piece.type == 3) == processor.is_control(i)
    assert model.trainer_spec.unk_id == processor.unk_id() and len(model.normalizer_spec.precompiled_charsmap) > 0


def test_no_truncation_no_padding():
    ours = tokenizer_from_spiece(SPIECE)
    assert ours.truncation is None and ours.padding is None


# --- directories ------------------------------------------------------------------------------------------

def test_directory_with_spiece_model_and_config(tmp_path):
    AlbertTokenizer(vocab_file=str(SPIECE), do_lower_case=False, keep_accents=True).save_pretrained(tmp_path)
    assert not (tmp_path / "tokenizer.json").exists()
    tokenizer, settings = tokenizer_from_pretrained(tmp_path)
    fast = AlbertTokenizerFast.from_pretrained(tmp_path)
    texts = SINGLES[:200] + [MASKED, "Café NAÏVE"]
    assert _ours(tokenizer, texts) == _theirs(fast, texts, offsets=True)
    assert settings.do_lower_case is False and settings.keep_accents is True
    assert settings.max_length == 512
    assert settings.special_tokens == {"cls": "[CLS]", "sep": "[SEP]", "pad": "<pad>", "mask": "[MASK]", "unk": "<unk>"}


def test_directory_with_spiece_model_only(tmp_path):
    (tmp_path / "spiece.model").write_bytes(SPIECE.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 64}))
    tokenizer, settings = tokenizer_from_pretrained(tmp_path)
    assert json.loads(tokenizer.to_str()) == json.loads(tokenizer_from_spiece(SPIECE).to_str())
    assert (settings.max_length, settings.do_lower_case, settings.keep_accents) == (64, True, False)


def test_directory_with_tokenizer_json(tmp_path):
    fast = AlbertTokenizerFast(vocab_file=str(SPIECE), do_lower_case=False, model_max_length=128)
    fast.backend_tokenizer.enable_truncation(16)
    fast.backend_tokenizer.enable_padding(length=32)
    fast.save_pretrained(tmp_path)
    (tmp_path / "spiece.model").unlink(missing_ok=True)  # tokenizer.json alone must do
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 64}))
    tokenizer, settings = tokenizer_from_pretrained(tmp_path)
    assert tokenizer.truncation is None and tokenizer.padding is None
    reference = AlbertTokenizerFast(vocab_file=str(SPIECE), do_lower_case=False)
    assert _ours(tokenizer, PAIRS) == _theirs(reference, PAIRS, offsets=True)
    assert (settings.max_length, settings.do_lower_case, settings.keep_accents) == (128, False, False)


def test_tokenizer_json_is_preferred_over_spiece_model(tmp_path):
    AlbertTokenizerFast(vocab_file=str(SPIECE), do_lower_case=False).save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()  # spiece.model would now be read lowercasing
    tokenizer, settings = tokenizer_from_pretrained(tmp_path)
    assert (settings.do_lower_case, settings.keep_accents) == (False, False)  # read off tokenizer.json's normalizer
    assert tokenizer.encode("Hello").ids == tokenizer_from_spiece(SPIECE, do_lower_case=False).encode("Hello").ids
    assert tokenizer.encode("Hello").ids != tokenizer_from_spiece(SPIECE).encode("Hello").ids


def test_round_trip_through_saved_tokenizer_json(tmp_path):
    ours = tokenizer_from_spiece(SPIECE, keep_accents=True)
    ours.save(str(tmp_path / "tokenizer.json"))
    reloaded, settings = tokenizer_from_pretrained(tmp_path)
    assert _ours(reloaded, PAIRS) == _ours(ours, PAIRS)
    assert (settings.do_lower_case, settings.keep_accents, settings.max_length) == (True, True, 512)


# --- errors -------------------------------------------------------------------------------------------------

def test_directory_without_tokenizer_files(tmp_path):
    with pytest.raises(TokenizerError, match="neither tokenizer.json nor spiece.model"):
        tokenizer_from_pretrained(tmp_path)


def test_missing_directory(tmp_path):
    with pytest.raises(TokenizerError, match="not a directory"):
        tokenizer_from_pretrained(tmp_path / "absent")


def test_broken_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(TokenizerError, match="not a valid tokenizers tokenizer.json"):
        tokenizer_from_pretrained(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\xff\xfe garbage bytes \x00\x01", json.dumps({"a": 1}).encode()])
def test_broken_spiece_model(tmp_path, content):
    (tmp_path / "spiece.model").write_bytes(content)
    with pytest.raises(TokenizerError, match="spiece.model"):
        tokenizer_from_pretrained(tmp_path)


def test_truncated_spiece_model(tmp_path):
    (tmp_path / "spiece.model").write_bytes(SPIECE.read_bytes()[:5000])
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        tokenizer_from_spiece(tmp_path / "spiece.model")


def test_bpe_spiece_model_is_refused(tmp_path):
    path = _trained_spiece(tmp_path, model_type="bpe")
    with pytest.raises(TokenizerError, match="not Unigram"):
        tokenizer_from_spiece(path)


def test_broken_tokenizer_config(tmp_path):
    (tmp_path / "spiece.model").write_bytes(SPIECE.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer_config.json is not valid JSON"):
        tokenizer_from_pretrained(tmp_path)


def test_tokenizer_json_without_albert_special_tokens(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    Tokenizer(WordLevel({"hello": 0, "<unk>": 1}, unk_token="<unk>")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TokenizerError, match="lacks the special tokens cls='\\[CLS\\]'"):
        tokenizer_from_pretrained(tmp_path)
