"""The install lines README's "Install" section documents, and scripts/setup.sh's, each resolve (pip's own
resolver, `pip install --dry-run --report`, from the package index) to exactly one onnxruntime distribution,
the right one; and an install without the export extra (or without an engine) says in one line what to add.

Two onnxruntime distributions in one environment (onnxruntime beside onnxruntime-gpu, what `[gpu]` gave when the
base carried onnxruntime) write the same `onnxruntime` package, and the CUDA provider goes missing.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from runtime.extras import install_command

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
INSTALL_LINE = re.compile(r"^pip install (?P<before>(?:\S+ )*)'albert-export\[(?P<extras>[a-z,-]+)\]'", re.M)
# setup.sh installs torch==2.13.0 (the local CPU wheel) before the extras; the resolver is given the same pin, so
# that it does not resolve a multi-GB CUDA torch it would never install here. onnxruntime does not depend on it.
TORCH = "torch==2.13.0"
# plugin execution providers (onnxruntime-ep-*) are separate packages that load into onnxruntime; they do not
# ship the `onnxruntime` package
SHIPS_ONNXRUNTIME = re.compile(r"^(onnxruntime|ort-nightly)(?!-ep-)([-_].*)?$")


def install_section() -> str:
    return README.read_text().split("## Install", 1)[1].split("\n## ", 1)[0]


def documented_extras() -> list[str]:
    return sorted({match["extras"] for match in INSTALL_LINE.finditer(install_section())})


def setup_extras() -> str:
    return re.search(r"pip install -q -e '\.\[([a-z,-]+)\]'", (REPO / "scripts" / "setup.sh").read_text())[1]


def resolve(extras: str, report: Path) -> list[str]:
    """The distributions pip would install for albert-export[extras] into an empty environment."""
    requirements = [f"{REPO}[{extras}]"] + ([TORCH] if "export" in extras.split(",") else [])
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--no-build-isolation",
         "--report", str(report), *requirements],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert done.returncode == 0, f"albert-export[{extras}] does not resolve:\n{done.stderr[-3000:]}"
    return [item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.read_text())["install"]]


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory):
    """pip's dry run downloads every wheel it considers (into its own HTTP cache): first the two sets that hold
    all the large ones (setup.sh's, and gpu's onnxruntime-gpu), side by side, then the rest from that cache."""
    folder = tmp_path_factory.mktemp("resolve")
    sets = sorted(set(documented_extras()) | {setup_extras()})
    first = [setup_extras(), "gpu"]
    resolved = {}
    for group in (first, [extras for extras in sets if extras not in first]):
        with ThreadPoolExecutor(max_workers=len(group)) as pool:
            resolved.update(zip(group, pool.map(lambda extras: resolve(extras, folder / f"{extras}.json"), group)))
    return resolved


def test_readme_documents_each_engine_and_the_export():
    assert {"cpu", "gpu", "export,cpu", "export,gpu", "cpu,openvino", "export,cpu,tensorrt"} <= set(documented_extras())


def test_every_documented_install_has_exactly_one_onnxruntime_the_right_one(resolutions):
    found = {extras: [name for name in names if SHIPS_ONNXRUNTIME.match(name)] for extras, names in resolutions.items()}
    expected = {extras: ["onnxruntime-gpu" if "gpu" in extras.split(",") else "onnxruntime"] for extras in resolutions}
    assert found == expected


def test_the_runtime_extras_bring_no_build_side_package(resolutions):
    build_side = {"torch", "onnx", "onnxsim", "transformers"}
    runtime_only = [extras for extras in resolutions if "export" not in extras.split(",")]
    assert runtime_only and {extras: sorted(build_side & set(resolutions[extras])) for extras in runtime_only} == {
        extras: [] for extras in runtime_only}


def test_the_matcher_tells_onnxruntime_distributions_from_plugins():
    assert [name for name in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-ep-openvino",
                              "onnx", "onnxsim") if SHIPS_ONNXRUNTIME.match(name)] == [
        "onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"]


# --- installs without a piece: one line, what to add ----------------------------------------------------------

ABSENT = """
import sys

class _Absent:  # as if these distributions were not installed: what a missing package raises
    absent = {absent!r}

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.absent:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _Absent())
"""


def without(tmp_path: Path, *absent: str) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(ABSENT.format(absent=absent))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "OMP_NUM_THREADS": "1"}
    env.pop("ALBERT_EXPORT_DEBUG", None)
    return env


def run(env, *args, stdin=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("absent", ["torch", "onnx"])
def test_albert_export_without_the_export_extra_says_what_to_add(tmp_path, absent):
    env = without(tmp_path, absent, "transformers")
    assert "No module named" in run(env, "-c", f"import {absent}").stderr  # the block is real
    result = run(env, "-m", "albert_export.cli", "--task", "mlm", "--output", str(tmp_path / "o"), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        f"albert-export: error: {absent} is not installed; albert-export needs it: {install_command('export')}"]
    assert install_command("export") == "pip install 'albert-export[export]'"
    assert not (tmp_path / "o").exists()


def test_the_runtime_only_install_still_answers_version_and_help(tmp_path):
    env = without(tmp_path, "torch", "onnx", "transformers")
    version = run(env, "-m", "albert_export.cli", "--version")
    assert (version.returncode, version.stdout) == (0, "albert-export 0.1.0\n")
    assert run(env, "-m", "albert_export.cli", "--help").returncode == 0
    refused = run(env, "-c", "import albert_export; albert_export.export(None, 'mlm')")
    assert refused.returncode == 1 and refused.stderr.splitlines()[-1] in (
        f"ModuleNotFoundError: {name} is not installed; the export needs it: pip install 'albert-export[export]'"
        for name in ("torch", "onnx"))


def test_albert_run_without_an_engine_says_which_extra_to_add(tmp_path, handmade_bundle):
    env = without(tmp_path, "onnxruntime", "torch", "onnx", "transformers")
    result = run(env, "-m", "runtime.cli", str(handmade_bundle("fill-mask")), stdin="Plants create [MASK].\n")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        "albert-run: error: onnxruntime is not installed; the onnxruntime backend needs it: "
        "pip install 'albert-export[cpu]' (or [gpu] for onnxruntime-gpu with CUDA)"]
