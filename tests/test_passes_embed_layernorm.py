"""com.microsoft EmbedLayerNormalization on exported models (unrolled and Loop)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from graphs.passes.embed_layernorm import fuse_embed_layernorm
from graphs.passes.simplify import simplify
from graphs.size import op_counts
from tests.passes_graphs import run, unique_initializer_bytes
from tests.test_passes_pipeline import exported, token_feeds


def assert_same_token_outputs(before: onnx.ModelProto, after: onnx.ModelProto, choices: int | None = None) -> None:
    for batch, seq in ((1, 7), (3, 33), (2, 1)):
        inputs = token_feeds(batch, seq, choices)
        for want, got in zip(run(before, inputs), run(after, inputs)):
            np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("layers", ["unrolled", "loop"])
@pytest.mark.parametrize("task", ["question-answering", "multiple-choice"])
def test_the_embeddings_fuse_into_one_op(task, layers):
    model, _ = exported(task, layers)
    simplify(model)
    before = onnx.ModelProto()
    before.CopyFrom(model)

    report = fuse_embed_layernorm(model)

    counts = op_counts(model)
    assert report == {"fused": 1, "refused": {}}
    assert counts["EmbedLayerNormalization"] == 1
    assert counts["Range"] == 0
    assert counts["LayerNormalization"] == op_counts(before)["LayerNormalization"] - 1
    assert counts["Gather"] == op_counts(before)["Gather"] - 4  # three lookups and the sequence length
    assert unique_initializer_bytes(model) <= 1.02 * unique_initializer_bytes(before)
    assert_same_token_outputs(before, model, 3 if task == "multiple-choice" else None)


def test_an_embedding_lookup_read_elsewhere_is_not_fused():
    model, _ = exported("question-answering", "unrolled")
    simplify(model)
    lookup = next(n for n in model.graph.node if n.op_type == "Gather" and "word_embeddings" in n.input[0])
    model.graph.output.append(helper.make_empty_tensor_value_info(lookup.output[0]))
    before = onnx.ModelProto()
    before.CopyFrom(model)

    report = fuse_embed_layernorm(model)

    assert report == {"fused": 0, "refused": {f"intermediate {lookup.output[0]!r} is also read outside the "
                                              "embeddings": 1}}
    assert op_counts(model) == op_counts(before)
