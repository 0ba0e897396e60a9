"""The runtime works where torch, onnx and transformers cannot be imported (nor the build-side packages).

A sitecustomize.py puts an import hook first on sys.meta_path in the child interpreter; the same hook is
shown to stop `import torch` there, so these tests would fail if the runtime needed any of them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import pipeline

REPO = Path(__file__).resolve().parents[1]
SEED = "Plants create [MASK] through photosynthesis."
BLOCKED = ("torch", "onnx", "transformers", "albert_export", "graphs", "calibration")
HOOK = f"""
import sys

class _ForbiddenImports:
    blocked = {BLOCKED!r}

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.blocked:
            raise ImportError(f"importing {{name}} is forbidden here: the runtime must not need it")
        return None

sys.meta_path.insert(0, _ForbiddenImports())
"""


@pytest.fixture(scope="module")
def guarded_env(tmp_path_factory):
    site = tmp_path_factory.mktemp("guard")
    (site / "sitecustomize.py").write_text(HOOK)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]), OMP_NUM_THREADS="1")
    return env


def child(env, args, stdin=None):
    return subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


@pytest.mark.parametrize("module", ["torch", "onnx", "transformers", "albert_export"])
def test_the_guard_really_forbids(guarded_env, module):
    result = child(guarded_env, ["-c", f"import {module}"])
    assert result.returncode != 0 and "is forbidden here" in result.stderr


def test_pipeline_without_torch_onnx_transformers(guarded_env, handmade_bundle):
    bundle = handmade_bundle("fill-mask")
    code = (
        "import json, sys\n"
        "from runtime import pipeline\n"
        f"print(json.dumps(pipeline({str(bundle)!r})({SEED!r}, top_k=3)))\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in " + repr(BLOCKED) + ")))\n"
    )
    result = child(guarded_env, ["-c", code])
    assert result.returncode == 0, result.stderr
    answer, loaded = result.stdout.splitlines()
    assert json.loads(answer) == json.loads(json.dumps(pipeline(bundle)(SEED, top_k=3)))
    assert json.loads(loaded) == []


def test_albert_run_without_torch_onnx_transformers(guarded_env, handmade_bundle):
    bundle = handmade_bundle("fill-mask")
    result = child(guarded_env, ["-m", "runtime.cli", str(bundle)], stdin=SEED + "\n")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [json.loads(json.dumps(pipeline(bundle)(SEED)))]
    result = child(guarded_env, ["-m", "runtime.cli", str(bundle)], stdin='{"text": nope}\n')
    assert result.returncode == 1 and result.stderr == "albert-run: line 1: invalid JSON (Expecting value at column 10)\n"


def test_import_runtime_loads_nothing_until_pipeline_and_pipeline_stays_the_function(guarded_env):
    code = ("import inspect, sys\n"
            "import runtime\n"
            "print('numpy' in sys.modules, 'tokenizers' in sys.modules)\n"
            "import runtime.pipelines\n"
            "from runtime import Pipeline, pipeline\n"
            "print(inspect.isfunction(runtime.pipeline), pipeline is runtime.pipelines.pipeline,\n"
            "      Pipeline is runtime.pipelines.Pipeline)\n")
    result = child(guarded_env, ["-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["False False", "True True True"]
