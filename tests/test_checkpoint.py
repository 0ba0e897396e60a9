"""Checkpoints: safetensors and weights-only .bin directories, head initialization, and one clear error per fault."""
from __future__ import annotations

import pickle
import warnings

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from albert_export import CheckpointError, ConfigError, from_pretrained
from albert_export.checkpoint import HeadInitializedWarning, UnusedWeightsWarning, resolve_checkpoint

torch.set_num_threads(1)

TINY = dict(vocab_size=120, embedding_size=16, hidden_size=32, num_attention_heads=4, intermediate_size=48,
            num_hidden_layers=2, max_position_embeddings=40)
HEAD_KEYS = {  # task -> the keys a bare AlbertModel checkpoint lacks
    "fill-mask": ["predictions.bias", "predictions.LayerNorm.weight", "predictions.LayerNorm.bias",
                  "predictions.dense.weight", "predictions.dense.bias"],
    "pretraining": ["predictions.bias", "predictions.LayerNorm.weight", "predictions.LayerNorm.bias",
                    "predictions.dense.weight", "predictions.dense.bias", "sop_classifier.classifier.weight",
                    "sop_classifier.classifier.bias"],
    "text-classification": ["classifier.weight", "classifier.bias"],
    "token-classification": ["classifier.weight", "classifier.bias"],
    "question-answering": ["qa_outputs.weight", "qa_outputs.bias"],
    "multiple-choice": ["classifier.weight", "classifier.bias"],
}
INPUT_IDS = torch.tensor([[2, 15, 77, 9, 3, 0], [2, 30, 3, 0, 0, 0]])
ATTENTION_MASK = (INPUT_IDS != 0).long()


def save_hf(directory, cls=transformers.AlbertForPreTraining, safe=True, seed=0, **overrides):
    torch.manual_seed(seed)
    model = cls(transformers.AlbertConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():  # non-trivial biases and LayerNorms, so a skipped copy shows
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape) * 0.05)
    model.save_pretrained(directory, safe_serialization=safe)
    return model


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("base")
    save_hf(directory, transformers.AlbertModel)
    return directory


@pytest.fixture(scope="module")
def pretraining_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pretraining")
    save_hf(directory)
    return directory


def load_quietly(path, task):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean checkpoint for its own head loads without any warning
        return from_pretrained(str(path), task)


def assert_same_weights(first, second):
    one, two = first.state_dict(), second.state_dict()
    assert one.keys() == two.keys()
    for key in one:
        assert torch.equal(one[key], two[key]), key


def test_safetensors_directory_loads_every_weight(tmp_path):
    reference = save_hf(tmp_path, transformers.AlbertForMaskedLM)
    assert (tmp_path / "model.safetensors").exists()
    model = load_quietly(tmp_path, "fill-mask")
    assert not model.training
    expected = reference.state_dict()
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[key]), key


def test_bin_directory_loads_like_safetensors(tmp_path):
    save_hf(tmp_path / "safe", transformers.AlbertForSequenceClassification, num_labels=3)
    save_hf(tmp_path / "bin", transformers.AlbertForSequenceClassification, safe=False, num_labels=3)
    assert (tmp_path / "bin" / "pytorch_model.bin").exists()
    assert not (tmp_path / "bin" / "model.safetensors").exists()
    assert_same_weights(load_quietly(tmp_path / "safe", "text-classification"),
                        load_quietly(tmp_path / "bin", "text-classification"))


class Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_bin_with_pickled_object_is_refused_not_executed(tmp_path):
    save_hf(tmp_path, transformers.AlbertForQuestionAnswering, safe=False)
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    marker = tmp_path / "executed"
    state["qa_outputs.extra"] = Payload(marker)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with open(tmp_path / "unsafe-check.pkl", "wb") as handle:  # the payload really executes when unpickled
        pickle.dump(Payload(tmp_path / "control"), handle)
    with open(tmp_path / "unsafe-check.pkl", "rb") as handle:
        pickle.load(handle).close()
    assert (tmp_path / "control").exists()

    with pytest.raises(CheckpointError) as refused:
        from_pretrained(str(tmp_path), "question-answering")
    assert not marker.exists()
    assert str(refused.value) == (
        f"{tmp_path / 'pytorch_model.bin'} asks to load the Python global io.open; albert-export never unpickles code "
        "(weights are read with torch.load(weights_only=True) or from model.safetensors), so it refused the file: "
        "convert the checkpoint to model.safetensors where you trust its source")
    assert "weights_only=False" not in str(refused.value)


def test_safetensors_preferred_over_bin(tmp_path):
    reference = save_hf(tmp_path, transformers.AlbertForTokenClassification, num_labels=2)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    model = load_quietly(tmp_path, "token-classification")
    assert torch.equal(model.classifier.weight, reference.classifier.weight)


@pytest.mark.parametrize("task", list(HEAD_KEYS))
def test_base_checkpoint_under_a_head_initializes_it_deterministically(base_dir, task):
    torch.manual_seed(1)
    with pytest.warns(UserWarning) as first_warnings:
        first = from_pretrained(str(base_dir), task)
    torch.manual_seed(2)  # the global seed must not matter
    with pytest.warns(UserWarning) as second_warnings:
        second = from_pretrained(str(base_dir), task)
    assert [str(w.message) for w in second_warnings] == [str(w.message) for w in first_warnings]
    assert_same_weights(first, second)

    categories = {w.category: str(w.message) for w in first_warnings}
    pooled = task in ("pretraining", "text-classification", "multiple-choice")
    assert set(categories) == ({HeadInitializedWarning} if pooled else {HeadInitializedWarning, UnusedWeightsWarning})
    if not pooled:
        assert categories[UnusedWeightsWarning].endswith(f"not used by the {task} model: albert.pooler.bias, "
                                                         "albert.pooler.weight")
    message = categories[HeadInitializedWarning]
    for key in HEAD_KEYS[task]:
        assert key in message, key
    assert "albert.embeddings" not in message and "albert.encoder" not in message

    backbone = load_file(base_dir / "model.safetensors")
    state = first.state_dict()
    for key, tensor in backbone.items():
        if f"albert.{key}" in state:
            assert torch.equal(state[f"albert.{key}"], tensor), key
    if hasattr(first, "predictions"):
        assert first.predictions.decoder.weight is first.albert.embeddings.word_embeddings.weight
        assert torch.count_nonzero(first.predictions.bias) == 0


def test_initialized_head_follows_transformers_init(base_dir):
    with pytest.warns(HeadInitializedWarning):
        model = from_pretrained(str(base_dir), "text-classification")
    assert torch.count_nonzero(model.classifier.bias) == 0
    std = model.classifier.weight.std().item()
    assert 0.01 < std < 0.03  # initializer_range 0.02


def test_pretraining_checkpoint_under_qa_warns_about_unused_weights(pretraining_dir):
    with pytest.warns(UserWarning) as caught:
        from_pretrained(str(pretraining_dir), "qa")
    unused = [str(w.message) for w in caught if w.category is UnusedWeightsWarning]
    assert "not used by the question-answering model" in unused[0]
    assert len(unused) == 1
    for key in ("predictions.dense.weight", "predictions.LayerNorm.bias", "predictions.bias",
                "sop_classifier.classifier.weight", "albert.pooler.weight"):
        assert key in unused[0], key
    initialized = [str(w.message) for w in caught if w.category is HeadInitializedWarning]
    assert len(initialized) == 1 and "qa_outputs.weight, qa_outputs.bias" in initialized[0]


def test_misshaped_key_is_named_with_both_shapes(tmp_path):
    save_hf(tmp_path, transformers.AlbertForSequenceClassification, num_labels=3)
    state = load_file(tmp_path / "model.safetensors")
    state["classifier.weight"] = torch.zeros(5, TINY["hidden_size"])
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"classifier.weight \(checkpoint \(5, 32\), model \(3, 32\)\)"):
        from_pretrained(str(tmp_path), "text-classification")


def test_missing_backbone_key_is_an_error(tmp_path):
    save_hf(tmp_path, transformers.AlbertForMaskedLM)
    state = load_file(tmp_path / "model.safetensors")
    del state["albert.encoder.embedding_hidden_mapping_in.weight"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError,
                       match="the checkpoint lacks ALBERT weights: albert.encoder.embedding_hidden_mapping_in.weight$"):
        from_pretrained(str(tmp_path), "fill-mask")


def test_directory_without_weights(tmp_path):
    transformers.AlbertConfig(**TINY).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="has no weights: expected model.safetensors or pytorch_model.bin"):
        from_pretrained(str(tmp_path), "fill-mask")


def test_directory_without_config(tmp_path, pretraining_dir):
    (tmp_path / "model.safetensors").write_bytes((pretraining_dir / "model.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="config.json does not exist; an ALBERT checkpoint needs a config.json"):
        from_pretrained(str(tmp_path), "fill-mask")


def test_corrupt_safetensors(tmp_path):
    transformers.AlbertConfig(**TINY).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="model.safetensors cannot be read .*re-save the checkpoint"):
        from_pretrained(str(tmp_path), "fill-mask")


@pytest.mark.parametrize("name", ["./no/such/dir", "/no/such/dir", "~/no-such-albert-dir"])
def test_nonexistent_path(name):
    with pytest.raises(CheckpointError, match="does not exist"):
        from_pretrained(name, "fill-mask")


def test_hub_id_offline_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # so the id is not a local directory by accident
    with pytest.raises(CheckpointError) as caught:
        resolve_checkpoint("someone/albert-tiny-test")
    text = str(caught.value)
    assert "'someone/albert-tiny-test' is not a local directory" in text
    assert "HF_HUB_OFFLINE" in text and "not in the local cache" in text
    with pytest.raises(CheckpointError, match="someone/albert-tiny-test"):
        from_pretrained("someone/albert-tiny-test", "fill-mask")


def test_file_instead_of_directory(pretraining_dir):
    with pytest.raises(CheckpointError, match="model.safetensors is a file; pass the checkpoint directory"):
        from_pretrained(str(pretraining_dir / "model.safetensors"), "fill-mask")


@pytest.mark.parametrize("task", ["fill-mask", "pretraining"])
def test_decoder_is_tied_to_word_embeddings(pretraining_dir, task):
    reference = transformers.AlbertForPreTraining.from_pretrained(pretraining_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fill-mask does not use the pooler and SOP weights
        model = from_pretrained(str(pretraining_dir), task)
    embeddings = model.albert.embeddings.word_embeddings.weight
    assert model.predictions.decoder.weight is embeddings
    assert torch.equal(embeddings, reference.albert.embeddings.word_embeddings.weight)
    assert torch.equal(model.predictions.decoder.bias, reference.predictions.bias)
    assert model.predictions.decoder.bias is model.predictions.bias


def test_untied_decoder_is_loaded_not_tied(tmp_path):
    reference = save_hf(tmp_path, transformers.AlbertForMaskedLM, tie_word_embeddings=False)
    model = load_quietly(tmp_path, "fill-mask")
    assert torch.equal(model.predictions.decoder.weight, reference.predictions.decoder.weight)
    assert not torch.equal(model.predictions.decoder.weight, model.albert.embeddings.word_embeddings.weight)
    with torch.no_grad():
        expected = reference(INPUT_IDS, attention_mask=ATTENTION_MASK).logits
        actual = model(INPUT_IDS, attention_mask=ATTENTION_MASK)["logits"]
    assert (expected - actual).abs().max().item() <= 1e-5


def test_untied_checkpoint_without_decoder_initializes_it_and_warns(tmp_path):
    save_hf(tmp_path, transformers.AlbertForMaskedLM, tie_word_embeddings=False)
    state = load_file(tmp_path / "model.safetensors")
    del state["predictions.decoder.weight"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(HeadInitializedWarning, match="predictions.decoder.weight"):
        from_pretrained(str(tmp_path), "fill-mask")


def test_task_aliases_and_unknown_task(pretraining_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert from_pretrained(str(pretraining_dir), "mlm").task == "fill-mask"
    with pytest.raises(ValueError, match="summarization"):
        from_pretrained(str(pretraining_dir), "summarization")


def test_classifier_dropout_none_loads_as_transformers_does(tmp_path):
    reference = save_hf(tmp_path, transformers.AlbertForTokenClassification, num_labels=4,
                        classifier_dropout_prob=None)
    model = load_quietly(tmp_path, "ner")
    assert model.config.classifier_dropout_prob is None
    with torch.no_grad():
        expected = reference(INPUT_IDS, attention_mask=ATTENTION_MASK).logits
        actual = model(INPUT_IDS, attention_mask=ATTENTION_MASK)["logits"]
    assert (expected - actual).abs().max().item() <= 1e-5


def test_tied_decoder_in_checkpoint_does_not_override_word_embeddings(tmp_path):
    """As in transformers: with tie_word_embeddings the decoder is the embedding matrix, whatever the file says."""
    reference = save_hf(tmp_path, transformers.AlbertForMaskedLM)
    state = load_file(tmp_path / "model.safetensors")
    state["predictions.decoder.weight"] = torch.randn(TINY["vocab_size"], TINY["embedding_size"])
    state["predictions.decoder.bias"] = torch.randn(TINY["vocab_size"])
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = load_quietly(tmp_path, "fill-mask")
    assert torch.equal(model.predictions.decoder.weight, reference.albert.embeddings.word_embeddings.weight)
    assert torch.equal(model.predictions.decoder.bias, reference.predictions.bias)


def test_multiple_choice_needs_a_choices_dimension(pretraining_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = from_pretrained(str(pretraining_dir), "multiple-choice")
    with pytest.raises(ValueError, match=r"inputs are \(batch, choices, sequence\); got shape \(2, 6\)"):
        model(INPUT_IDS)
