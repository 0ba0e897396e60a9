"""albert-export against bad input, as a careless user and an attacker would try it (issue 9): --overwrite never
deletes what albert-export did not write, signals leave nothing behind, every bad input gets one
`albert-export: error: ...` line with the right exit status (2 usage, 1 failure), before any tracing, never a
traceback and never a multi-GB allocation."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from albert_export import bundle_writer, cli
from albert_export import validate as validate_module
from albert_export.bundle_writer import MARKER, OutputExistsError, signals_deferred, sweep_stale_siblings
from albert_export.exporter import export
from albert_export.tolerances import tolerance_for
from runtime.bundle import load_bundle
from tests.export_helpers import quiet, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(shared_checkpoint):
    return shared_checkpoint("question-answering")[0]


@pytest.fixture(scope="module")
def pristine_bundle(tmp_path_factory, checkpoint):
    return export(checkpoint, "qa", tmp_path_factory.mktemp("made") / "bundle", validate=False, log=quiet)


@pytest.fixture
def bundle(pristine_bundle, tmp_path):
    """A fresh copy of a real bundle, to damage."""
    return Path(shutil.copytree(pristine_bundle, tmp_path / "bundle"))


def run_cli(capsys, *args: str) -> tuple[int, str, list[str]]:
    status = cli.main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err.strip().splitlines()


def error_of(capsys, *args: str, status: int = 1) -> str:
    """The one error line of a failed run; asserts the exit status, an empty stdout and no traceback."""
    exit_status, out, err = run_cli(capsys, *args)
    assert exit_status == status, err
    assert out == "" and not any("Traceback" in line for line in err)
    errors = [line for line in err if line.startswith("albert-export: error: ")]
    assert len(errors) == 1 and errors[0] == err[-1], err
    return errors[0].removeprefix("albert-export: error: ")


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def siblings(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.parent.iterdir() if p.name.startswith("."))


# --- --overwrite replaces only a bundle albert-export wrote, unchanged -----------------------------------------

def test_overwrite_refuses_a_folder_with_someone_elses_manifest(capsys, checkpoint, tmp_path):
    extension = tmp_path / "ext"
    extension.mkdir()
    (extension / "manifest.json").write_text('{"manifest_version": 3}')
    (extension / "background.js").write_text("x")
    before = snapshot(extension)
    message = error_of(capsys, "--model", str(checkpoint), "--task", "qa", "--output", str(extension), "--overwrite")
    assert message == (
        f"--overwrite refused: output directory {extension} is not an albert-export bundle, or was changed since it "
        "was written: its manifest.json was not written by albert-export; nothing was deleted (--overwrite replaces "
        "only an unchanged bundle), so move it away or choose another --output")
    assert snapshot(extension) == before and siblings(extension) == []


@pytest.mark.parametrize("damage, reason", [
    (lambda b: (b / "notes.txt").write_text("mine"), "notes.txt is not one of its files"),
    (lambda b: (b / "evaluation").mkdir(), "evaluation/ is a folder albert-export did not write"),
    (lambda b: ((b / "extra").mkdir(), (b / "extra" / "run.log").write_text("log")), "extra/ is a folder"),
    (lambda b: (b / "config.json").write_text((b / "config.json").read_text() + " "),
     "config.json was changed after albert-export wrote it"),
    (lambda b: (b / "link").symlink_to(b / "config.json"), "link is a symbolic link"),
    (lambda b: (b / "manifest.json").write_text((b / "manifest.json").read_text().replace(
        '"name": "albert-export"', '"name": "other-tool"')), "its manifest.json was not written by albert-export"),
    (lambda b: (b / "manifest.json").write_text("{broken"), "its manifest.json cannot be read"),
    (lambda b: (b / "manifest.json").unlink(), "it has no manifest.json"),
])
def test_overwrite_refuses_a_bundle_holding_anything_albert_export_did_not_write(bundle, checkpoint, damage, reason):
    damage(bundle)
    before = snapshot(bundle)
    with pytest.raises(OutputExistsError, match="--overwrite refused: .*" + reason):
        export(checkpoint, "qa", bundle, overwrite=True, validate=False, log=quiet)
    assert snapshot(bundle) == before and siblings(bundle) == []


def test_overwrite_replaces_an_unchanged_bundle_and_one_the_user_only_thinned(bundle, checkpoint):
    export(checkpoint, "qa", bundle, overwrite=True, layers="loop", validate=False, log=quiet)
    assert load_bundle(bundle).manifest.layers == "loop" and siblings(bundle) == []
    (bundle / "tokenizer.json").unlink()  # deleting our own file leaves nothing of the user's to lose
    export(checkpoint, "qa", bundle, overwrite=True, validate=False, log=quiet)
    assert load_bundle(bundle).manifest.layers == "unrolled" and siblings(bundle) == []


def test_symlinked_output_replaces_the_folder_it_points_to_and_keeps_the_link(bundle, checkpoint, tmp_path):
    link = tmp_path / "current"
    link.symlink_to(bundle)
    assert export(checkpoint, "qa", link, overwrite=True, layers="loop", validate=False, log=quiet) == link
    assert link.is_symlink() and load_bundle(link).manifest.layers == "loop"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "current"]  # no .current.old-* / .bundle.old-*
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(OutputExistsError, match="is a symbolic link to .*gone, which does not exist"):
        export(checkpoint, "qa", tmp_path / "dangling", validate=False, log=quiet)
    assert not (tmp_path / "gone").exists()


def test_a_bundle_file_that_cannot_be_read_is_not_proof(bundle, checkpoint, monkeypatch):
    def unreadable(path, *args):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(bundle_writer, "sha256_file", unreadable)  # root reads every file, so the error is staged
    before = snapshot(bundle)
    with pytest.raises(OutputExistsError, match=r": config.json cannot be read \(Permission denied\); nothing was "
                                                "deleted"):
        export(checkpoint, "qa", bundle, overwrite=True, validate=False, log=quiet)
    assert snapshot(bundle) == before


def test_outputs_that_are_never_replaced(capsys, checkpoint, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("data")
    assert error_of(capsys, "--model", str(checkpoint), "--task", "qa", "--output", str(tmp_path / "file"),
                    "--overwrite") == f"output {tmp_path / 'file'} exists and is a file; choose another --output"
    assert error_of(capsys, "--model", str(checkpoint), "--task", "qa", "--output", "/", "--overwrite") == (
        "--output / is the root of the filesystem; choose a new folder for the bundle")
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for output in (".", "..", str(work)):
        assert error_of(capsys, "--model", str(checkpoint), "--task", "qa", "--output", output, "--overwrite") \
            .endswith("is the current directory or one of its parents; a bundle replaces the whole folder, so choose "
                      "a new folder for it (e.g. --output ./bundle)")
    assert (tmp_path / "file").read_text() == "data" and sorted(p.name for p in tmp_path.iterdir()) == ["file", "work"]


def test_unwritable_output_is_refused_before_tracing_naming_the_users_path(capsys, checkpoint):
    with pytest.raises(OSError):  # the premise: nobody, root included, can create entries in sysfs
        os.mkdir("/sys/albert-export-probe")
    exit_status, out, err = run_cli(capsys, "--model", str(checkpoint), "--task", "qa", "--output", "/sys/bundle")
    assert exit_status == 1 and out == ""
    assert err == ["albert-export: error: cannot write the bundle /sys/bundle: /sys is not writable (Operation not "
                   "permitted); choose another --output"]  # before loading, let alone tracing; no .partial path


# --- signals: nothing left behind; stale partials of our own swept ---------------------------------------------

STALLED_EXPORT = """
import importlib, sys, time
from albert_export import cli
export_module = importlib.import_module("albert_export.exporter")
def stall(*args, **kwargs):
    print("stalled in", STAGE, file=sys.stderr, flush=True)
    time.sleep(300)
setattr(export_module, STAGE, stall)
sys.exit(cli.main(sys.argv[1:]))
"""


def cli_env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("ALBERT_EXPORT_DEBUG", None)
    return env


def stalled_export(checkpoint: Path, output: Path, stage: str = "validate_onnx") -> subprocess.Popen:
    """albert-export in a subprocess, stopped (asleep) where albert_export.export calls `stage`."""
    process = subprocess.Popen([sys.executable, "-c", f"STAGE = {stage!r}" + STALLED_EXPORT, "--model",
                                str(checkpoint), "--task", "qa", "--output", str(output)], env=cli_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if f"stalled in {stage}" in line:
            return process
    raise AssertionError("".join(lines))


@pytest.mark.parametrize("signum, name", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")])
def test_a_signal_during_export_removes_the_partial_bundle(checkpoint, tmp_path, signum, name):
    process = stalled_export(checkpoint, tmp_path / "out")
    assert [p.name.split("-")[0] for p in tmp_path.iterdir()] == [".out.partial"]
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum and out == ""
    assert err.strip().splitlines() == [f"albert-export: interrupted ({name}); no partial bundle is left behind"]
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_tracing_is_one_line(checkpoint, tmp_path):
    process = stalled_export(checkpoint, tmp_path / "out", stage="onnx_from_reference")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and out == ""
    assert err.strip().splitlines() == ["albert-export: interrupted (SIGINT); no partial bundle is left behind"]
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_importing_is_one_line(tmp_path):
    # -X importtime reports each import as it completes: the first torch module means torch is loading
    process = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "albert_export.cli", "--task", "mlm",
                                "--output", str(tmp_path / "out")], env=cli_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if line.startswith("import time:") and "torch" in line:
            break
    process.send_signal(signal.SIGINT)
    out, rest = process.communicate(timeout=60)
    assert process.returncode == 130 and out == ""
    assert [line for line in rest.splitlines() if not line.startswith("import time:")] == [
        "albert-export: interrupted (SIGINT); no partial bundle is left behind"]
    assert list(tmp_path.iterdir()) == []


def test_a_killed_export_leaves_a_partial_that_the_next_export_sweeps(checkpoint, tmp_path):
    process = stalled_export(checkpoint, tmp_path / "out")
    process.kill()
    process.communicate(timeout=60)
    (partial,) = tmp_path.iterdir()
    assert partial.name.startswith(f".out.partial-{process.pid}-") and (partial / MARKER).is_file()
    assert export(checkpoint, "qa", tmp_path / "out", validate=False, log=quiet) == tmp_path / "out"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


DEFERRED_SIGNAL_PROBE = """
import os, signal, time
from albert_export.bundle_writer import signals_deferred
received = []
signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
with signals_deferred():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    held = list(received)  # held while the old bundle is moved away and the new one moved in
time.sleep(0.05)
print(held, received)
"""


def test_no_signal_lands_between_the_two_renames_of_an_overwrite():
    # in a fresh interpreter: a SIGTERM sent to the pytest process itself, with the thread pools earlier tests
    # left behind, once crashed it (SIGSEGV)
    result = subprocess.run([sys.executable, "-c", DEFERRED_SIGNAL_PROBE], env=cli_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == f"[] [{int(signal.SIGTERM)}]"


def dead_pid() -> int:
    finished = subprocess.Popen(["true"])
    finished.wait()
    return finished.pid


def test_the_sweep_removes_only_what_is_provably_ours_and_abandoned(pristine_bundle, tmp_path):
    pid = dead_pid()
    marker = json.dumps({"producer": "albert-export", "pid": pid, "host": socket.gethostname()})

    def partial(name: str, marker_text: str | None) -> Path:
        directory = tmp_path / name
        directory.mkdir()
        (directory / "model.onnx").write_bytes(b"half")
        if marker_text is not None:
            (directory / MARKER).write_text(marker_text)
        return directory

    swept = [partial(f".out.partial-{pid}-abc123", marker)]
    swept.append(Path(shutil.copytree(pristine_bundle, tmp_path / f".out.old-{pid}-xyz")))  # killed mid-replace
    kept = [
        partial(f".out.partial-{os.getppid()}-live01", marker.replace(str(pid), str(os.getppid()))),  # still running
        partial(f".out.partial-{pid}-nomark", None),  # no marker: not provably ours
        partial(f".out.partial-{pid}-forged", marker.replace("albert-export", "someone")),
        partial(".out.partial-abc", marker),  # not our naming
        partial(f".notes.old-{pid}-qqq", None),  # an .old- name without a manifest that accounts for it
    ]
    user_file = Path(shutil.copytree(pristine_bundle, tmp_path / f".out.old-{pid}-user"))
    (user_file / "mine.txt").write_text("keep")
    kept.append(user_file)
    assert sorted(sweep_stale_siblings(tmp_path)) == sorted(swept)
    assert all(not path.exists() for path in swept) and all(path.is_dir() for path in kept)
    assert (user_file / "mine.txt").read_text() == "keep"


# --- usage errors: exit 2, one line, before anything is read ---------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--task", "summarization"], "unknown task 'summarization'; choose one of: fill-mask (mlm), "),
    (["--task", "mlm", "--opset", "99"], "opset 99 is not supported; choose 14.."),
    (["--task", "mlm", "--opset", "13"], "opset 13 is not supported; choose 14.."),
    (["--task", "mlm", "--calibration-data", "x.txt"], "--calibration-data/--calibration-method/--calibration-samples "
                                                       "need --int8"),
    (["--task", "mlm", "--calibration-method", "entropy"], "--calibration-data/--calibration-method"),
    (["--task", "mlm", "--int8", "--calibration-data", "/nonexistent.txt"], "--calibration-data '/nonexistent.txt' "
                                                                            "is not a file"),
    (["--task", "mlm", "--int8", "--calibration-samples", "0"], "--calibration-samples must be a positive integer"),
    (["--task", "mlm", "--fp16", "--int8"], "--fp16 and --int8 exclude each other; pick one precision"),
    (["--task", "mlm", "--shapes", "1x1:2x8:4x16"], "--shapes sets the TensorRT optimization profile; add --engine "
                                                    "tensorrt"),
    (["--task", "mlm", "--engine", "tensorrt", "--shapes", "1x2"], "--shapes '1x2' must be MIN:OPT:MAX, each BxS"),
    (["--task", "mlm", "--engine", "tensorrt", "--shapes", "4x4:2x2:1x1"], "need MIN <= OPT <= MAX"),
    (["--task", "mlm", "--engine", "tensorrt", "--optimize", "onnxruntime"], "--optimize onnxruntime writes "
                                                                             "onnxruntime-only ops"),
    (["--task", "mlm", "--atol", "-1"], "atol must be a non-negative number, got -1.0"),
    (["--task", "mlm", "--atol", "nan"], "atol must be a non-negative number, got nan"),
    (["--task", "mlm", "--atol", "inf"], "--atol must be a finite number, got inf"),
    (["--task", "mlm", "--opset", "abc"], "argument --opset: invalid int value: 'abc' (see albert-export --help)"),
    (["--task", "mlm", "--layers", "folded"], "argument --layers: invalid choice: 'folded'"),
    (["--task", "mlm", "--bogus"], "unrecognized arguments: --bogus (see albert-export --help)"),
    (["--model"], "argument --model: expected one argument"),
])
def test_usage_errors_exit_2_with_one_line(capfd, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    try:
        status = cli.main(args)
    except SystemExit as exited:  # argparse's own errors
        status = exited.code
    out, err = capfd.readouterr()
    assert status == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("albert-export: error: ") and message in line, line
    assert list(tmp_path.iterdir()) == []


# --- checkpoints that cannot be exported: exit 1, one line, before tracing ---------------------------------------

def broken_checkpoint(source: Path, tmp_path: Path, config: dict | None = None, **files: bytes) -> Path:
    directory = tmp_path / "broken"
    shutil.copytree(source, directory)
    if config is not None:
        data = json.loads((directory / "config.json").read_text())
        for key, value in config.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        (directory / "config.json").write_text(json.dumps(data))
    for name, content in files.items():
        (directory / name.replace("__", ".")).write_bytes(content)
    return directory


@pytest.mark.parametrize("config, files, message", [
    (None, {"config__json": b"{not json"}, "config.json is not valid JSON"),
    (None, {"config__json": b"[1, 2]"}, "config.json must hold a JSON object"),
    (None, {"config__json": b"\xff\xfe{}"}, "config.json is not UTF-8 text (byte 0)"),
    (None, {"config__json": b"[" * 100_000}, "config.json is nested too deeply"),
    ({"hidden_size": "32"}, {}, "hidden_size must be a positive integer, got '32'"),
    ({"vocab_size": True}, {}, "vocab_size must be a positive integer, got True"),
    ({"hidden_act": ["gelu"]}, {}, "hidden_act ['gelu'] is not supported"),
    ({"id2label": ["a", "b"]}, {}, "id2label must be an object of id -> label name, got list"),
    ({"id2label": {"a": "x"}}, {}, "id2label key 'a' is not a label id"),
    ({"id2label": {"0": "A", "5": "B"}, "label2id": None}, {}, "id2label must number its labels 0..1, got ids [0, 5]"),
    ({"num_labels": "two", "id2label": None, "label2id": None}, {}, "num_labels must be an integer in 1..65536"),
    ({"layer_norm_eps": float("nan")}, {}, "layer_norm_eps must be a finite positive number, got nan"),
    ({"layer_norm_eps": -1e-12}, {}, "layer_norm_eps must be a finite positive number"),
    ({"hidden_dropout_prob": float("inf")}, {}, "hidden_dropout_prob must be a probability in [0, 1], got inf"),
    ({"initializer_range": -0.02}, {}, "initializer_range must be a finite number >= 0"),
    ({"pad_token_id": 5000}, {}, "pad_token_id must be a token id in 0..vocab_size-1 (or null), got 5000"),
    ({"tie_word_embeddings": "yes"}, {}, "tie_word_embeddings must be true or false"),
    ({"vocab_size": 10**9}, {}, "vocab_size 1000000000 exceeds the limit of 1048576 this exporter accepts"),
    ({"num_hidden_layers": 10**7, "num_hidden_groups": 1}, {}, "num_hidden_layers 10000000 exceeds the limit of 1024"),
    ({"intermediate_size": 10**8}, {}, "intermediate_size 100000000 exceeds the limit of 262144"),
    ({"num_attention_heads": 5}, {}, "hidden_size 32 is not divisible by num_attention_heads 5"),
    ({"num_hidden_layers": 3}, {}, "num_hidden_layers 3 is not divisible by num_hidden_groups 2"),
    ({"model_type": "bert"}, {}, "config.json describes a 'bert' model, not ALBERT"),
    (None, {"model__safetensors": b""}, "model.safetensors cannot be read"),
    (None, {"model__safetensors": b"\xff" * 8 + b"{}"}, "model.safetensors cannot be read"),
    (None, {"model__safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": [1, 2]}xx"},
     "model.safetensors cannot be read"),
    (None, {"tokenizer__json": b"{not json"}, "tokenizer.json is not a valid tokenizers tokenizer.json"),
    (None, {"tokenizer__json": b'{"version": "1.0"}'}, "tokenizer.json is not a valid tokenizers tokenizer.json"),
    (None, {"tokenizer_config__json": b"\xff"}, "tokenizer_config.json is not valid JSON"),
])
def test_broken_checkpoints_get_one_line(capsys, checkpoint, tmp_path, config, files, message):
    directory = broken_checkpoint(checkpoint, tmp_path, config, **files)
    error = error_of(capsys, "--model", str(directory), "--task", "qa", "--output", str(tmp_path / "o"))
    assert message in error, error
    assert not error.startswith(("ValueError", "TypeError", "KeyError", "SafetensorError"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_a_truncated_safetensors_file_is_refused(capsys, checkpoint, tmp_path):
    data = (checkpoint / "model.safetensors").read_bytes()
    directory = broken_checkpoint(checkpoint, tmp_path, model__safetensors=data[: len(data) // 2])
    assert error_of(capsys, "--model", str(directory), "--task", "qa", "--output", str(tmp_path / "o")).endswith(
        "the file is damaged or truncated, re-save the checkpoint")


def test_missing_tokenizer_is_refused(capsys, checkpoint, tmp_path):
    directory = broken_checkpoint(checkpoint, tmp_path)
    for name in ("tokenizer.json", "spiece.model"):
        (directory / name).unlink(missing_ok=True)
    assert "has neither tokenizer.json nor spiece.model" in error_of(
        capsys, "--model", str(directory), "--task", "qa", "--output", str(tmp_path / "o"))


def save_with_weights(checkpoint: Path, tmp_path: Path, change) -> Path:
    directory = broken_checkpoint(checkpoint, tmp_path)
    state = load_file(str(directory / "model.safetensors"))
    change(state)
    save_file(state, str(directory / "model.safetensors"))
    return directory


def test_nan_and_inf_weights_are_named(capsys, checkpoint, tmp_path):
    def poison(state):
        state["albert.embeddings.word_embeddings.weight"][3, :2] = float("nan")
        state["qa_outputs.bias"][0] = float("inf")

    directory = save_with_weights(checkpoint, tmp_path, poison)
    assert error_of(capsys, "--model", str(directory), "--task", "qa", "--output", str(tmp_path / "o")) == (
        f"{directory}: weights with non-finite values: albert.embeddings.word_embeddings.weight (2 NaN, 0 Inf of "
        "16064), qa_outputs.bias (0 NaN, 1 Inf of 2); the checkpoint is broken, re-save it from a model that trains "
        "without NaN/Inf")


def test_weights_that_overflow_fail_validation_naming_inf_not_a_zero_diff(capsys, tmp_path):
    source = tmp_path / "source"
    save_checkpoint(source, "text-classification")

    def blow_up(state):
        state["albert.pooler.bias"][:] = 1e6  # tanh saturates: every pooled value is exactly 1
        state["classifier.weight"][:] = 3e38  # finite, but 32 of them sum past float32's 3.4e38
        state["classifier.bias"][:] = 0

    directory = save_with_weights(source, tmp_path, blow_up)
    error = error_of(capsys, "--model", str(directory), "--task", "cls", "--output", str(tmp_path / "o"))
    assert error == ("output 'logits': the PyTorch reference gives 0 NaN and 3 Inf among its 3 values at input shape "
                     "[1, 1]; the checkpoint's weights or config.json produce non-finite numbers")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "source"]


def test_nan_from_the_exported_graph_is_named(capsys, checkpoint, tmp_path, monkeypatch):
    original = validate_module.onnx_session

    class NaNSession:
        def __init__(self, session):
            self.session = session

        def run(self, names, inputs):
            outputs = self.session.run(names, inputs)
            outputs[1][0, 0] = float("nan")
            return outputs

        def __getattr__(self, name):  # get_outputs & co.: the wrapped session's
            return getattr(self.session, name)

    monkeypatch.setattr(validate_module, "onnx_session", lambda *a, **k: NaNSession(original(*a, **k)))
    error = error_of(capsys, "--model", str(checkpoint), "--task", "qa", "--output", str(tmp_path / "o"))
    assert error == ("output 'end_logits': the exported graph gives 1 NaN and 0 Inf among its 1 values at input shape "
                     "[1, 1]; the exported graph overflows where PyTorch does not")


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(capsys, tmp_path):
    small = tmp_path / "small"
    save_checkpoint(small, "fill-mask", vocab_size=1000)  # the test tokenizer has 1004 ids
    assert error_of(capsys, "--model", str(small), "--task", "mlm", "--output", str(tmp_path / "o")) == (
        "the tokenizer has token ids up to 1003 but the model's vocabulary has 1000 entries (vocab_size in "
        "config.json); export the checkpoint with the tokenizer it was trained with")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]


def test_pair_tasks_need_two_token_types(capsys, tmp_path):
    single = tmp_path / "single"
    save_checkpoint(single, "question-answering", type_vocab_size=1)
    assert error_of(capsys, "--model", str(single), "--task", "qa", "--output", str(tmp_path / "o")) == (
        "the tokenizer gives token type id 1 to a text pair but the model has type_vocab_size 1; question-answering "
        "needs pairs, so export with a checkpoint that has type_vocab_size >= 2")


def test_tokenizer_max_length_is_capped_at_the_models_positions(capsys, checkpoint, tmp_path):
    directory = broken_checkpoint(checkpoint, tmp_path)
    settings = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": 512}))
    status, out, err = run_cli(capsys, "--model", str(directory), "--task", "qa", "--output", str(tmp_path / "o"),
                               "--no-validate")
    assert status == 0 and out.strip() == str(tmp_path / "o")
    assert ("albert-export: warning: the tokenizer's model_max_length 512 exceeds the model's 40 positions; the "
            "bundle uses 40") in err
    assert load_bundle(tmp_path / "o").manifest.tokenizer.max_length == 40


def test_one_label_for_a_two_logit_head_is_refused(capsys, tmp_path):
    directory = tmp_path / "cls"
    save_checkpoint(directory, "text-classification", num_labels=2)
    config = json.loads((directory / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "NEGATIVE"}, {"NEGATIVE": 0}
    (directory / "config.json").write_text(json.dumps(config))
    error = error_of(capsys, "--model", str(directory), "--task", "cls", "--output", str(tmp_path / "o"))
    assert error.startswith(f"{directory}: weights whose shape does not match config.json (config.json's id2label "
                            "names one label per output of the task head): classifier.weight (checkpoint (2, 32), "
                            "model (1, 32))")


ABSURD = {
    "vocab_size": dict(vocab_size=10**9),
    "layers": dict(num_hidden_layers=10**7, num_hidden_groups=1),
    "memory": dict(vocab_size=1 << 20, embedding_size=1 << 16),  # each within its limit, 2.7e11 bytes together
    "positions": dict(max_position_embeddings=1 << 16, num_attention_heads=32),  # attention at validation: 0.5 TB
}


PEAK_MEMORY_REPORTED = """
import resource, sys
from albert_export import cli
status = cli.main(sys.argv[1:])
print("peak", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)
sys.exit(status)
"""


@pytest.mark.parametrize("name", ABSURD)
def test_absurd_sizes_are_refused_before_any_allocation(checkpoint, tmp_path, name):
    directory = broken_checkpoint(checkpoint, tmp_path, ABSURD[name])
    result = subprocess.run([sys.executable, "-c", PEAK_MEMORY_REPORTED, "--model", str(directory), "--task", "qa",
                             "--output", str(tmp_path / "o")], env=cli_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1 and result.stdout == ""
    *_, line, peak = result.stderr.strip().splitlines()
    assert line.startswith("albert-export: error: ")
    assert "exceeds the limit" in line or ("GB of memory" in line and "GB are available" in line), line
    assert int(peak.split()[1]) < 1.5e9  # torch and onnxruntime loaded, nothing of the model's size


# --- calibration data: refused before tracing --------------------------------------------------------------------

@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", b"", "is empty; it needs at least one text"),
    ("blank.txt", b"\n \n\t\n", "is empty"),
    ("binary.txt", bytes(range(256)), "is not UTF-8 text"),
    ("latin1.txt", "caf\xe9\n".encode("latin-1"), "is not UTF-8 text"),
    ("bad.json", b'{"data": [', "invalid JSON at line 1"),
    ("bad.jsonl", b'{"text": "a"}\n{oops\n', "line 2 is not JSON"),
    ("fields.jsonl", b'{"label": 1}\n', "no text field"),
])
def test_bad_calibration_data_is_refused_before_tracing(capsys, checkpoint, tmp_path, name, content, message):
    data = tmp_path / name
    data.write_bytes(content)
    exit_status, out, err = run_cli(capsys, "--model", str(checkpoint), "--task", "qa", "--int8",
                                    "--calibration-data", str(data), "--output", str(tmp_path / "o"))
    assert exit_status == 1 and out == "" and message in err[-1] and err[-1].startswith("albert-export: error: ")
    assert not any(line.startswith("tracing") for line in err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


# --- messages never name exception classes ------------------------------------------------------------------------

def test_error_lines_carry_no_exception_class_names():
    def raised(error: BaseException) -> BaseException:
        try:
            raise error
        except BaseException as caught:
            return caught

    assert cli.failure_message(raised(PermissionError(13, "Permission denied", "/x/y"))) == (
        "Permission denied (/x/y); check the path and its permissions")
    assert cli.failure_message(raised(MemoryError())) == (
        "out of memory; the model is too large for this machine's memory, check config.json's sizes")
    json_error = raised(json.JSONDecodeError("Expecting value", "x", 0))  # raised inside json: not ours
    assert cli.failure_message(json_error) == ("unexpected failure: Expecting value: line 1 column 1 (char 0); run with "
                                          "ALBERT_EXPORT_DEBUG=1 for the traceback, and please report it")
    with pytest.raises(ValueError) as ours:  # a builtin exception raised by our code is written to be read
        tolerance_for("fp32", "*", -1.0)
    assert cli.failure_message(ours.value) == "atol must be a non-negative number, got -1.0"


def test_error_lines_decide_by_type_not_by_the_module_that_raised():
    from calibration import CalibrationError
    from graphs.errors import GraphError
    from runtime.errors import AlbertRuntimeError

    from albert_export.errors import ExportError

    for base in (ExportError, GraphError, CalibrationError, AlbertRuntimeError):
        assert cli.failure_message(type("Raised", (base,), {})("the message; what to do")) == "the message; what to do"
    import numpy as np

    with pytest.raises(ValueError) as untyped:  # a builtin error from our own module: not one of the bases
        validate_module.compare(np.zeros(2), np.zeros(3), tolerance_for("fp32", "*"))
    assert cli.failure_message(untyped.value).startswith("unexpected failure: shape (2,) where the reference has (3,); ")
