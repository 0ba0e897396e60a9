"""README's Usage examples are executed as written: each shell line exits 0, each albert-run prints JSON lines,
and the Python example runs on the bundles they made."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def usage_blocks() -> tuple[list[str], str]:
    usage = README.read_text().split("## Usage", 1)[1]
    shell = re.search(r"```bash\n(.*?)```", usage, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", usage, re.S).group(1)
    return [line for line in shell.splitlines() if line.strip()], python


def test_usage_block_names_every_cli_and_precision():
    shell, python = usage_blocks()
    text = "\n".join(shell)
    for needle in ("albert-export", "albert-run", "--fp16", "--int8", "--layers loop", "--engine tensorrt"):
        assert needle in text
    assert "from runtime import pipeline" in python


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


def test_usage_examples_run_as_written(workdir, monkeypatch):
    shell, python = usage_blocks()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for line in shell:
        done = subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
        if "albert-run" in line:
            results = [json.loads(row) for row in done.stdout.splitlines()]
            assert len(results) == 1 and results[0], line
    namespace = {}
    monkeypatch.chdir(workdir)
    exec(python, namespace)  # noqa: S102 - the README's own example
    answers, fills = namespace["answers"], namespace["fills"]
    assert len(answers) == 2 and all(set(a) == {"score", "start", "end", "answer"} for a in answers)
    assert len(fills) == 2 and all(len(f) == 3 and set(f[0]) == {"score", "token", "token_str", "sequence"}
                                   for f in fills)


def test_the_test_counts_readme_gives_are_what_pytest_collects():
    claimed = {path: int(count) for path, count in re.findall(r"`(tests/test_\w+\.py)` \((\d+)", README.read_text())}
    assert len(claimed) >= 3, claimed
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *claimed],
                          cwd=README.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    collected = {path: 0 for path in claimed}
    for line in done.stdout.splitlines():
        path = line.split("::", 1)[0]
        if "::" in line and path in collected:
            collected[path] += 1
    assert collected == claimed
