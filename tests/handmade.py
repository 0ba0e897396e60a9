"""Tiny random-weight HF ALBERT models, and bundles written by hand from them (no albert_export involved).

`tiny_model(task)` builds the transformers model for a task on the shared SentencePiece tokenizer;
`make_bundle(directory, task)` exports it with torch.onnx.export (TorchScript exporter, opset 17, the ONNX
names of ../shared/DESIGN.md) and writes tokenizer.json, config.json and manifest.json with real sha256 sums.
`TorchBackend` runs the HF model behind the runtime's Backend protocol, so the heads can be checked against the
HF pipelines on identical numbers.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import (
    AlbertConfig,
    AlbertForMaskedLM,
    AlbertForMultipleChoice,
    AlbertForPreTraining,
    AlbertForQuestionAnswering,
    AlbertForSequenceClassification,
    AlbertForTokenClassification,
    AlbertModel,
    AlbertTokenizerFast,
)

from runtime.bundle import CONFIG, MANIFEST, MODEL, TOKENIZER, Manifest, TensorSpec, TokenizerSettings, sha256_file
from runtime.taskspec import INPUT_NAMES, TASKS, dynamic_axes, input_dims
from tests.conftest import DATA

SPIECE = DATA / "sentencepiece_test_model.model"
MAX_LENGTH = 128
SPECIAL_TOKENS = {"cls": "[CLS]", "sep": "[SEP]", "pad": "<pad>", "mask": "[MASK]", "unk": "<unk>"}
MODEL_CLASSES = {
    "fill-mask": AlbertForMaskedLM,
    "text-classification": AlbertForSequenceClassification,
    "token-classification": AlbertForTokenClassification,
    "question-answering": AlbertForQuestionAnswering,
    "multiple-choice": AlbertForMultipleChoice,
    "feature-extraction": AlbertModel,
    "pretraining": AlbertForPreTraining,
}


def hf_tokenizer() -> AlbertTokenizerFast:
    return AlbertTokenizerFast(vocab_file=str(SPIECE), model_max_length=MAX_LENGTH)


def runtime_tokenizer(hf: AlbertTokenizerFast) -> Tokenizer:
    return Tokenizer.from_str(hf.backend_tokenizer.to_str())


def tiny_config(**overrides) -> AlbertConfig:
    settings = dict(
        vocab_size=len(hf_tokenizer()),
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=MAX_LENGTH,
        pad_token_id=hf_tokenizer().pad_token_id,
        initializer_range=0.5,  # peaked distributions, so a 1e-4 score tolerance means something
        attn_implementation="eager",
    )
    settings.update(overrides)
    return AlbertConfig(**settings)


def tiny_model(task: str, seed: int = 0, **config) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = MODEL_CLASSES[task](tiny_config(**config)).eval()
    return model


class TorchBackend:
    """The HF torch model behind the runtime's Backend protocol (test-only)."""

    def __init__(self, model: torch.nn.Module, task: str):
        self.model, self.task = model, task
        self.input_names = list(INPUT_NAMES)
        self.output_names = list(TASKS[task].outputs)
        self.calls: list[tuple[int, ...]] = []  # input shapes seen, to check batching

    @torch.no_grad()
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(tuple(inputs["input_ids"].shape))
        outputs = self.model(**{k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in inputs.items()})
        return {name: outputs[name].numpy() for name in self.output_names}


class _OnnxWrapper(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, outputs: tuple[str, ...]):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, input_ids, attention_mask, token_type_ids):
        result = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return tuple(result[name] for name in self.outputs)


def make_bundle(directory: Path, task: str, model: torch.nn.Module | None = None, **config) -> Path:
    """Write a complete bundle for `task` into directory (created) and return it."""
    spec = TASKS[task]
    model = model if model is not None else tiny_model(task, **config)
    directory.mkdir(parents=True, exist_ok=True)
    dims = input_dims(task)
    shape = (2, 3, 7) if spec.multiple_choice else (2, 7)
    example = (
        torch.randint(5, 900, shape),
        torch.ones(shape, dtype=torch.int64),
        torch.zeros(shape, dtype=torch.int64),
    )
    dynamic = {name: dict(enumerate(dims)) for name in INPUT_NAMES}
    for name, output_dims in zip(spec.outputs, spec.output_dims):
        dynamic[name] = dynamic_axes(output_dims)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript tracer's notes about Python booleans
        torch.onnx.export(
            _OnnxWrapper(model, spec.outputs),
            example,
            str(directory / MODEL),
            input_names=list(INPUT_NAMES),
            output_names=list(spec.outputs),
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )
    hf = hf_tokenizer()
    runtime_tokenizer(hf).save(str(directory / TOKENIZER))
    (directory / CONFIG).write_text(model.config.to_json_string())
    manifest = Manifest(
        task=task,
        layers="unrolled",
        precision="fp32",
        opset=17,
        inputs=[TensorSpec(name, "int64", list(dims)) for name in INPUT_NAMES],
        outputs=[
            TensorSpec(name, "float32", [int(d) if d.isdigit() else d for d in output_dims])
            for name, output_dims in zip(spec.outputs, spec.output_dims)
        ],
        tokenizer=TokenizerSettings(max_length=MAX_LENGTH, do_lower_case=True, special_tokens=dict(SPECIAL_TOKENS)),
        files={name: sha256_file(directory / name) for name in (MODEL, TOKENIZER, CONFIG)},
        producer={"name": "tests/handmade.py", "version": "0"},
    )
    (directory / MANIFEST).write_text(manifest.to_json())
    return directory


def manifest_dict(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST).read_text())


