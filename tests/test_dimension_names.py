"""Bundles written before optimum's dimension names (dims "batch", "sequence", "choices" in the manifest) still
run: the runtime finds their sequence axes, and answers as it does for the same bundle with the new names."""
from __future__ import annotations

import json
import shutil

from runtime import pipeline
from runtime.bundle import MANIFEST, TensorSpec
from runtime.runner import sequence_axes

OLD_NAMES = {"batch_size": "batch", "sequence_length": "sequence", "num_choices": "choices"}


def test_sequence_axes_of_old_and_new_names():
    specs = [TensorSpec("logits", "float32", ["batch_size", "sequence_length", "vocab"]),
             TensorSpec("old", "float32", ["batch", "sequence", "vocab"]), TensorSpec("cls", "float32", ["batch", 3])]
    assert sequence_axes(specs) == {"logits": (1,), "old": (1,), "cls": ()}


def test_a_bundle_with_the_old_names_answers_as_with_the_new(handmade_bundle, tmp_path):
    bundle = handmade_bundle("feature-extraction")  # its output is cut back to each input's own length
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    manifest = json.loads((old / MANIFEST).read_text())
    assert manifest["outputs"][0]["dims"][:2] == ["batch_size", "sequence_length"]
    for spec in manifest["inputs"] + manifest["outputs"]:
        spec["dims"] = [OLD_NAMES.get(dim, dim) for dim in spec["dims"]]
    (old / MANIFEST).write_text(json.dumps(manifest))
    texts = ["Plants create energy.", "A sunny day, and a longer sentence than the first one."]
    ours = pipeline(str(old), batch_size=2)(texts)
    assert ours == pipeline(str(bundle), batch_size=2)(texts)
    assert len(ours[0][0]) < len(ours[1][0])
