"""Weights once: on the albert-base-v2 shape (small vocab) and a two-group config, in both layer modes, the file
is at most 1.02 x the unique parameter bytes, and hashing the initializers finds no tensor stored twice (nor
as a transpose). External data past a (lowered) threshold."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from albert_export import from_pretrained
from albert_export.bundle_writer import EXTERNAL_DATA
from albert_export.exporter import export
from albert_export.validate import onnx_session, reference_outputs, validation_inputs
from graphs.size import array_digest, stored_tensors, storage_report
from onnx import numpy_helper
from runtime.bundle import load_bundle
from tests.export_helpers import quiet, save_checkpoint

torch.set_num_threads(1)

BASE_V2_SHAPE = dict(vocab_size=1004, embedding_size=128, hidden_size=768, num_hidden_layers=12,
                     num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512)


def unique_parameter_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())  # tied parameters are listed once


@pytest.mark.parametrize("task, groups", [("fill-mask", 1), ("pretraining", 2)])
def test_weights_are_stored_once_in_both_modes(task, groups, tmp_path):
    directory = tmp_path / "checkpoint"
    save_checkpoint(directory, task, num_hidden_groups=groups, **BASE_V2_SHAPE)
    reference = from_pretrained(directory, task)
    parameter_bytes = unique_parameter_bytes(reference)
    parameter_digests = set()
    for parameter in reference.parameters():
        array = parameter.detach().numpy()
        parameter_digests |= {array_digest(array), array_digest(array.T)} if array.ndim == 2 else {array_digest(array)}
    inputs = validation_inputs((2, 11), 1000, 2)
    expected = reference_outputs(reference, inputs)
    for layers in ("unrolled", "loop"):
        bundle = export(directory, task, tmp_path / layers, layers=layers, validate=False, log=quiet)
        file_bytes = (bundle / "model.onnx").stat().st_size
        assert file_bytes <= 1.02 * parameter_bytes, (layers, file_bytes / parameter_bytes)
        graph = onnx.load(str(bundle / "model.onnx"))
        report = storage_report(graph)
        assert report.weights_once, (report.duplicates, report.transposed_duplicates)
        weights = [numpy_helper.to_array(t) for _, t in stored_tensors(graph)]
        weights = [w for w in weights if w.size >= 16]  # the rest are shape constants and scalars
        assert all(array_digest(w) in parameter_digests for w in weights)  # each one is a checkpoint weight
        assert sum(w.nbytes for w in weights) <= parameter_bytes
        session = onnx_session(bundle / "model.onnx", threads=1)
        names = list(expected)
        for name, actual in zip(names, session.run(names, inputs)):
            np.testing.assert_allclose(actual, expected[name], atol=1e-4, rtol=0, err_msg=f"{layers} {name}")


def test_external_data_past_the_threshold(tmp_path):
    directory = tmp_path / "checkpoint"
    save_checkpoint(directory, "fill-mask")
    bundle = export(directory, "fill-mask", tmp_path / "bundle", layers="loop", external_data_threshold=20_000,
                    log=quiet)
    loaded = load_bundle(bundle)  # checksums of both files verified
    manifest = loaded.manifest
    assert sorted(manifest.files) == ["config.json", "model.onnx", EXTERNAL_DATA, "special_tokens_map.json",
                                      "spiece.model", "tokenizer.json", "tokenizer_config.json"]
    data_bytes = (bundle / EXTERNAL_DATA).stat().st_size
    assert data_bytes >= 1000 * 16 * 4 > (bundle / "model.onnx").stat().st_size  # the word embeddings moved out
    weights = (bundle / "model.onnx").stat().st_size + data_bytes
    assert loaded.external_data == {EXTERNAL_DATA} and loaded.model_bytes == weights
    assert load_bundle(bundle, verify=False).model_bytes == weights  # found in model.onnx when not verified
    assert max(manifest.validation.max_abs_diff.values()) <= 1e-4  # validated from the two files
    small = export(directory, "fill-mask", tmp_path / "small", validate=False, log=quiet)
    assert not (small / EXTERNAL_DATA).exists()
