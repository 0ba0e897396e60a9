"""The training script on a tiny corpus and a tiny model: reproducible, HF-loadable output; the data pipeline."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from albert_export.checkpoint import HeadInitializedWarning, from_pretrained
from devtools import pretraining_data as data
from devtools.train import DEFAULT_CORPUS, TrainingSettings, checkpoint_state, train, train_tokenizer
from tests.export_helpers import assert_transformers_loads_pretraining

TINY = dict(embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The first 400 lines of the book (after the Gutenberg header), header included so it gets removed."""
    lines = DEFAULT_CORPUS.read_text(encoding="utf-8-sig").splitlines()
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text("\n".join(lines[:420]) + "\n")
    return path


def tiny_run(corpus, seed=0, output=None, steps=3):
    settings = TrainingSettings(seed=seed, vocab_size=400, max_length=32, short_length=16, batch_size=8, steps=steps)
    return train(corpus, output, settings, progress=False, **TINY)


def test_same_seed_same_losses_other_seed_other_losses(corpus):
    first, again, other = tiny_run(corpus, seed=0), tiny_run(corpus, seed=0), tiny_run(corpus, seed=1)
    assert len(first["loss_curve"]) == 3
    assert first["loss_curve"] == again["loss_curve"]
    assert first["heldout"] == again["heldout"]
    assert first["loss_curve"] != other["loss_curve"]


def test_written_checkpoint_loads_here_and_in_transformers(corpus, tmp_path):
    report = tiny_run(corpus, output=tmp_path, steps=2)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "heldout.txt",
                 "training_report.json"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "loss_curve.png").is_file() or (tmp_path / "loss_curve.svg").is_file()
    assert report["steps"] == 2 and report["heldout"]["mlm"]["masked_tokens"] > 0

    with warnings.catch_warnings():
        warnings.simplefilter("error", HeadInitializedWarning)
        ours = from_pretrained(tmp_path, "pretraining")
    assert_transformers_loads_pretraining(tmp_path, ours, ["It was a [MASK] day.", "I said nothing."],
                                          ["He left.", "So be it."])


def test_checkpoint_state_leaves_out_only_the_tied_decoder(corpus):
    from albert_export.modeling import AlbertForPreTraining
    from devtools.train import tiny_config

    model = AlbertForPreTraining(tiny_config(50, 16, **TINY))
    state = checkpoint_state(model)
    assert set(model.state_dict()) - set(state) == {"predictions.decoder.weight", "predictions.decoder.bias"}
    assert state["predictions.bias"].data_ptr() != model.predictions.bias.data_ptr()


def test_tokenizer_has_albert_special_ids_and_templates(corpus):
    train_lines, _ = data.split_corpus(corpus)
    tokenizer = train_tokenizer(train_lines, 300)
    assert [tokenizer.token_to_id(t) for t in data.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    pair = tokenizer.encode("I ``ran'' HOME.", "Café [MASK] me.")
    assert pair.ids[0] == data.CLS and pair.ids.count(data.SEP) == 2 and pair.ids[-1] == data.SEP
    assert data.MASK in pair.ids
    first_sep = pair.ids.index(data.SEP)
    assert set(pair.type_ids[: first_sep + 1]) == {0} and set(pair.type_ids[first_sep + 1 :]) == {1}
    assert tokenizer.decode(tokenizer.encode("I ran home.").ids) == "i ran home."  # lowercased
    assert "é" not in "".join(pair.tokens) and '"' in "".join(pair.tokens)  # accents stripped, `` -> "


def test_split_removes_gutenberg_text_and_holds_out_the_last_tenth(corpus):
    train_lines, heldout = data.split_corpus(corpus)
    assert not any("Project Gutenberg" in line for line in train_lines[:3])
    total = len(train_lines) + len(heldout)
    assert len(heldout) == total - round(total * 0.9)
    body = [line.strip() for line in data.gutenberg_body(corpus.read_text(encoding="utf-8-sig").splitlines())]
    assert [line for line in body if line][-len(heldout):] == heldout


def test_segment_pairs_stay_within_length_and_keep_every_token_in_order():
    rng = np.random.default_rng(0)
    encoded = [list(range(10 * i + 5, 10 * i + 5 + n)) for i, n in enumerate([3, 7, 2, 9, 4, 30, 1, 6])]
    pairs = data.segment_pairs(encoded, 16, rng, short_seq_prob=0.0)
    assert pairs
    for first, second in pairs:
        assert first and second and len(first) + len(second) <= 13
        joined = first + second
        assert joined == sorted(joined)  # adjacent text, in reading order, before any swap


def test_pack_and_mask_follow_the_pretraining_recipe():
    rng = np.random.default_rng(0)
    pairs = [(list(range(5, 25)), list(range(25, 60))) for _ in range(200)]
    packed = data.pack_pairs(pairs, rng)
    assert 0.4 < packed.sop_labels.mean() < 0.6
    row = packed.input_ids[0]
    assert row[0] == data.CLS and (row == data.SEP).sum() == 2
    swapped = packed.sop_labels.astype(bool)
    first_lengths = np.where(swapped, 35, 20)
    assert (packed.token_type_ids.sum(axis=1) == 56 - first_lengths).all()  # B and its [SEP]

    masked = data.mask_tokens(packed, rng, vocab_size=100)
    chosen = masked.mlm_labels != data.IGNORE
    assert (chosen.sum(axis=1) == round(55 * 0.15)).all()
    assert (masked.mlm_labels[chosen] == packed.input_ids[chosen]).all()
    assert (packed.input_ids[chosen] >= data.FIRST_ORDINARY_ID).all()  # specials and padding never chosen
    became_mask = (masked.input_ids[chosen] == data.MASK).mean()
    unchanged = (masked.input_ids[chosen] == packed.input_ids[chosen]).mean()
    assert 0.75 < became_mask < 0.85 and 0.07 < unchanged < 0.15
    assert (masked.input_ids[~chosen] == packed.input_ids[~chosen]).all()


def test_evaluation_examples_mask_every_chosen_token_and_are_fixed(corpus):
    train_lines, heldout = data.split_corpus(corpus)
    tokenizer = train_tokenizer(train_lines, 300)
    plain, masked = data.evaluation_examples(tokenizer, data.sentences_of(heldout), 32)
    again_plain, again = data.evaluation_examples(tokenizer, data.sentences_of(heldout), 32)
    np.testing.assert_array_equal(masked.input_ids, again.input_ids)
    np.testing.assert_array_equal(plain.sop_labels, again_plain.sop_labels)
    assert len(plain) == 2 * len(masked) and plain.sop_labels.mean() == 0.5
    in_order = plain.input_ids[: len(masked)]
    chosen = masked.mlm_labels != data.IGNORE
    assert chosen.any() and (masked.input_ids[chosen] == data.MASK).all()
    assert (in_order[~chosen] == masked.input_ids[~chosen]).all()
    assert (masked.mlm_labels[chosen] == in_order[chosen]).all()
