"""optimize(model, profile): each profile on unrolled and Loop graphs keeps outputs and weight bytes."""
from __future__ import annotations

import pytest

from graphs.pipeline import OptimizeError, optimize
from graphs.size import op_counts
from tests.passes_graphs import LAYOUTS, assert_same_outputs, group_cached, unique_initializer_bytes

EXPECTED_OPS = {  # per layer, on a gelu_new group at opset 17 traced without constant folding
    "none": {"LayerNormalization": 2, "Tanh": 1, "Transpose": 10},  # 6 of the weights, 4 of the activations
    "portable": {"LayerNormalization": 2, "Tanh": 1},  # Gelu needs opset 20
    "onnxruntime": {"Attention": 1, "FastGelu": 1, "LayerNormalization": 2, "Softmax": 0, "Tanh": 0, "MatMul": 3,
                    "Transpose": 0},
    "onnxruntime-all": {"SkipLayerNormalization": 2, "Attention": 1, "FastGelu": 1,
                        "LayerNormalization": 0, "Softmax": 0, "MatMul": 3, "Transpose": 0},
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("profile", EXPECTED_OPS)
def test_profiles_keep_outputs_and_weights(layout, profile):
    model = LAYOUTS[layout](group_cached(fold_constants=False), 3)
    layers = 3 if layout == "unrolled" else 1

    optimized, report = optimize(model, profile)

    assert list(report)[:2] == ([] if profile == "none" else ["dedupe", "simplify"])
    counts = op_counts(optimized)
    for op, per_layer in EXPECTED_OPS[profile].items():
        assert counts[op] == per_layer * layers, op
    if profile == "portable":
        assert counts["Transpose"] == 4 * layers  # the activations' head transposes; weights transposed once
    assert unique_initializer_bytes(optimized) <= 1.02 * unique_initializer_bytes(model)
    assert_same_outputs(model, optimized)


def test_the_input_model_is_not_changed():
    model = LAYOUTS["unrolled"](group_cached(), 2)
    before = model.SerializeToString()
    optimize(model, "onnxruntime")
    assert model.SerializeToString() == before


def test_unknown_profile_names_the_choices():
    with pytest.raises(OptimizeError, match="none, portable, onnxruntime"):
        optimize(LAYOUTS["unrolled"](group_cached(), 1), "fast")


# --- on whole exported models (albert_export's pieces, assembled unrolled or as Loops) ---------------------

def exported(task: str, layers: str, opset: int = 17):
    import torch

    from albert_export.config import AlbertConfig
    from albert_export.exporter import onnx_from_reference
    from albert_export.modeling import model_for_task

    torch.manual_seed(0)
    config = AlbertConfig(vocab_size=50, embedding_size=16, hidden_size=32, num_hidden_layers=4, num_hidden_groups=2,
                          num_attention_heads=4, intermediate_size=37, max_position_embeddings=40,
                          hidden_act="gelu_new")
    return onnx_from_reference(model_for_task(config, task).eval(), layers, opset), config


def token_feeds(batch: int, seq: int, choices: int | None = None) -> dict:
    import numpy as np

    rng = np.random.default_rng(batch * 100 + seq)
    shape = (batch, seq) if choices is None else (batch, choices, seq)
    ids = rng.integers(0, 50, shape)
    mask = np.ones_like(ids)
    mask[-1, ..., seq // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": (np.arange(seq) >= seq // 3) * mask}


@pytest.mark.parametrize("layers", ["unrolled", "loop"])
@pytest.mark.parametrize("task", ["question-answering", "fill-mask"])
def test_exported_models_fuse_every_layer_and_keep_outputs(task, layers):
    import numpy as np

    from tests.passes_graphs import run

    model, config = exported(task, layers)
    before_bytes = unique_initializer_bytes(model)
    for profile in EXPECTED_OPS:
        optimized, report = optimize(model, profile)
        counts = op_counts(optimized)
        if profile.startswith("onnxruntime"):
            groups = config.num_hidden_groups
            assert counts["Attention"] == (config.num_hidden_layers if layers == "unrolled" else groups)
            assert counts["Softmax"] == 0
            if profile == "onnxruntime-all":
                assert counts["SkipLayerNormalization"] == 2 * counts["Attention"]
                assert counts["EmbedLayerNormalization"] == 1
            assert counts["FastGelu"] == counts["Attention"] + (task == "fill-mask")
            qkv = [t for t in optimized.graph.initializer if list(t.dims) == [32, 96]]
            assert len(qkv) == groups  # one per distinct layer group, in the outer graph
        assert unique_initializer_bytes(optimized) <= 1.02 * before_bytes, profile
        for batch, seq in ((1, 7), (3, 33)):
            inputs = token_feeds(batch, seq)
            for want, got in zip(run(model, inputs), run(optimized, inputs)):
                np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5, err_msg=f"{profile}")


# --- albert_export.export(..., optimize=...) / albert-export --optimize ------------------------------------

@pytest.mark.parametrize("layers", ["unrolled", "loop"])
def test_export_with_optimize_writes_a_validated_fused_bundle(tmp_path, layers):
    import json

    import onnx

    from albert_export.cli import main
    from tests.export_helpers import save_checkpoint

    save_checkpoint(tmp_path / "checkpoint", "question-answering", vocab_size=1100)
    bundle = tmp_path / "bundle"
    status = main(["--model", str(tmp_path / "checkpoint"), "--task", "qa", "--layers", layers,
                   "--optimize", "onnxruntime", "--output", str(bundle)])

    assert status == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["extra"]["optimize"]["profile"] == "onnxruntime"
    assert manifest["extra"]["optimize"]["passes"]["attention"]["fused"] == (4 if layers == "unrolled" else 2)
    assert manifest["validation"]["max_abs_diff"]
    counts = op_counts(onnx.load(str(bundle / "model.onnx")))
    assert counts["Attention"] == (4 if layers == "unrolled" else 2) and counts["Softmax"] == 0


def test_export_rejects_an_unknown_profile_before_tracing(tmp_path):
    from albert_export.exporter import ExportOptionError, export

    with pytest.raises(ExportOptionError, match="none, portable, onnxruntime"):
        export(tmp_path / "missing-checkpoint", "question-answering", tmp_path / "out", optimize="fastest")


@pytest.mark.parametrize("layers", ["unrolled", "loop"])
def test_portable_graphs_still_build_a_tensorrt_plan(tmp_path, layers):
    """The portable profile is the one TensorRT reads: its Loop bodies and folded constants must parse."""
    import onnx

    from albert_export.engine import engine_from_onnx, parse_shapes

    model, _ = exported("question-answering", layers)
    optimized, _ = optimize(model, "portable")
    path = tmp_path / "model.onnx"
    onnx.save(optimized, str(path))

    plan, _ = engine_from_onnx(path, parse_shapes("1x1:2x16:4x32"), log=lambda message: None)

    assert len(plan) > 0
