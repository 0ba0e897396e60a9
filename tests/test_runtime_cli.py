"""albert-run: input forms, output lines, errors with line numbers, exit codes."""
from __future__ import annotations

import io
import json
import shutil

import pytest

from runtime import pipeline
from runtime.bundle import CONFIG
from runtime.cli import main

SEED = "Plants create [MASK] through photosynthesis."


@pytest.fixture(scope="module")
def fill_mask_bundle(handmade_bundle):
    return handmade_bundle("fill-mask")


def albert_run(monkeypatch, capsys, argv, stdin=""):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, [json.loads(line) for line in out.splitlines()], err


def test_seed_style_use(monkeypatch, capsys, fill_mask_bundle):
    code, lines, err = albert_run(monkeypatch, capsys, [fill_mask_bundle], SEED + "\n")
    assert (code, err) == (0, "")
    assert lines == [pipeline(fill_mask_bundle)(SEED)]
    assert set(lines[0][0]) == {"score", "token", "token_str", "sequence"} and len(lines[0]) == 5


def test_text_lines_json_lines_and_a_file(monkeypatch, capsys, fill_mask_bundle, tmp_path):
    texts = [f"Line {i} has a [MASK] in it." for i in range(70)] + ["Two [MASK] and [MASK]."]
    stdin = "\n".join(texts[:3]) + "\n" + json.dumps({"text": texts[3]}) + "\n" + "\n".join(texts[4:]) + "\n"
    code, lines, _ = albert_run(monkeypatch, capsys, [fill_mask_bundle, "-", "--top-k", "2", "--batch-size", "3"], stdin)
    fill = pipeline(fill_mask_bundle)
    assert code == 0 and len(lines) == len(texts)
    assert lines == json.loads(json.dumps([fill(t, top_k=2) for t in texts]))
    source = tmp_path / "inputs.txt"
    source.write_text(stdin, encoding="utf-8")
    code, from_file, _ = albert_run(monkeypatch, capsys, [fill_mask_bundle, source, "--top-k", "2"])
    assert code == 0 and from_file == lines


def test_targets_option(monkeypatch, capsys, fill_mask_bundle):
    words = ["▁the", "▁a"]
    code, lines, _ = albert_run(monkeypatch, capsys, [fill_mask_bundle, "--targets", ",".join(words)], SEED)
    assert code == 0 and lines == [pipeline(fill_mask_bundle)(SEED, targets=words)]


def test_invalid_json_line_stops_with_its_number(monkeypatch, capsys, fill_mask_bundle):
    stdin = f"{SEED}\nA [MASK] here.\n{{\"text\": oops}}\nLast [MASK].\n"
    code, lines, err = albert_run(monkeypatch, capsys, [fill_mask_bundle], stdin)
    assert code == 1 and len(lines) == 2
    assert err.startswith("albert-run: line 3: invalid JSON") and err.count("\n") == 1


def test_keep_going_reports_every_bad_line_and_answers_the_rest(monkeypatch, capsys, fill_mask_bundle):
    stdin = f'{SEED}\n{{"text": oops}}\nno mask here\n{{"text": ""}}\n{{"txt": "a [MASK]"}}\n{{"text": ["a [MASK]"]}}\nLast [MASK].\n'
    code, lines, err = albert_run(monkeypatch, capsys, [fill_mask_bundle, "--keep-going"], stdin)
    assert code == 1 and len(lines) == 7
    assert [line["line"] for line in lines[1:6]] == [2, 3, 4, 5, 6] and lines[6] == pipeline(fill_mask_bundle)("Last [MASK].")
    messages = err.splitlines()
    assert [m.split(":")[1].strip() for m in messages] == ["line 2", "line 3", "line 4", "line 5", "line 6"]
    assert [line["error"] for line in lines[1:6]] == [m.split(": ", 2)[2] for m in messages]
    assert "No mask_token ([MASK])" in messages[1] and "empty" in messages[2] and '["text"]' in messages[3]
    assert "takes a string; got list" in messages[4]


def test_pairs_and_objects_for_other_tasks(monkeypatch, capsys, handmade_bundle):
    bundle = handmade_bundle("text-classification", num_labels=3)
    pair = {"text": "He said so.", "text_pair": "He did not."}
    stdin = json.dumps(pair) + "\nJust one text.\n"
    code, lines, _ = albert_run(monkeypatch, capsys, [bundle, "--top-k", "2", "--function-to-apply", "sigmoid"], stdin)
    classify = pipeline(bundle)
    assert code == 0
    assert lines == [classify(pair, top_k=2, function_to_apply="sigmoid"), classify("Just one text.", top_k=2, function_to_apply="sigmoid")]
    code, lines, _ = albert_run(monkeypatch, capsys, [bundle], "Just one text.\n")
    assert lines == [classify("Just one text.")]  # HF's legacy [{label, score}]

    bundle = handmade_bundle("multiple-choice")
    item = {"prompt": "She opens the door.", "choices": ["She walks in.", "The door eats."]}
    code, lines, err = albert_run(monkeypatch, capsys, [bundle, "--keep-going"], json.dumps(item) + "\nplain text\n")
    assert code == 1 and lines[0] == pipeline(bundle)(item) and lines[1]["line"] == 2
    assert "line 2: multiple-choice takes JSON objects" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--pooling", "cls"], "--pooling does not apply to a fill-mask bundle"),
        (["--handle-impossible-answer"], "--handle-impossible-answer does not apply"),
        (["--backend", "tensorrt", "--device", "cpu"], "tensorrt backend runs on a GPU only"),
        (["/no/such/input.txt"], "cannot read /no/such/input.txt"),
    ],
)
def test_contradictory_or_misplaced_options_exit_2(monkeypatch, capsys, fill_mask_bundle, argv, message):
    code, lines, err = albert_run(monkeypatch, capsys, [fill_mask_bundle, *argv], SEED)
    assert code == 2 and lines == [] and message in err and err.count("\n") == 1


def test_bad_bundles_exit_1(monkeypatch, capsys, fill_mask_bundle, tmp_path):
    code, _, err = albert_run(monkeypatch, capsys, [tmp_path / "missing"], SEED)
    assert code == 1 and "is not a directory" in err
    copy = tmp_path / "copy"
    shutil.copytree(fill_mask_bundle, copy)
    (copy / CONFIG).write_text((copy / CONFIG).read_text() + " ")
    code, _, err = albert_run(monkeypatch, capsys, [copy], SEED)
    assert code == 1 and "checksum mismatch for config.json" in err
    code, _, err = albert_run(monkeypatch, capsys, [fill_mask_bundle, "--backend", "tensorrt"], SEED)
    assert code == 1 and "no engine.plan" in err


@pytest.mark.parametrize("argv, message", [
    (["--top-k", "0"], "argument --top-k: must be a positive integer, got '0'"),
    (["--batch-size", "x"], "argument --batch-size: must be a positive integer, got 'x'"),
    (["--batch-size", "True"], "argument --batch-size: must be a positive integer, got 'True'"),
    (["--doc-stride", "-1"], "argument --doc-stride: must be a non-negative integer, got '-1'"),
    (["--max-seq-len", "1e9"], "argument --max-seq-len: must be a positive integer, got '1e9'"),
    (["--pooling", "max"], "argument --pooling: invalid choice: 'max' (choose from 'cls', 'mean', 'none')"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (None, "the following arguments are required: bundle"),
])
def test_usage_errors_are_one_line_exit_2(capsys, fill_mask_bundle, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main([] if argv is None else [str(fill_mask_bundle), *argv])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"albert-run: error: {message} (see albert-run --help)\n"


def test_truncation_warning_goes_to_stderr(monkeypatch, capsys, fill_mask_bundle):
    long_text = "The [MASK] said " + "nothing " * 200
    code, lines, err = albert_run(monkeypatch, capsys, [fill_mask_bundle], long_text)
    assert code == 0 and len(lines) == 1
    assert err.startswith("albert-run: warning: input is longer than the model's maximum of 128 tokens")


@pytest.mark.parametrize(
    "task, argv, stdin, message",
    [
        ("question-answering", ["--doc-stride", "200", "--max-seq-len", "100"],
         '{"question": "Who?", "context": "Botchan went."}\n', "`doc_stride` (200) is larger than `max_seq_len` (100)"),
        ("token-classification", ["--aggregation-strategy", "none", "--max-seq-len", "64"], "Botchan went.\n",
         "--max-seq-len does not apply"),
    ],
)
def test_head_option_errors_exit_2_like_other_option_errors(monkeypatch, capsys, handmade_bundle, task, argv,
                                                            stdin, message):
    code, lines, err = albert_run(monkeypatch, capsys, [handmade_bundle(task), *argv], stdin)
    assert code == 2 and lines == [] and message in err and err.count("\n") == 1
