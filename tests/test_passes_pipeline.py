"""optimize(model, profile): each profile on unrolled and Loop graphs keeps outputs and weight bytes."""
from __future__ import annotations

import pytest

from graphs.pipeline import PROFILES, OptimizeError, optimize
from graphs.walk import op_counts
from tests.passes_graphs import LAYOUTS, assert_same_outputs, group_cached, unique_initializer_bytes

EXPECTED_OPS = {  # per layer, on a gelu_new group at opset 17
    "none": {"LayerNormalization": 2, "Tanh": 1},
    "portable": {"LayerNormalization": 2, "Tanh": 1},  # Gelu needs opset 20
    "onnxruntime": {"LayerNormalization": 2, "FastGelu": 1},
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_keep_outputs_and_weights(layout, profile):
    model = LAYOUTS[layout](group_cached(fold_constants=False), 3)
    layers = 3 if layout == "unrolled" else 1

    optimized, report = optimize(model, profile)

    assert list(report)[:2] == ["dedupe", "simplify"]
    counts = op_counts(optimized)
    for op, per_layer in EXPECTED_OPS[profile].items():
        assert counts[op] == per_layer * layers, op
    assert counts["Transpose"] == 4 * layers  # the activations' head transposes; no weight transposes
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
