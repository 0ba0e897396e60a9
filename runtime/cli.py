"""albert-run: run a bundle over text lines, print one JSON line per input.

    albert-run BUNDLE [INPUT|-] [--backend onnxruntime|openvino|tensorrt] [--device cpu|cuda|cuda:N] [--batch-size N]
               [--top-k K] [--targets W,...] [--function-to-apply softmax|sigmoid|none]
               [--aggregation-strategy none|simple|first|average|max] [--ignore-labels L,...]
               [--doc-stride N] [--max-seq-len N] [--max-question-len N] [--max-answer-len N]
               [--handle-impossible-answer] [--no-align-to-words] [--pooling cls|mean|none] [--keep-going]

Input: INPUT, or stdin when it is "-" or left out. One input per line: plain text, or (a line starting with
"{") a JSON object: {"text", "text_pair"?} (text pairs for text-classification and pretraining),
{"question", "context"} (question-answering, which takes only JSON lines), {"prompt", "choices": [...]}
(multiple-choice, likewise). Only lines starting with "{" are read as JSON ("[MASK] ..." is text). Blank
lines are skipped. Lines are read 64 at a time (or --batch-size, if larger) and answered in batches, so a
slow producer sees output per 64 lines or at end of input. Output: one JSON line per input, in input order, the
result `runtime.pipeline(BUNDLE)(input, **options)` gives. Only the options given are passed, so every
default is the pipeline's (HF's); an option that does not apply to the bundle's task is an error.

Errors: a line that cannot be used (invalid JSON, wrong keys, empty text, no [MASK], ...) is reported on stderr
as "albert-run: line N: ..." and stops the run — lines before it have been printed. With --keep-going the
line is reported, skipped (no output line) and the run goes on; the exit status is then still 1.
Truncation warnings go to stderr as "albert-run: warning: ...".

Exit status: 0 every input answered; 1 an input line failed, or the bundle/backend cannot be used
(missing, corrupt, checksum mismatch, no engine); 2 usage errors and options that contradict each other or
the bundle's task. Messages are one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any, Iterable, Iterator

from .backends import BACKENDS, parse_device
from .bundle import BundleError
from .errors import BackendError, InputError, OptionError
from .taskspec import UnknownTaskError

PROG = "albert-run"
CHUNK = 64  # inputs sent to the pipeline together (then batched by --batch-size)


class UsageError(Exception):
    pass


def _comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty item; give words separated by commas")
    return items


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return value


def _device(text: str) -> str:
    try:
        return str(parse_device(text))
    except OptionError:
        raise argparse.ArgumentTypeError(f"{text!r} is not cpu, cuda or cuda:N") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Run an albert-export bundle; one JSON line per input line.")
    p.add_argument("bundle", help="bundle directory written by albert-export")
    p.add_argument("input", nargs="?", default="-", help="input file, one input per line; '-' or absent: stdin")
    p.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    p.add_argument("--device", type=_device, default=None, help="cpu (default for onnxruntime), cuda or cuda:N")
    p.add_argument("--batch-size", type=_positive, default=8)
    p.add_argument("--top-k", type=_positive)
    p.add_argument("--targets", type=_comma_list, help="fill-mask/pretraining: candidate words, comma-separated")
    p.add_argument("--function-to-apply", choices=("softmax", "sigmoid", "none"))
    p.add_argument("--aggregation-strategy", choices=("none", "simple", "first", "average", "max"))
    p.add_argument("--ignore-labels", type=_comma_list)
    p.add_argument("--doc-stride", type=_non_negative)
    p.add_argument("--max-seq-len", type=_positive)
    p.add_argument("--max-question-len", type=_positive)
    p.add_argument("--max-answer-len", type=_positive)
    p.add_argument("--handle-impossible-answer", action="store_true")
    p.add_argument("--no-align-to-words", action="store_true")
    p.add_argument("--pooling", choices=("cls", "mean", "none"))
    p.add_argument("--keep-going", action="store_true", help="report bad input lines and go on (exit status 1)")
    return p


OPTION_FLAGS = {
    "top_k": "--top-k",
    "targets": "--targets",
    "function_to_apply": "--function-to-apply",
    "aggregation_strategy": "--aggregation-strategy",
    "ignore_labels": "--ignore-labels",
    "doc_stride": "--doc-stride",
    "max_seq_len": "--max-seq-len",
    "max_question_len": "--max-question-len",
    "max_answer_len": "--max-answer-len",
    "handle_impossible_answer": "--handle-impossible-answer",
    "align_to_words": "--no-align-to-words",
    "pooling": "--pooling",
}


def head_options(args: argparse.Namespace) -> dict[str, Any]:
    """The task options the user gave (only those: every default stays the pipeline's)."""
    options = {name: getattr(args, name) for name in OPTION_FLAGS if getattr(args, name, None) is not None}
    if args.handle_impossible_answer:
        options["handle_impossible_answer"] = True
    else:
        options.pop("handle_impossible_answer", None)
    if args.no_align_to_words:
        options["align_to_words"] = False
    return options


def check_options(pipe, options: dict[str, Any]) -> None:
    if pipe.parameters is None:
        return
    wrong = [OPTION_FLAGS[name] for name in options if name not in pipe.parameters]
    if wrong:
        raise UsageError(f"{', '.join(wrong)} does not apply to a {pipe.task} bundle")


_JSON_INPUTS = {
    "fill-mask": ({"text"},),
    "feature-extraction": ({"text"},),
    "token-classification": ({"text"},),
    "text-classification": ({"text"}, {"text", "text_pair"}),
    "pretraining": ({"text"}, {"text", "text_pair"}),
    "question-answering": ({"question", "context"},),
    "multiple-choice": ({"prompt", "choices"},),
}


def parse_line(line: str, task: str) -> Any:
    """A line as the pipeline's input; InputError says what is wrong with it."""
    shapes = _JSON_INPUTS[task]
    if not line.lstrip().startswith("{"):
        if {"text"} not in shapes:
            keys = " or ".join(json.dumps(sorted(s)) for s in shapes)
            raise InputError(f"{task} takes JSON objects with keys {keys}, not plain text")
        return line
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(item, dict) or set(item) not in [set(s) for s in shapes]:
        keys = " or ".join(json.dumps(sorted(s)) for s in shapes)
        got = json.dumps(sorted(item)) if isinstance(item, dict) else type(item).__name__
        raise InputError(f"{task} takes a JSON object with keys {keys}; got {got}")
    if set(item) == {"text"}:
        return item["text"]
    return item


def numbered_lines(stream: Iterable[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(stream, start=1):
        line = line.rstrip("\r\n")
        if line.strip():
            yield number, line


def chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Runner:
    def __init__(self, pipe, options: dict[str, Any], keep_going: bool, out, err):
        self.pipe, self.options, self.keep_going, self.out, self.err = pipe, options, keep_going, out, err
        self.failed = 0

    def report(self, number: int, exc: Exception) -> bool:
        """Say what is wrong with a line; True when the run goes on."""
        self.failed += 1
        print(f"{PROG}: line {number}: {exc}", file=self.err)
        return self.keep_going

    def chunk(self, chunk: list[tuple[int, str]]) -> bool:
        parsed: list[tuple[int, Any, Exception | None]] = []
        for number, line in chunk:
            try:
                parsed.append((number, parse_line(line, self.pipe.task), None))
            except InputError as exc:
                parsed.append((number, None, exc))
        good = [item for _, item, error in parsed if error is None]
        results: list | None = None
        if good:
            try:
                results = self.pipe.run_each(good, **self.options)
            except OptionError:
                raise
            except ValueError:
                results = None  # one of them is bad: redo them one by one to name the line
        answers = iter(results or [])
        for number, item, error in parsed:
            if error is None and results is None:
                try:
                    result = self.pipe.run_each([item], **self.options)[0]
                except OptionError:
                    raise
                except ValueError as exc:
                    error = exc
            elif error is None:
                result = next(answers)
            if error is not None:
                if not self.report(number, error):
                    return False
                continue
            self.out.write(json.dumps(result, ensure_ascii=False, default=_plain_number) + "\n")
        self.out.flush()
        return True


def _plain_number(value: Any) -> Any:
    """numpy scalars (token-classification scores are float32, as HF returns them) as JSON numbers."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from .pipeline import Pipeline

    device = args.device or ("cuda" if args.backend == "tensorrt" else "cpu")
    pipe = Pipeline(args.bundle, backend=args.backend, device=device, batch_size=args.batch_size)
    options = head_options(args)
    check_options(pipe, options)
    if args.input == "-":
        stream = sys.stdin
    else:
        try:
            stream = open(args.input, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read {args.input}: {exc.strerror}") from None
    runner = Runner(pipe, options, args.keep_going, sys.stdout, sys.stderr)
    with stream:
        for chunk in chunks(numbered_lines(stream), max(CHUNK, args.batch_size)):
            if not runner.chunk(chunk):
                return 1
    return 1 if runner.failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    show_warning, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        return run(args)
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UsageError, OptionError, UnknownTaskError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (BundleError, BackendError, InputError, OSError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        warnings.showwarning = show_warning


if __name__ == "__main__":
    sys.exit(main())
