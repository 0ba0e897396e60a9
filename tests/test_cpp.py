"""The C++ example (examples/cpp, albert-run-cpp): built once per session with cmake (scripts/setup-cpp.sh builds the
same build/cpp in CI), run on bundles of several configs (the test tokenizer's spiece.model and the embedded model's
generated one, odd sizes, Loop, INT8, long QA contexts), answers equal to albert-run's: strings, tokens, labels and
offsets exact, scores within 1e-4 (OpenVINO against onnxruntime); token ids, offsets and word ids equal to
tokenizers' on a list of hard inputs. Skips only where the Debian packages are not installed, saying so; a build
that fails where they are is a failure."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from albert_export.exporter import export
from tests.conftest import DATA
from tests.export_helpers import save_checkpoint
from tests.test_runtime_heads import assert_same

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "cpp"
PACKAGE_HEADERS = {"libsentencepiece-dev": "sentencepiece_processor.h", "nlohmann-json3-dev": "nlohmann/json.hpp",
                   "libutf8proc-dev": "utf8proc.h", "libssl-dev": "openssl/evp.h"}
SCORE_ATOL = 1e-4

HARD = [
    "Hello world, the [MASK] is here.", "naïve café résumé", "Ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ １２３", "日本語のテキストです。",
    "emoji 😀 and 👍🏽 here", "ﬁne ligature ﬂow", "İstanbul Σίσυφος straße ΣΑΣ", "``quoted'' and \"plain\" 'single'",
    "trailing space ", "trailing spaces   ", "  leading spaces", "tab\tinside", "new\nline", "multiple   inner    spaces",
    "[MASK]word", "word[MASK]", "a [MASK] [MASK] b", "[MASK]", " [MASK] ", "000 1000 2000 3.14", "<unk> <s> </s> [CLS]",
    "non\u00a0breaking\u00a0space", "zero\u200bwidth", "Crème brûlée à la carte", "Ωmega ΑΛΦΑ", "x",
    "Mixed 中文 and English words", "ÅÄÖ åäö", "a\u0301 combining", "dots... and — dashes – here",
]
FILL_MASK = [
    "Hello world, the [MASK] is here.", "naïve café [MASK] résumé", "Ｆｕｌｌ－ｗｉｄｔｈ [MASK] １２３", "日本語の[MASK]テキスト",
    "emoji 😀 [MASK] 👍🏽", "[MASK]word and word[MASK]", "two [MASK] masks [MASK] here", "trailing [MASK] space   ",
    "İstanbul Σίσυφος [MASK] straße", "``quoted'' [MASK] 'single'", "  leading [MASK]", "[MASK]",
    "[MASK] " + "a long text that the model cannot take whole " * 6,
]
LONG_CONTEXT = " ".join(
    f"In {1900 + i} the river town of Émile-sur-Mer built bridge number {i}, called “Pont {i}”, "
    "for the carts of the market." for i in range(25))
QA = [
    {"question": "Who wrote it?", "context": "It was written in 1999, by Émile."},
    {"question": "What did they build?", "context": LONG_CONTEXT},
    {"question": "Where?", "context": "日本語のテキスト and 中文 words in Ｔｏｋｙｏ, with emoji 😀 at the end  "},
    {"question": "which café?", "context": "The naïve café résumé says: ``quoted'' [MASK] text\tand more   spaces "},
]


def text_classification_lines() -> list[str]:
    pairs = [{"text": "Who wrote it?", "text_pair": "It was written in 1999, by Émile."},
             {"text": "a long first text " * 9, "text_pair": "and a long second one " * 7},
             {"text": "ﬁne", "text_pair": "日本語"}]
    return [text for text in HARD if "\n" not in text and text.strip()] + [json.dumps(p, ensure_ascii=False) for p in pairs]


@pytest.fixture(scope="session")
def albert_run_cpp() -> Path:
    missing = [package for package, header in PACKAGE_HEADERS.items() if not (Path("/usr/include") / header).is_file()]
    if shutil.which("cmake") is None:
        missing.append("cmake")
    if missing:
        pytest.skip(f"the C++ example's Debian packages are not installed ({', '.join(missing)}): "
                    "scripts/setup-cpp.sh installs them as root")
    import openvino.utils

    for command in (["cmake", "-S", str(ROOT / "examples" / "cpp"), "-B", str(BUILD),
                     f"-DOpenVINO_DIR={openvino.utils.get_cmake_path()}", "-DCMAKE_BUILD_TYPE=Release"],
                    ["cmake", "--build", str(BUILD), f"-j{os.cpu_count() or 2}"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return BUILD / "albert-run-cpp"


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cpp")
    made = {"fill-mask default model (generated spiece.model)": export(None, "fill-mask", root / "default", log=quiet)}
    configs = [
        ("fill-mask", "unrolled fp32", {}, {}),
        ("text-classification", "loop, odd sizes", dict(max_position_embeddings=33, hidden_size=36,
                                                        num_attention_heads=3), dict(layers="loop")),
        ("question-answering", "unrolled fp32", {}, {}),
        ("question-answering", "loop int8", dict(vocab_size=1010), dict(
            layers="loop", int8=True, calibration_data=DATA / "squad_v2_dev_sample.json", calibration_method="minmax",
            calibration_samples=10)),
    ]
    for task, name, overrides, options in configs:
        checkpoint = root / f"checkpoint-{task}-{len(made)}"
        save_checkpoint(checkpoint, task, **overrides)
        made[f"{task} {name}"] = export(checkpoint, task, root / f"bundle-{len(made)}", log=quiet, **options)
    return made


def run(command: list, lines: list[str], cwd: Path, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    source = cwd / "input.txt"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return subprocess.run([*map(str, command), str(source), *options], capture_output=True, text=True, timeout=600)


def albert_run(bundle: Path, lines: list[str], cwd: Path, backend: str) -> list[str]:
    done = run([Path(sys.executable).parent / "albert-run", bundle], lines, cwd, ("--backend", backend))
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


# INT8 against albert-run's OpenVINO backend: onnxruntime's int8 kernels round differently (7.5e-3 seen)
@pytest.mark.parametrize("name, backend", [
    ("fill-mask default model (generated spiece.model)", "onnxruntime"), ("fill-mask unrolled fp32", "onnxruntime"),
    ("text-classification loop, odd sizes", "onnxruntime"), ("question-answering unrolled fp32", "onnxruntime"),
    ("question-answering loop int8", "openvino")])
def test_answers_equal_albert_runs(albert_run_cpp, bundles, tmp_path, name, backend):
    bundle = bundles[name]
    task = name.split()[0]
    lines = {"fill-mask": FILL_MASK, "text-classification": text_classification_lines(),
             "question-answering": [json.dumps(item, ensure_ascii=False) for item in QA]}[task]
    done = run([albert_run_cpp, bundle], lines, tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    ours, theirs = done.stdout.splitlines(), albert_run(bundle, lines, tmp_path, backend)
    assert len(ours) == len(theirs) == len(lines)
    for line, mine, expected in zip(lines, ours, theirs):
        assert mine == json.dumps(json.loads(mine), ensure_ascii=False)  # written as albert-run writes JSON
        assert_same(json.loads(mine), json.loads(expected), line[:60], atol=SCORE_ATOL)


def test_long_context_takes_many_windows(bundles):
    tokenizer = Tokenizer.from_file(str(bundles["question-answering unrolled fp32"] / "tokenizer.json"))
    assert len(tokenizer.encode(LONG_CONTEXT).ids) > 20 * 40  # windows of 40 tokens (the tiny model's positions)


@pytest.mark.parametrize("name", ["fill-mask default model (generated spiece.model)", "fill-mask unrolled fp32"])
def test_token_ids_offsets_and_words_equal_tokenizers(albert_run_cpp, bundles, tmp_path, name):
    bundle = bundles[name]
    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    lines = [json.dumps(text, ensure_ascii=False) for text in HARD + [LONG_CONTEXT]]
    done = run([albert_run_cpp, "--tokenize", bundle], lines, tmp_path)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(row) for row in done.stdout.splitlines()]
    assert len(rows) == len(lines)
    for text, row in zip(HARD + [LONG_CONTEXT], rows):
        encoding = tokenizer.encode(text)
        assert row == {"ids": encoding.ids, "offsets": [list(span) for span in encoding.offsets],
                       "words": encoding.word_ids}, (text, encoding.tokens)


def test_a_bad_line_stops_the_run_with_one_line_after_the_answers_before_it(albert_run_cpp, bundles, tmp_path):
    bundle = bundles["fill-mask unrolled fp32"]
    for bad, message in [("no mask here", "albert-run-cpp: line 2: No mask_token ([MASK]) found on the input"),
                         ('{"text": ', "albert-run-cpp: line 2: invalid JSON"),
                         ('{"question": "a", "context": "b"}', 'albert-run-cpp: line 2: fill-mask takes a JSON object'),
                         ("   ", "albert-run-cpp: line 2: blank line")]:
        done = run([albert_run_cpp, bundle], ["the [MASK] one", bad, "never [MASK] answered"], tmp_path)
        assert done.returncode == 1 and done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
        assert len(done.stdout.splitlines()) == 1
    source = tmp_path / "latin1.txt"
    source.write_bytes("caf\u00e9 [MASK]\n".encode("latin-1"))
    done = subprocess.run([albert_run_cpp, bundle, source], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (
        1, "", "albert-run-cpp: line 1: not valid UTF-8 (byte 0xe9 at byte 4); save the input as UTF-8\n")
    qa = run([albert_run_cpp, bundles["question-answering unrolled fp32"]], ["plain text"], tmp_path)
    assert qa.returncode == 1 and qa.stderr.startswith(
        "albert-run-cpp: line 1: question-answering takes JSON objects with keys") and qa.stderr.count("\n") == 1


def test_a_changed_file_or_an_unknown_task_is_refused_before_any_answer(albert_run_cpp, bundles, tmp_path):
    copy = shutil.copytree(bundles["fill-mask unrolled fp32"], tmp_path / "bundle")
    with open(copy / "spiece.model", "ab") as spiece:
        spiece.write(b"\0")
    done = run([albert_run_cpp, copy], ["the [MASK] one"], tmp_path)
    assert done.returncode == 1 and done.stdout == "" and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"albert-run-cpp: error: {copy / 'spiece.model'} does not match its sha256")
    manifest = json.loads((bundles["fill-mask unrolled fp32"] / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "task": "token-classification"}))
    shutil.copyfile(bundles["fill-mask unrolled fp32"] / "spiece.model", copy / "spiece.model")
    done = run([albert_run_cpp, copy], ["the [MASK] one"], tmp_path)
    assert done.returncode == 1 and done.stderr == (
        "albert-run-cpp: error: the bundle's task is token-classification; albert-run-cpp answers fill-mask, "
        "text-classification and question-answering (albert-run answers every task)\n")
    usage = subprocess.run([albert_run_cpp], capture_output=True, text=True, timeout=60)
    assert (usage.returncode, usage.stderr) == (2, "usage: albert-run-cpp [--tokenize] BUNDLE [INPUT|-]\n")
