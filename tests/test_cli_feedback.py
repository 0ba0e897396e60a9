"""What the two commands tell their user: --version, help for every option, the task read off config.json,
stdout holding the bundle path only (TensorRT's messages included), --quiet/--verbose, and progress that is a
bar on a terminal and stage lines (with their times) in a log."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from albert_export import cli
from albert_export.config import ARCHITECTURE_TASKS, AlbertConfig, TaskDetectionError, task_from_architectures
from runtime import __version__
from runtime import cli as run_cli
from runtime.bundle import ENGINE, load_bundle
from runtime.taskspec import TASKS
from tests.export_helpers import hf_class, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
STAGE = re.compile(r" \(\d+\.\d s\)$")


def command(*args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("ALBERT_EXPORT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600, **kwargs)


@pytest.fixture(scope="module")
def qa_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("qa")
    save_checkpoint(directory, "question-answering")
    return directory


@pytest.mark.parametrize("module, name", [("albert_export.cli", "albert-export"), ("runtime.cli", "albert-run")])
def test_version(tmp_path, module, name):
    result = command(module, "--version", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{name} {__version__}\n", "")
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)


def option_actions(parser):
    return [action for action in parser._actions if action.dest not in ("help", "version")]


def test_every_albert_run_option_says_what_it_does_and_its_default():
    actions = option_actions(run_cli.parser())
    names = {(action.option_strings or [action.dest])[0] for action in actions}
    assert {"bundle", "input", "--backend", "--device", "--top-k", "--pooling", "--keep-going"} <= names
    undocumented = [(action.option_strings or [action.dest])[0] for action in actions if action.dest != "bundle"
                    and (not action.help or "(default: " not in " ".join(action.help.split()))]
    assert undocumented == []


def test_every_albert_export_option_has_help():
    assert [action.option_strings[0] for action in option_actions(cli.build_parser()) if not action.help] == []


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURE_TASKS))
def test_architectures_map_to_tasks_as_optimum_maps_them(architecture):
    from optimum.exporters.tasks import TasksManager

    task = task_from_architectures(AlbertConfig(extra={"architectures": [architecture]}), "ckpt")
    assert task in TASKS
    if architecture == "AlbertForPreTraining":  # optimum exports no pretraining task; it is this project's own
        assert task == "pretraining"
    else:
        assert task == TasksManager.infer_task_from_model(hf_class(task))


@pytest.mark.parametrize("architectures, message", [
    (["AlbertForMaskedLM", "AlbertForQuestionAnswering"],
     "names architectures AlbertForMaskedLM, AlbertForQuestionAnswering for 2 tasks; "
     "pass --task fill-mask or --task question-answering"),
    (None, "--task is needed: {config} names no Albert* architecture; pass --task with one of: " + ", ".join(TASKS)),
    (["BertForMaskedLM"], "--task is needed: {config} names no Albert* architecture (it names BertForMaskedLM); "
                          "pass --task with one of: " + ", ".join(TASKS)),
])
def test_no_single_task_in_config_is_a_usage_error(capsys, tmp_path, qa_checkpoint, architectures, message):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    for file in qa_checkpoint.iterdir():
        (checkpoint / file.name).write_bytes(file.read_bytes())
    config = json.loads((checkpoint / "config.json").read_text())
    config.pop("architectures")
    if architectures:
        config["architectures"] = architectures
    (checkpoint / "config.json").write_text(json.dumps(config))
    status = cli.main(["--model", str(checkpoint), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and not (tmp_path / "out").exists()
    assert err.splitlines() == ["albert-export: error: " + message.format(config=checkpoint / "config.json")
                                if message.startswith("--") else err.splitlines()[0]]
    assert message.format(config=checkpoint / "config.json") in err
    with pytest.raises(TaskDetectionError):
        task_from_architectures(AlbertConfig.from_json_file(checkpoint / "config.json"), checkpoint)


def test_task_is_read_off_config_and_said(capsys, tmp_path, qa_checkpoint):
    status = cli.main(["--model", str(qa_checkpoint), "--output", str(tmp_path / "qa"), "--no-validate"])
    captured = capsys.readouterr()
    assert status == 0 and captured.out == f"{tmp_path / 'qa'}\n"
    assert load_bundle(tmp_path / "qa").manifest.task == "question-answering"
    assert (f"task: question-answering ({qa_checkpoint / 'config.json'} names AlbertForQuestionAnswering; "
            "--task overrides)") in captured.err.splitlines()


def test_engine_export_stdout_is_exactly_the_path(tmp_path):
    """TensorRT's own Logger prints its [W] lines on stdout, which broke B=$(albert-export ...)."""
    result = command("albert_export.cli", "--engine", "tensorrt", "--shapes", "1x1:2x16:4x32", "--output", "b",
                     "--verbose", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{tmp_path / 'b'}\n"
    assert (tmp_path / "b" / ENGINE).is_file()
    assert "task: fill-mask (the embedded default model; --task overrides)" in result.stderr
    trt_lines = [line for line in result.stderr.splitlines() if "tensorrt_rtx: " in line]
    assert trt_lines and not any(line.startswith("[") for line in result.stderr.splitlines())
    assert any(line.startswith("built engine.plan (") and STAGE.search(line) for line in result.stderr.splitlines())


def test_quiet_leaves_warnings_only(tmp_path):
    result = command("albert_export.cli", "--quiet", "--output", "q", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == f"{tmp_path / 'q'}\n"
    # nothing the user could act on: the embedded pretraining checkpoint's SOP/pooler weights are unused by design
    assert result.stderr == ""


INT8 = ("albert_export.cli", "--int8", "--calibration-samples", "200", "--output", "i8")


def test_a_log_gets_stage_lines_with_times_and_no_bar_fragments(tmp_path):
    result = command(*INT8, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "\r" not in result.stderr and "it/s" not in result.stderr and "|" not in result.stderr
    assert not any("{" in line for line in lines)  # no Python dicts
    stages = [line.split(" (")[0].split(" on ")[0] for line in lines if STAGE.search(line)]
    assert stages == [f"loaded {REPO / 'albert_export' / 'default_model'} for fill-mask",
                      "traced embeddings, 1 layer group(s) and the head at opset 17",
                      "int8: calibrated", "int8: compared with fp32", "validated"]
    examples = len((REPO / "calibration" / "default.jsonl").read_text().splitlines())
    assert (f"int8: calibrating on {examples} examples, not the 200 asked for: that is all built-in default "
            "examples holds (--calibration-data FILE brings more)") in lines
    compared = next(line for line in lines if line.startswith("int8: compared with fp32"))
    assert re.search(r"top-1 agreement logits \d+\.\d%", compared)


def test_a_terminal_gets_bars_per_example_and_per_shape(tmp_path):
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))  # a new pty is 0 columns wide
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", *INT8], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=secondary)
    os.close(secondary)
    terminal = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    os.close(primary)
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, terminal.decode(errors="replace")
    assert out.decode() == f"{tmp_path / 'i8'}\n"
    text = terminal.decode(errors="replace")
    examples = len((REPO / "calibration" / "default.jsonl").read_text().splitlines())
    # totals count examples (not batches of 8) and shapes; the last refresh may be skipped, so not n == total
    assert re.search(rf"calibrating: +\d+%.*\| *\d+/{examples} \[.*example", text)
    assert re.search(r"validating: +\d+%.*\| *\d/4 \[.*shape", text)
    assert re.search(r"accuracy: fp32: +\d+%.*\| *\d+/64 \[", text)  # the held-out examples
