"""onnxsim as the oracle for graphs.passes.simplify on exported graphs: after our pass, onnxsim's constant folding
(its graph optimizer off) finds nothing more to fold, and stores no byte more; on the graph before our pass,
onnxsim leaves more nodes than we do. (onnxsim's optimizer is not the oracle: it rewrites MatMul + Add into Gemm
with Reshapes around it, 255 -> 303 nodes on the unrolled graph here.)"""
from __future__ import annotations

import onnx
import onnxsim
import pytest

from albert_export.checkpoint import from_pretrained
from albert_export.exporter import onnx_from_reference
from graphs.passes.simplify import simplify
from graphs.size import op_counts, stored_tensors, tensor_nbytes


def stored_bytes(model: onnx.ModelProto) -> int:
    return sum(tensor_nbytes(tensor) for _, tensor in stored_tensors(model))


@pytest.fixture(scope="module")
def reference():
    return from_pretrained(None, "question-answering")


@pytest.mark.parametrize("layers", ["unrolled", "loop"])
def test_onnxsim_finds_nothing_left_to_fold_and_weights_stay_once(reference, layers):
    exported = onnx_from_reference(reference, layers)
    ours = onnx.ModelProto()
    ours.CopyFrom(exported)
    simplify(ours)
    folded_again, checked = onnxsim.simplify(ours, perform_optimization=False)
    assert checked
    assert op_counts(folded_again) == op_counts(ours)
    assert stored_bytes(folded_again) == stored_bytes(ours)
    parameter_bytes = sum(p.numel() * p.element_size() for p in reference.parameters())
    assert stored_bytes(ours) <= parameter_bytes * 1.001  # each weight once (plus a few small constants)
    theirs, _ = onnxsim.simplify(exported, perform_optimization=False)
    assert sum(op_counts(ours).values()) < sum(op_counts(theirs).values())
