"""albert-run and the runtime against bad input: every line answered or named, never a traceback, never a lost answer."""
from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys

import numpy as np
import pytest

from runtime import pipeline
from runtime.cli import main
from runtime.lines import ready_lines

SEED = "Plants create [MASK] through photosynthesis."


@pytest.fixture(scope="module")
def fill_mask_bundle(handmade_bundle):
    return handmade_bundle("fill-mask")


def albert_run(monkeypatch, capsys, argv, stdin: bytes = b""):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, [json.loads(line) for line in out.splitlines()], err


def errors(lines):
    return {line["line"]: line["error"] for line in lines if isinstance(line, dict) and "error" in line}


@pytest.mark.parametrize("from_file", [False, True])
def test_invalid_utf8_is_one_bad_line_and_keep_going_answers_the_rest(monkeypatch, capsys, fill_mask_bundle,
                                                                       tmp_path, from_file):
    data = f"{SEED}\n".encode() + b"caf\xff [MASK]\n" + "Ünïcode [MASK] ok.\n".encode()
    source = tmp_path / "in.txt"
    source.write_bytes(data)
    argv = [fill_mask_bundle, source] if from_file else [fill_mask_bundle]
    code, lines, err = albert_run(monkeypatch, capsys, [*argv, "--keep-going"], b"" if from_file else data)
    fill = pipeline(fill_mask_bundle)
    assert code == 1 and len(lines) == 3
    assert lines[0] == fill(SEED) and lines[2] == fill("Ünïcode [MASK] ok.")
    assert errors(lines) == {2: "not valid UTF-8 (byte 0xff at byte 4); save the input as UTF-8"}
    assert err == "albert-run: line 2: not valid UTF-8 (byte 0xff at byte 4); save the input as UTF-8\n"
    code, lines, err = albert_run(monkeypatch, capsys, argv, b"" if from_file else data)
    assert code == 1 and lines == [fill(SEED)] and err.startswith("albert-run: line 2: not valid UTF-8")


def test_blank_and_whitespace_lines_keep_output_aligned(monkeypatch, capsys, fill_mask_bundle):
    stdin = f"{SEED}\n\n   \t\nA [MASK] here.\r\n\r\nLast [MASK].".encode()
    code, lines, err = albert_run(monkeypatch, capsys, [fill_mask_bundle, "--keep-going"], stdin)
    fill = pipeline(fill_mask_bundle)
    assert code == 1 and len(lines) == 6
    assert [lines[0], lines[3], lines[5]] == [fill(SEED), fill("A [MASK] here."), fill("Last [MASK].")]
    assert set(errors(lines)) == {2, 3, 5} and all("blank line" in e for e in errors(lines).values())
    code, lines, err = albert_run(monkeypatch, capsys, [fill_mask_bundle], stdin)
    assert code == 1 and lines == [fill(SEED)] and err.startswith("albert-run: line 2: blank line")


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": "a' + "\n", "invalid JSON (Unterminated string starting at column 10)"),
        ('{"text": "a [MASK]"} and more\n', "invalid JSON (Extra data at column 22)"),
        ('{"text": ' + "[" * 5000 + "]" * 5000 + "}\n", "invalid JSON: nested too deeply"),
        ('{"text": "a\\ud800 [MASK]"}\n', "unpaired surrogate"),
        ('{"text": 5}\n', "takes a string; got int"),
        ('{"text": "a [MASK]", "extra": 1}\n', 'keys ["text"]; got ["extra", "text"]'),
        ('{"text": "a", "text": "b [MASK]"]\n', "invalid JSON (Expecting ',' delimiter at column 33)"),
        ('{"text": ' + "9" * 5000 + "}\n", "invalid JSON: a number too long to read (more than 4300 digits)"),
    ],
)
def test_bad_json_lines_get_one_line_each(monkeypatch, capsys, fill_mask_bundle, line, message):
    stdin = f"{SEED}\n{line}Last [MASK].\n".encode()
    code, lines, err = albert_run(monkeypatch, capsys, [fill_mask_bundle, "--keep-going"], stdin)
    assert code == 1 and len(lines) == 3 and list(errors(lines)) == [2]
    assert err.count("\n") == 1 and err.startswith("albert-run: line 2: ") and "at at" not in err
    assert "Error" not in err and message in errors(lines)[2]  # no exception class names


def test_ready_lines_groups_only_what_was_read_together():
    chunks = [b"a\nb", b"c\n", b"d\ne\nf", b""]
    reads = iter(chunks)
    groups = list(ready_lines(lambda size: next(reads), limit=2))
    assert groups == [[(1, b"a")], [(2, b"bc")], [(3, b"d"), (4, b"e")], [(5, b"f")]]


def answer_within(proc, seconds: float) -> bytes:
    """The next stdout line of proc, failing (instead of hanging) when none comes in time."""
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    if not ready:
        proc.kill()
        pytest.fail(f"no answer within {seconds} s")
    return proc.stdout.readline()


def test_ctrl_c_during_the_import_phase_exits_130_without_a_traceback(fill_mask_bundle):
    hook = ("import builtins, sys; real = builtins.__import__\n"
            "def hooked(name, *a, **k):\n"
            "    if name == 'numpy': raise KeyboardInterrupt\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = hooked; sys.argv[0] = 'albert-run'\n"
            "from runtime.cli import main; sys.exit(main())\n")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", hook, str(fill_mask_bundle)], input=b"", capture_output=True,
                          env=env, timeout=120)
    assert done.returncode == 130 and b"Traceback" not in done.stderr, done.stderr.decode()


def test_ctrl_c_during_the_run_keeps_the_answers_printed_so_far(fill_mask_bundle):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", str(fill_mask_bundle)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdin.write(f"{SEED}\n".encode())
    proc.stdin.flush()
    first = answer_within(proc, 120)  # answered while the input is still open
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and b"Traceback" not in err, err.decode()
    assert json.loads(first) == pipeline(fill_mask_bundle)(SEED) and out == b""
    assert err.decode().endswith("albert-run: interrupted\n")


def test_a_terminal_gets_line_1_answered_before_line_2_is_typed(fill_mask_bundle):
    import pty

    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", str(fill_mask_bundle)], stdin=terminal,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    os.close(terminal)
    try:
        os.write(controller, f"{SEED}\n".encode())
        first = answer_within(proc, 120)  # line 2 has not been typed yet
        assert json.loads(first) == pipeline(fill_mask_bundle)(SEED)
        os.write(controller, b"A [MASK] here.\n")
        second = answer_within(proc, 120)
        assert json.loads(second) == pipeline(fill_mask_bundle)("A [MASK] here.")
        os.write(controller, b"\x04")  # Ctrl-D: end of input
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out == b"" and err == b""
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def qa_bundle(handmade_bundle):
    return handmade_bundle("question-answering")


def test_qa_long_question_and_tiny_windows_never_panic_and_keep_every_answer(monkeypatch, capsys, qa_bundle):
    """The issue's case: 50 good lines, then a ~62-token question over a context that needs windows (the tokenizer
    panicked past every `except Exception`, and the 50 answers were lost); and --max-seq-len 8 / 10."""
    good = {"question": "Who went?", "context": "Botchan went to Shikoku to teach mathematics."}
    long = {"question": " ".join(["who threw the narrator out of the window"] * 8) + "?",
            "context": "Botchan went to Shikoku to teach. " * 40}
    stdin = (json.dumps(good) + "\n") * 50 + json.dumps(long) + "\n" + json.dumps(good) + "\n"
    code, lines, err = albert_run(monkeypatch, capsys, [qa_bundle], stdin.encode())
    answer = pipeline(qa_bundle)(**good)
    assert code == 0 and len(lines) == 52 and lines[:50] == [answer] * 50 and lines[51] == answer
    assert set(lines[50]) == {"score", "start", "end", "answer"} and "PanicException" not in err
    assert err.startswith("albert-run: warning: question of ") and "cut to" in err
    for max_seq_len in ("8", "10"):
        code, lines, err = albert_run(monkeypatch, capsys, [qa_bundle, "--max-seq-len", max_seq_len], stdin.encode())
        assert code == 0 and len(lines) == 52 and "panicked" not in err


@pytest.mark.parametrize("argv, message", [
    (["--max-seq-len", "200"], "max_seq_len=200 is more than the model's 128 positions; use at most 128"),
    (["--max-seq-len", "100000"], "use at most 128"),
    (["--max-seq-len", "3"], "max_seq_len=3 cannot hold the 3 special tokens"),
    (["--max-seq-len", "10", "--doc-stride", "9"], "use a doc_stride of at most 5"),
])
def test_qa_windows_the_model_cannot_take_are_one_line_exit_2(monkeypatch, capsys, qa_bundle, argv, message):
    stdin = json.dumps({"question": "Who went?", "context": "Botchan went."}) + "\n"
    code, lines, err = albert_run(monkeypatch, capsys, [qa_bundle, *argv], stdin.encode())
    assert code == 2 and lines == [] and err == f"albert-run: error: {err.split('error: ', 1)[1]}" and message in err
    assert err.count("\n") == 1


def test_token_classification_of_a_long_line_warns_or_chunks_with_stride(monkeypatch, capsys, handmade_bundle):
    bundle = handmade_bundle("token-classification")
    text = " ".join(f"Botchan{i % 7} went to Shikoku" for i in range(400))
    code, lines, err = albert_run(monkeypatch, capsys, [bundle, "--aggregation-strategy", "simple"], (text + "\n").encode())
    kept = int(err.split("only its first ")[1].split(" characters")[0])
    assert code == 0 and err.count("\n") == 1 and err.startswith("albert-run: warning: text is longer than the model's")
    assert 0 < kept < len(text) // 10 and max(entity["end"] for entity in lines[0]) <= kept
    argv = [bundle, "--aggregation-strategy", "simple", "--stride", "16"]
    code, lines, err = albert_run(monkeypatch, capsys, argv, (text + "\n").encode())
    assert (code, err) == (0, "")
    ours = json.loads(json.dumps(pipeline(bundle)(text, aggregation_strategy="simple", stride=16), default=float))
    assert lines == [ours] and max(entity["end"] for entity in lines[0]) > len(text) - 40


@pytest.mark.parametrize("stride", [126, 127])
def test_token_classification_stride_the_tokenizer_cannot_take_is_refused(monkeypatch, capsys, handmade_bundle, stride):
    argv = [handmade_bundle("token-classification"), "--aggregation-strategy", "simple", "--stride", stride]
    code, lines, err = albert_run(monkeypatch, capsys, argv, b"Botchan went to Shikoku.\n")
    assert code == 2 and lines == [] and err.count("\n") == 1 and "panicked" not in err
    assert "use a stride of at most 125" in err or "`stride` must be less than" in err


@pytest.mark.parametrize("task, options, message", [
    ("question-answering", {"doc_stride": -1}, "doc_stride must be a non-negative integer, got -1"),
    ("question-answering", {"max_seq_len": 2.5}, "max_seq_len must be a positive integer, got 2.5"),
    ("question-answering", {"handle_impossible_answer": "yes"}, "handle_impossible_answer must be True or False"),
    ("question-answering", {"top_k": "3"}, "top_k must be a positive integer, got '3'"),
    ("fill-mask", {"top_k": -1}, "top_k must be a positive integer, got -1"),
    ("fill-mask", {"targets": [1, 2]}, "targets must be a list of strings or a string"),
    ("token-classification", {"stride": -1, "aggregation_strategy": "simple"}, "stride must be a non-negative"),
    ("token-classification", {"ignore_labels": "O"}, "ignore_labels must be a list of strings"),
    ("text-classification", {"max_length": 0}, "max_length must be a positive integer, got 0"),
    ("multiple-choice", {"top_k": True}, "top_k must be a positive integer, got True"),
])
def test_option_values_of_the_wrong_type_or_range_are_one_option_error(handmade_bundle, task, options, message):
    from runtime.errors import OptionError

    pipe = pipeline(handmade_bundle(task))
    good = {"question-answering": {"question": "Who went?", "context": "Botchan went."},
            "multiple-choice": {"prompt": "She opens the door.", "choices": ["She walks in.", "It eats."]}}
    item = good.get(task, "Botchan went to [MASK].")
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace("*", r"\*")) as refused:
        pipe(**item, **options) if task == "question-answering" else pipe(item, **options)
    assert "Error" not in str(refused.value)
    with pytest.raises(OptionError, match=message.replace("(", r"\(")):
        pipe.run_each([item], **options)


def test_a_non_finite_answer_is_one_line_error_in_albert_run_as_in_albert_serve(monkeypatch, capsys, fill_mask_bundle):
    """JSON has no NaN: albert-run does not print one (answer_json, albert-serve's rule too)."""
    from runtime.lines import answer_json
    from runtime.errors import BackendError

    message = ("the answer holds a NaN or infinite score, which JSON cannot carry: the model's outputs are not finite "
               "(an fp16 overflow, a broken model); re-export the bundle")
    with pytest.raises(BackendError) as refused:
        answer_json([{"score": float("nan")}])
    assert str(refused.value) == message
    assert answer_json({"score": np.float32(0.5), "ids": np.arange(2)}) == '{"score": 0.5, "ids": [0, 1]}'
    import runtime.lines as lines_module

    real = lines_module.LineRunner.answers
    monkeypatch.setattr(lines_module.LineRunner, "answers",
                        lambda self, items: [{"score": float("nan")} if "NaN" in item else answer
                                             for item, answer in zip(items, real(self, items))])
    code, lines, err = albert_run(monkeypatch, capsys, [fill_mask_bundle, "--keep-going"],
                                  f"{SEED}\nNaN [MASK].\n{SEED}\n".encode())
    assert code == 1 and len(lines) == 3 and errors(lines) == {2: message}
    assert err == f"albert-run: line 2: {message}\n"
