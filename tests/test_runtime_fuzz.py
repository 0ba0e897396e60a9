"""Property tests for the runtime's input handling and bundle reader (hypothesis, derandomized: CI-reproducible).

Lines: random unicode and bytes, random JSON shapes, task-shaped objects with random values → output line k is
the answer to line k or {"error", "line": k}; never a traceback, and every answer is the one that line gets alone.
Options: random values for every option of every task, from Python and from the CLI → a result or one clear
OptionError/InputError line (no exception class names). Bundles: random truncations and bit flips of every file →
refused before any inference (manifest.json, which no checksum covers: refused, or still answering). Manifests:
mutated inputs/outputs refused at load or answering exactly as before; config.json fields changed and re-hashed:
one line of ours or an answer.
"""
from __future__ import annotations

import io
import json
import shutil
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import pipeline
from runtime.bundle import MANIFEST, BundleError
from runtime.cli import main
from runtime.errors import BackendError, InputError, OptionError
from runtime.lines import LineRunner, decode_line, parse_line
from runtime.pipelines import head_for
from runtime.taskspec import TASKS, UnknownTaskError

FUZZ = settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", 12)), deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
GOOD = {
    "fill-mask": "Plants create [MASK] through photosynthesis.",
    "text-classification": {"text": "He said so.", "text_pair": "He did not."},
    "token-classification": "Botchan went to Shikoku.",
    "question-answering": {"question": "Who went?", "context": "Botchan went to Shikoku."},
    "multiple-choice": {"prompt": "She opens the door.", "choices": ["She walks in.", "The door eats."]},
    "feature-extraction": "Botchan went.",
    "pretraining": "Plants create [MASK] through photosynthesis.",
}
OUR_ERRORS = (OptionError, InputError)


@pytest.fixture(scope="module")
def pipes(handmade_bundle):
    return {task: pipeline(handmade_bundle(task)) for task in TASKS}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


def task_lines(task: str):
    good = GOOD[task]
    shaped = st.sampled_from(head_for(task).CALL.json_objects).flatmap(
        lambda keys: st.fixed_dictionaries({key: json_values | st.text(max_size=20) for key in sorted(keys)}))
    line = st.one_of(
        st.just(json.dumps(good) if isinstance(good, dict) else good).map(str.encode),
        st.text(max_size=40).map(lambda text: text.encode("utf-8", "surrogatepass")),
        st.binary(max_size=40),
        json_values.map(lambda value: json.dumps(value).encode()),
        shaped.map(lambda value: json.dumps(value).encode()),
        st.text(alphabet=" \t\r\u3000", max_size=3).map(str.encode),
        st.text(max_size=30).map(lambda text: f"{text} [MASK] {text}".encode("utf-8", "surrogatepass")),
    )
    return st.lists(line.map(lambda raw: raw.replace(b"\n", b" ")), min_size=1, max_size=6)


def run_lines(pipe, lines: list[bytes], keep_going: bool):
    out, err = io.StringIO(), io.StringIO()
    data = io.BytesIO(b"\n".join(lines) + b"\n")
    LineRunner(pipe, {}, keep_going, out, err).run(data.read1)
    return [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def alone(pipe, raw: bytes, number: int):
    try:
        return json.loads(json.dumps(pipe.run_each([parse_line(decode_line(raw, number), pipe.task)]), default=float))[0]
    except Exception as exc:  # what the line gets when it is the only one
        return exc


@pytest.mark.parametrize("task", sorted(TASKS))
def test_random_lines_get_one_answer_or_one_numbered_error_each(pipes, task):
    pipe = pipes[task]

    @FUZZ
    @given(lines=task_lines(task))
    def check(lines):
        answers, err = run_lines(pipe, lines, keep_going=True)
        assert "Traceback" not in err and len(answers) == len(lines)
        reported = [line for line in err.splitlines() if not line.startswith("albert-run: warning: ")]
        failed = [number for number, answer in enumerate(answers, 1) if isinstance(answer, dict) and "error" in answer
                  and answer.get("line") == number and set(answer) == {"error", "line"}]
        assert reported == [f"albert-run: line {n}: {answers[n - 1]['error']}" for n in failed]
        for number, (raw, answer) in enumerate(zip(lines, answers), 1):
            expected = alone(pipe, raw, number)
            if number in failed:
                assert isinstance(expected, Exception), (raw, answer)
                assert "Error" not in answer["error"] and "Traceback" not in answer["error"]
            else:
                assert answer == expected, raw
        stopped, err = run_lines(pipe, lines, keep_going=False)
        first_bad = failed[0] if failed else len(lines) + 1
        assert stopped == answers[: first_bad - 1]  # every answer before the bad line is printed
        assert [line for line in err.splitlines() if not line.startswith("albert-run: warning: ")] == reported[:1]

    check()


option_values = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=8),
    st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.sampled_from(["simple", "none", "first", "max", "softmax", "sigmoid", "cls", "mean", "longest", "max_length",
                     "only_first", "only_second", "do_not_pad", "▁the", "O"]),
)


def assert_clear(exc: BaseException):
    assert isinstance(exc, OUR_ERRORS), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert message and "\n" not in message and "Error:" not in message and "Traceback" not in message


@pytest.mark.parametrize("task", sorted(TASKS))
def test_random_option_values_give_a_result_or_one_clear_option_error(pipes, task):
    pipe = pipes[task]
    names = sorted(pipe.parameters - {"question", "context", "offset_mapping"} | {"batch_size"})
    good = GOOD[task]

    @FUZZ
    @given(options=st.dictionaries(st.sampled_from(names), option_values, min_size=1, max_size=3))
    def check(options):
        for call in (lambda: pipe.run_each([good], **options),
                     lambda: pipe(**good, **options) if task == "question-answering" else pipe(good, **options)):
            try:
                json.dumps(call(), default=lambda value: value.tolist())  # numpy scalars and arrays
            except Exception as exc:
                assert_clear(exc)

    check()


FLAGS = ["--top-k", "--targets", "--function-to-apply", "--aggregation-strategy", "--ignore-labels", "--doc-stride",
         "--stride", "--max-seq-len", "--max-question-len", "--max-answer-len", "--pooling", "--batch-size"]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_random_cli_option_values_exit_0_1_or_2_with_one_line(pipes, task, monkeypatch, capsys, handmade_bundle):
    monkeypatch.setattr(sys.modules["runtime.pipelines"], "Pipeline", lambda *args, **kwargs: pipes[task])  # no reload
    good = GOOD[task]
    stdin = (json.dumps(good) if isinstance(good, dict) else good) + "\n"

    @FUZZ
    @given(flags=st.lists(st.tuples(st.sampled_from(FLAGS), st.one_of(
        st.integers(-5, 300).map(str), st.text(max_size=6), st.sampled_from(["simple", "softmax", "cls", "1,2", ","]))),
        min_size=1, max_size=3))
    def check(flags):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
        argv = [str(handmade_bundle(task))] + [f"{flag}={value}" for flag, value in flags]
        try:
            code = main(argv)
        except SystemExit as exit_info:  # argparse: usage, then one error line
            code = exit_info.code
        out, err = capsys.readouterr()
        assert "Traceback" not in err and code in (0, 1, 2)
        problems = [line for line in err.splitlines() if not line.startswith(("albert-run: warning: ", "usage:", " "))]
        if code == 0:
            assert len(out.splitlines()) == 1 and problems == []
        else:
            assert out == "" and len(problems) == 1 and problems[0].startswith("albert-run: ")

    check()


@pytest.fixture(scope="module")
def damaged(handmade_bundle, tmp_path_factory):
    original = handmade_bundle("question-answering")
    target = tmp_path_factory.mktemp("damaged") / "bundle"
    shutil.copytree(original, target)
    return target


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json", "config.json", MANIFEST])
def test_truncated_or_bit_flipped_bundle_files_are_refused_before_any_inference(damaged, name, monkeypatch):
    import onnxruntime

    sessions = []
    real_session = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: sessions.append(a) or real_session(*a, **k))
    path = damaged / name
    intact = path.read_bytes()
    answer = pipeline(damaged)(**GOOD["question-answering"])

    @FUZZ
    @given(position=st.integers(0, len(intact) - 1), bit=st.integers(0, 7), truncate=st.booleans())
    def check(position, bit, truncate):
        changed = intact[:position] if truncate else (
            intact[:position] + bytes([intact[position] ^ (1 << bit)]) + intact[position + 1:])
        path.write_bytes(changed)
        sessions.clear()
        try:
            if name != MANIFEST:
                with pytest.raises(BundleError, match=f"checksum mismatch for {name}"):
                    pipeline(damaged)
                assert sessions == []  # refused before a model was even loaded
                return
            try:  # no checksum covers the manifest itself: refused, or a bundle that still answers
                result = pipeline(damaged)(**GOOD["question-answering"])
            except (BundleError, OptionError, UnknownTaskError, BackendError) as exc:
                assert str(exc) and "\n" not in str(exc) and "Traceback" not in str(exc)
            else:
                assert set(result) == set(answer)
        finally:
            path.write_bytes(intact)

    check()
    assert pipeline(damaged)(**GOOD["question-answering"]) == answer


DIMS = st.sampled_from(["batch_size", "sequence_length", "num_choices", "hidden", "vocab", "batch", "sequence", 1, 2,
                        32, 0, -1, None, True, "2"])
TENSOR_EDITS = st.one_of(
    st.tuples(st.just("name"), st.sampled_from(["input_ids", "attention_mask", "token_type_ids", "last_hidden_state",
                                                "pooler_output", "logits", "hidden_states", ""])),
    st.tuples(st.just("dtype"), st.sampled_from(["int64", "int32", "float32", "float16", "bool", "nonsense"])),
    st.tuples(st.just("dims"), st.lists(DIMS, max_size=4)),
    st.tuples(st.just("dim"), st.tuples(st.integers(0, 3), DIMS)),
    st.tuples(st.just("swap"), st.just(None)),
    st.tuples(st.just("delete"), st.just(None)),
    st.tuples(st.just("duplicate"), st.just(None)),
)


def edit_tensors(manifest: dict, side: str, index: int, edit: tuple) -> None:
    specs = manifest[side]
    spec = specs[index % len(specs)]
    kind, value = edit
    if kind in ("name", "dtype", "dims"):
        spec[kind] = value
    elif kind == "dim":
        if spec["dims"]:
            spec["dims"][value[0] % len(spec["dims"])] = value[1]
    elif kind == "swap":
        spec["dims"] = spec["dims"][::-1]
    elif kind == "delete":
        specs.remove(spec)
    else:
        specs.append(dict(spec))


def test_mutated_manifest_inputs_and_outputs_are_refused_or_answer_exactly_as_before(handmade_bundle, tmp_path):
    """A manifest whose inputs/outputs were edited (the model unchanged; no checksum covers the manifest): refused
    at load in one line naming the disagreement, or -- the edit changed nothing the model contradicts -- the very
    same features as the intact bundle. Never silently different answers."""
    import numpy as np

    target = tmp_path / "bundle"
    shutil.copytree(handmade_bundle("feature-extraction"), target)
    intact = json.loads((target / MANIFEST).read_text())
    text = GOOD["feature-extraction"]
    expected = np.array(pipeline(target)(text))

    @FUZZ
    @given(side=st.sampled_from(["inputs", "outputs"]), index=st.integers(0, 2), edit=TENSOR_EDITS)
    def check(side, index, edit):
        manifest = json.loads(json.dumps(intact))
        edit_tensors(manifest, side, index, edit)
        (target / MANIFEST).write_text(json.dumps(manifest))
        try:
            result = pipeline(target)(text)
        except (BundleError, OptionError, BackendError) as exc:
            assert str(exc) and "\n" not in str(exc) and "Error" not in str(exc)
        else:
            np.testing.assert_array_equal(np.array(result), expected)

    check()


CONFIG_EDITS = st.sampled_from(["vocab_size", "type_vocab_size", "max_position_embeddings", "hidden_size",
                                "id2label", "pad_token_id"])


def test_mutated_config_fields_rehashed_are_refused_in_one_line_or_answer(handmade_bundle, tmp_path):
    """config.json's fields the runtime reads (sizes, labels), changed and re-hashed into the manifest: one line
    of ours at load, or an answer; never a raw error from numpy, the engine or int()."""
    from runtime.bundle import CONFIG, sha256_file

    target = tmp_path / "bundle"
    shutil.copytree(handmade_bundle("text-classification"), target)
    intact_config, intact_manifest = (target / CONFIG).read_text(), (target / MANIFEST).read_text()

    @FUZZ
    @given(field=CONFIG_EDITS, value=json_values)
    def check(field, value):
        config = json.loads(intact_config)
        config[field] = value
        (target / CONFIG).write_text(json.dumps(config))
        manifest = json.loads(intact_manifest)
        manifest["files"][CONFIG] = sha256_file(target / CONFIG)
        manifest.get("sizes", {}).pop(CONFIG, None)
        (target / MANIFEST).write_text(json.dumps(manifest))
        try:
            result = pipeline(target)({"text": "He said so.", "text_pair": "He did not."})
        except (BundleError, OptionError, BackendError, InputError) as exc:
            assert str(exc) and "\n" not in str(exc) and "Traceback" not in str(exc)
        else:
            assert isinstance(result, dict) and set(result) == {"label", "score"}

    check()
