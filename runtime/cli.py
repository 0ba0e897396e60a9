"""albert-run: run a bundle over text lines, print one JSON line per input.

    albert-run BUNDLE [INPUT|-] [--backend onnxruntime|openvino|tensorrt] [--device cpu|cuda|cuda:N] [--batch-size N]
               [--top-k K] [--targets W,...] [--function-to-apply softmax|sigmoid|none]
               [--aggregation-strategy none|simple|first|average|max] [--ignore-labels L,...]
               [--doc-stride N] [--stride N] [--max-seq-len N] [--max-question-len N] [--max-answer-len N]
               [--handle-impossible-answer] [--no-align-to-words] [--pooling cls|mean|none] [--keep-going]

Input: INPUT, or stdin when it is "-" or left out. One input per line: plain text, or (a line starting with
"{") a JSON object: {"text", "text_pair"?} (text pairs for text-classification and pretraining),
{"question", "context"} (question-answering, which takes only JSON lines), {"prompt", "choices": [...]}
(multiple-choice, likewise). Only lines starting with "{" are read as JSON ("[MASK] ..." is text). Lines
are answered as they arrive: what the input has ready is batched (up to 64 lines, or --batch-size if larger),
so a terminal or a slow producer gets each answer at once and a file is answered in full batches (runtime.lines).
Output: one JSON line per input line, in input order, the result `runtime.pipeline(BUNDLE)(input, **options)`
gives. Only the options given are passed, so every
default is the pipeline's (HF's); an option that does not apply to the bundle's task is an error.

Errors: a line that cannot be used (blank, not UTF-8, invalid JSON, wrong keys, empty text, no [MASK], ...) is
reported on stderr as "albert-run: line N: ..." and stops the run — lines before it have been printed. With
--keep-going the line also gets {"error": "...", "line": N} as its output line and the run goes on; the exit
status is then still 1. Ctrl-C stops with exit status 130, keeping the answers printed so far.
Truncation warnings go to stderr as "albert-run: warning: ...".

Exit status: 0 every input answered; 1 an input line failed, or the bundle/backend cannot be used
(missing, corrupt, checksum mismatch, no engine); 2 usage errors and options that contradict each other or
the bundle's task. Messages are one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

from . import __version__
from .arguments import Parser, comma_list, device_argument, device_or_default, number
from .errors import (AlbertRuntimeError, OptionError, UnknownParameterError, UnknownTaskError, UsageError, error_line,
                     is_failure)

PROG = "albert-run"


def parser() -> argparse.ArgumentParser:
    """Every option says what it does and its default; task options left out keep the HF pipeline's default."""
    from .backends import BACKENDS

    p = Parser(prog=PROG, description="Run an albert-export bundle; one JSON line per input line.",
                                epilog="Task options that are left out keep the Hugging Face pipeline's default "
                                       "(as shown); one that does not apply to the bundle's task is an error.")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("bundle", help="bundle directory written by albert-export")
    p.add_argument("input", nargs="?", default="-",
                   help="input file, one input per line: plain text or a JSON object (default: '-', stdin)")
    engine = p.add_argument_group("engine")
    engine.add_argument("--backend", choices=BACKENDS, default="onnxruntime",
                        help="inference engine: onnxruntime or openvino run model.onnx, tensorrt runs engine.plan "
                             "(default: onnxruntime)")
    engine.add_argument("--device", type=device_argument, default=None,
                        help="cpu, cuda or cuda:N, the N-th GPU (default: cpu; cuda for tensorrt)")
    engine.add_argument("--batch-size", type=number("batch_size"), default=8, metavar="N",
                        help="inputs run through the model together (default: 8)")
    engine.add_argument("--keep-going", action="store_true",
                        help="report a bad input line as {\"error\", \"line\"} and go on; the exit status is still 1 "
                             "(default: stop at the first bad line)")
    task = p.add_argument_group("task options")
    task.add_argument("--top-k", type=number("top_k"), metavar="K",
                      help="answers per input (default: fill-mask/pretraining 5, question-answering 1, "
                           "text-classification the best label only, multiple-choice all choices)")
    task.add_argument("--targets", type=comma_list, metavar="W,...",
                      help="fill-mask/pretraining: score only these candidate words, comma-separated "
                           "(default: every token)")
    task.add_argument("--function-to-apply", choices=("softmax", "sigmoid", "none"),
                      help="text-classification: how logits become scores (default: softmax; sigmoid for one label or "
                           "multi-label problems; none for regression)")
    task.add_argument("--aggregation-strategy", choices=("none", "simple", "first", "average", "max"),
                      help="token-classification: how sub-word tokens are grouped into entities (default: none)")
    task.add_argument("--ignore-labels", type=comma_list, metavar="L,...",
                      help="token-classification: labels left out of the answer, comma-separated (default: O)")
    task.add_argument("--doc-stride", type=number("doc_stride"), metavar="N",
                      help="question-answering: tokens shared by consecutive windows of a long context "
                           "(default: 128)")
    task.add_argument("--stride", type=number("stride"), metavar="N",
                      help="token-classification: split long texts into chunks overlapping by N tokens; needs "
                           "--aggregation-strategy other than none (default: no chunks, long texts truncated)")
    task.add_argument("--max-seq-len", type=number("max_seq_len"), metavar="N",
                      help="question-answering: tokens per window, question included "
                           "(default: 384, or the model's maximum if smaller)")
    task.add_argument("--max-question-len", type=number("max_question_len"), metavar="N",
                      help="question-answering: tokens kept of the question (default: 64)")
    task.add_argument("--max-answer-len", type=number("max_answer_len"), metavar="N",
                      help="question-answering: longest answer span, in tokens (default: 15)")
    task.add_argument("--handle-impossible-answer", action="store_true",
                      help="question-answering: allow the empty answer (SQuAD 2.0) (default: off)")
    task.add_argument("--no-align-to-words", action="store_true",
                      help="question-answering: answer spans on token, not word, boundaries "
                           "(default: aligned to words)")
    task.add_argument("--pooling", choices=("cls", "mean", "none"),
                      help="feature-extraction: one vector per input (cls, mean) or per token (default: none)")
    return p


OPTION_FLAGS = {
    "top_k": "--top-k",
    "targets": "--targets",
    "function_to_apply": "--function-to-apply",
    "aggregation_strategy": "--aggregation-strategy",
    "ignore_labels": "--ignore-labels",
    "doc_stride": "--doc-stride",
    "stride": "--stride",
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
    """The pipeline's own check, before any line is read; the options it refuses named by their flags."""
    try:
        pipe.check_parameters(options)
    except UnknownParameterError as exc:
        wrong = [flag for name, flag in OPTION_FLAGS.items() if name in exc.unknown]
        raise UsageError(f"{', '.join(wrong)} does not apply to a {pipe.task} bundle") from None


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Answer each input line with the bundle's pipeline; 0 when all were read and none failed, else 1."""
    from .lines import LineRunner, byte_reader
    from .pipelines import Pipeline

    device = device_or_default(args.device, args.backend)
    pipe = Pipeline(args.bundle, backend=args.backend, device=device, batch_size=args.batch_size)
    options = head_options(args)
    check_options(pipe, options)
    if args.input == "-":
        stream = sys.stdin
    else:
        try:
            stream = open(args.input, "rb")
        except OSError as exc:
            raise UsageError(f"cannot read {args.input}: {exc.strerror}") from None
    runner = LineRunner(pipe, options, args.keep_going, sys.stdout, sys.stderr, PROG)
    with stream:
        finished = runner.run(byte_reader(stream))
    return 0 if finished and not runner.failed else 1


def main(argv: list[str] | None = None) -> int:
    """The albert-run command: its exit status, errors printed in one line to stderr."""
    try:  # the backends (parser()), the line runner and the pipeline load here, with numpy, tokenizers and the heads
        args = parser().parse_args(argv)
        from . import lines, pipelines  # noqa: F401 - what run() uses
    except KeyboardInterrupt:  # Ctrl-C while they load: exit 130 without a traceback (nothing was answered yet)
        return 130
    show_warning, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        return run(args)
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UsageError, OptionError, UnknownTaskError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (AlbertRuntimeError, OSError, ValueError) as exc:
        print(error_line(PROG, exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # answers written so far stay written
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:  # a library's own error types, Rust panics: still one line, never a traceback
        if not is_failure(exc):
            raise
        print(error_line(PROG, exc), file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = show_warning


if __name__ == "__main__":
    sys.exit(main())
