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
        assert float(r[8]) >= 1.0 and float(r[9].rstrip(" |")) > 0, r  # mean batch, CPU ms per request
    assert result.stdout.startswith("CPU: ")
