"""devtools/serve_bench.py runs (--quick): the in-process row and a server row per concurrency, every answer
equal, no errors, mean batch and CPU per request printed. Its timings are not asserted (shared machine)."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.test_serving import ROOT


def test_serve_bench_quick_runs_and_every_answer_is_equal(handmade_bundle):
    bundle = handmade_bundle("fill-mask")
    result = subprocess.run([sys.executable, "-m", "devtools.serve_bench", "--quick", "--bundle", str(bundle)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r[0] for r in rows[1:]] == ["| pipeline() in-process, one by one"] + ["| albert-serve, window batching"] * 2
    assert [r[1] for r in rows[1:]] == ["1", "1", "8"]
    for r in rows[1:]:
        assert r[6] == "0" and r[7] == "32/32", r  # errors, answers equal
        assert float(r[8]) >= 1.0 and float(r[9]) > 0, r  # mean batch, CPU ms per request
    assert rows[1][10] == "— |" and all(float(r[10].rstrip(" |")) > 0 for r in rows[2:]), rows  # the load client's
    assert result.stdout.startswith("CPU: ")


def test_serve_bench_peers_and_the_long_request_table_answer_what_pipeline_does(handmade_bundle):
    """LitServe and the real Triton (scripts/setup.sh installs both) serve the same QA bundle beside albert-serve;
    the long request's table reports small requests answered meanwhile, each equal to pipeline()'s answer."""
    bundle = handmade_bundle("question-answering")
    result = subprocess.run([sys.executable, "-m", "devtools.serve_bench", "--quick", "--bundle", str(bundle),
                             "--peers", "litserve,triton", "--long-chars", "3000"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    rows = [line.split(" | ") for line in lines if line.count(" | ") == 10]
    assert [(r[0], r[1]) for r in rows[1:]] == [
        ("| pipeline() in-process, one by one", "1"), ("| albert-serve, window batching", "1"),
        ("| albert-serve, window batching", "8"), ("| LitServe, 1 worker(s), pipeline() per request", "1"),
        ("| LitServe, 1 worker(s), pipeline() per request", "8"), ("| Triton 2.51, --triton-backend python", "1"),
        ("| Triton 2.51, --triton-backend python", "8")], result.stdout
    for r in rows[1:]:
        assert r[6] == "0" and r[7] == "32/32", r
    assert float(rows[-1][8]) >= 1.0  # Triton: requests per execute()
    long = next(line.split(" | ") for line in lines if line.startswith("| long QA"))
    assert long[1] == "200" and int(long[3]) >= 1 and long[6] == f"{long[3]}/{long[3]} |", long


def test_the_mid_size_model_has_its_shape_the_default_tokenizer_and_answers_as_transformers(tmp_path):
    """--model mid: MID_SIZE's layers on the default model's config and tokenizer, exported; its bundle's answers
    to the bench's QA requests are transformers' pipeline's on the checkpoint it was exported from."""
    import json

    import transformers

    from albert_export.checkpoint import default_model_dir
    from devtools.serve_bench import MID_SIZE, model_bundle, requests_for
    from runtime import pipeline
    from tests.test_runtime_heads import assert_same

    bundle = model_bundle("mid", "question-answering", tmp_path)
    config = json.loads((bundle / "config.json").read_text())
    default = json.loads((default_model_dir() / "config.json").read_text())
    assert {key: config[key] for key in MID_SIZE} == MID_SIZE and config["vocab_size"] == default["vocab_size"]
    assert (bundle / "tokenizer.json").read_bytes() == (default_model_dir() / "tokenizer.json").read_bytes()
    theirs = transformers.pipeline("question-answering", model=str(tmp_path / "checkpoint-mid"))
    ours = pipeline(bundle)
    for request in requests_for("question-answering", 4):
        assert_same(ours(**request), theirs(**request))
