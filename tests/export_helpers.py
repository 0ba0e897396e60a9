"""Random-weight checkpoints for the export tests: transformers models saved with a real tokenizer."""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch

from tests.conftest import DATA

# vocab_size: the test tokenizer's 1000 SentencePiece pieces + [CLS] [SEP] <pad> [MASK] (export refuses fewer)
TINY = dict(vocab_size=1004, embedding_size=16, hidden_size=32, num_hidden_layers=4, num_hidden_groups=2,
            num_attention_heads=4, intermediate_size=37, max_position_embeddings=40, hidden_act="gelu_new")
LABELS = {"text-classification": 3, "token-classification": 5}


def quiet(message: str) -> None:
    """The export's progress callback, printing nothing."""


def hf_class(task: str):
    import transformers

    return getattr(transformers, {
        "fill-mask": "AlbertForMaskedLM", "text-classification": "AlbertForSequenceClassification",
        "token-classification": "AlbertForTokenClassification", "question-answering": "AlbertForQuestionAnswering",
        "multiple-choice": "AlbertForMultipleChoice", "feature-extraction": "AlbertModel",
        "pretraining": "AlbertForPreTraining",
    }[task])


@functools.lru_cache(maxsize=1)
def tokenizer_files() -> Path:
    from transformers import AlbertTokenizerFast

    directory = Path(tempfile.mkdtemp(prefix="albert-test-tokenizer-"))
    atexit.register(shutil.rmtree, directory, True)  # one per test process; each run used to leave its own
    AlbertTokenizerFast(vocab_file=str(DATA / "sentencepiece_test_model.model")).save_pretrained(directory)
    return directory


def save_checkpoint(directory: Path, task: str, seed: int = 0, **overrides):
    """A transformers model for `task` with every parameter perturbed (no zero biases or unit LayerNorms that
    would hide a wiring mistake), saved with the test tokenizer. Returns the transformers model (eval)."""
    from transformers import AlbertConfig

    settings = {**TINY, **overrides}
    if task in LABELS:
        settings.setdefault("num_labels", LABELS[task])
    torch.manual_seed(seed)
    model = hf_class(task)(AlbertConfig(**settings)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    for file in tokenizer_files().iterdir():
        shutil.copy(file, directory / file.name)
    return model


def hf_outputs(model, task: str, inputs: dict) -> dict:
    """transformers' outputs under this project's ONNX output names."""
    with torch.no_grad():
        out = model(**{name: torch.from_numpy(array) for name, array in inputs.items()})
    names = {
        "fill-mask": {"logits": "logits"}, "text-classification": {"logits": "logits"},
        "token-classification": {"logits": "logits"}, "multiple-choice": {"logits": "logits"},
        "question-answering": {"start_logits": "start_logits", "end_logits": "end_logits"},
        "feature-extraction": {"last_hidden_state": "last_hidden_state", "pooler_output": "pooler_output"},
        "pretraining": {"prediction_logits": "prediction_logits", "sop_logits": "sop_logits"},
    }[task]
    return {ours: getattr(out, theirs).numpy() for ours, theirs in names.items()}


def assert_transformers_loads_pretraining(directory: Path, ours, texts: list[str], pairs: list[str]):
    """transformers' AlbertForPreTraining and AlbertTokenizerFast load `directory` (only the tied decoder keys
    missing) and compute what our pretraining model computes. Returns the HF model and tokenizer."""
    from transformers import AlbertForPreTraining, AlbertTokenizerFast

    theirs, info = AlbertForPreTraining.from_pretrained(directory, output_loading_info=True)
    assert set(info["missing_keys"]) <= {"predictions.decoder.weight", "predictions.decoder.bias"}
    assert info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    hf_tokenizer = AlbertTokenizerFast.from_pretrained(directory)
    encoded = hf_tokenizer(texts, pairs, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = theirs.eval()(**encoded)
        actual = ours(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"])
    torch.testing.assert_close(actual["prediction_logits"], expected.prediction_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(actual["sop_logits"], expected.sop_logits, atol=1e-4, rtol=1e-4)
    return theirs, hf_tokenizer
