"""albert-export: parse, one library call, print the bundle path (stdout carries nothing else). Progress goes to
stderr through `logging` (--quiet: warnings and errors only; --verbose: TensorRT's messages too); a failure is one
`albert-export: error: ...` line and exit status 1 (2 for bad usage: an unknown flag, task or option value, flags
that do not combine); ALBERT_EXPORT_DEBUG=1 shows the traceback. Warnings (e.g. a task head that is not in the
checkpoint) are one `albert-export: warning: ...` line each. SIGINT (Ctrl-C), SIGTERM and SIGHUP, at any point
from start-up on, remove the export's temporary files and exit 128 + the signal number (130, 143, 129).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import warnings

from graphs.profiles import PROFILE_NAMES
from runtime import __version__
from runtime.arguments import Parser
from runtime.errors import first_line
from runtime.extras import missing_module_line
from runtime.taskspec import TASKS, UnknownTaskError, canonical_task, input_dims

from .progress import LOGGER, configure

DESCRIPTION = "Export ALBERT to a validated ONNX bundle (layer groups unrolled or kept as a Loop, weights once)."


def task_help() -> str:
    """The tasks for --help: each canonical name, with its aliases in parentheses."""
    return ", ".join(f"{spec.name} ({', '.join(spec.aliases)})" if spec.aliases else spec.name
                     for spec in TASKS.values())


class Interrupted(KeyboardInterrupt):
    """A termination signal, raised where the program is, so every cleanup that Ctrl-C runs runs for it too."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def raise_interrupted(signum, frame) -> None:
    """The stop signals' handler: ignore any further stop signal, raise Interrupted where the program is."""
    for other in STOP_SIGNALS:  # one clean-up: a second signal must not interrupt the first one's
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(signum)


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def build_parser() -> argparse.ArgumentParser:
    """albert-export's command-line parser: every flag, with its default and help."""
    from .engine import DEFAULT_SHAPES
    from .opsets import DEFAULT_OPSET, MIN_OPSET

    parser = Parser(prog="albert-export", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"albert-export {__version__}")
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", dest="log_level", action="store_const", const=logging.WARNING,
                      default=logging.INFO, help="only warnings and errors on stderr")
    talk.add_argument("-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG,
                      help="also TensorRT's messages and other details")
    source = parser.add_argument_group("model")
    source.add_argument("--model", default=None, metavar="PATH_OR_HUB_ID",
                        help="checkpoint directory or hub id (default: the embedded tiny model)")
    source.add_argument("--task", default=None,
                        help=f"one of: {task_help()} (default: from config.json's architectures, as optimum's "
                             "--task auto; fill-mask for the embedded model)")
    graph = parser.add_argument_group("graph")
    graph.add_argument("--layers", choices=("unrolled", "loop"), default="unrolled",
                       help="inline the shared layer group per layer, or keep it as an ONNX Loop (default unrolled)")
    graph.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                       help=f"ONNX opset, {MIN_OPSET} up to the newest the installed onnx and onnxruntime run "
                            f"(default {DEFAULT_OPSET})")
    graph.add_argument("--optimize", choices=PROFILE_NAMES, default="none",
                       help="graph fusions, weights kept shared: portable (standard ops), onnxruntime "
                            "(com.microsoft Attention, FastGelu), or onnxruntime-without-attention (the same without "
                            "Attention, so that --int8 quantizes every MatMul) (default none)")
    graph.add_argument("--pooler-output", action="store_true",
                       help="feature-extraction: also output pooler_output (optimum's validate_model_outputs "
                            "then refuses the graph: its feature-extraction config has last_hidden_state only)")
    graph.add_argument("--ort-format", action="store_true",
                       help="also write model.ort and required_operators.config, for onnxruntime's minimal "
                            "(mobile, reduced web) builds")
    graph.add_argument("--output-hidden-states", action="store_true",
                       help="add output hidden_states [L+1, batch, sequence, hidden]: embeddings, then each layer")
    graph.add_argument("--output-attentions", action="store_true",
                       help="add output attentions [L*inner_group_num, batch, heads, sequence, sequence]: every "
                            "softmax (L x heads x sequence^2 floats per example; keeps attention unfused)")
    precision = parser.add_argument_group("precision")
    precision.add_argument("--fp16", action="store_true",
                           help="mixed fp16: weights and MatMuls fp16, LayerNorm/Softmax/sums fp32, IO dtypes kept")
    precision.add_argument("--int8", action="store_true",
                           help="INT8 QDQ from static calibration (one DequantizeLinear per shared weight)")
    precision.add_argument("--calibration-data", default=None, metavar="FILE",
                           help="text lines, JSONL or SQuAD JSON (default: built-in examples)")
    precision.add_argument("--calibration-method", choices=("minmax", "percentile", "entropy"), default="percentile",
                           help="activation range: minmax, percentile (99.99) or entropy (KL) (default percentile)")
    precision.add_argument("--calibration-samples", type=int, default=128, metavar="N",
                           help="examples to calibrate on, spread over the file (default 128)")
    target = parser.add_argument_group("engine")
    target.add_argument("--engine", choices=("onnxruntime", "tensorrt"), default="onnxruntime",
                        help="onnxruntime: model.onnx only; tensorrt: also build engine.plan (TensorRT-RTX builds on "
                             "CPU-only machines for compute capabilities 8.0/8.6/8.9/12.0) (default onnxruntime)")
    target.add_argument("--shapes", default=None, metavar="MIN:OPT:MAX",
                        help="TensorRT profile, each BxS (multiple-choice BxCxS), e.g. 1x1:8x128:32x384 "
                             f"(default {DEFAULT_SHAPES})")
    checks = parser.add_argument_group("validation")
    checks.add_argument("--no-validate", dest="validate", action="store_false",
                        help="skip the onnxruntime-vs-PyTorch check (the manifest then has no validation)")
    checks.add_argument("--atol", type=float, default=None,
                        help="absolute tolerance for every output (default: the table for the precision)")
    checks.add_argument("--min-agreement", type=float, default=None, metavar="SHARE",
                        help="INT8: the share of held-out examples whose top-1 answers must equal fp32's, for each "
                             "of the task's measures (default: the task's, e.g. 0.9 for labels)")
    output = parser.add_argument_group("output")
    output.add_argument("--output", default=None, metavar="DIR",
                        help="bundle directory (default ./albert-<task>-<precision>)")
    output.add_argument("--overwrite", action="store_true",
                        help="replace an existing bundle at --output (never a non-bundle folder)")
    output.add_argument("--triton", default=None, metavar="DIR",
                        help="also write a Triton Inference Server model repository for the bundle into DIR")
    output.add_argument("--triton-backend", choices=("onnxruntime", "openvino", "python"), default=None,
                        help="the repository's model step: Triton's onnxruntime or openvino backend between python "
                             "pre/postprocessing models, or python: the runtime's stages in one model "
                             "(default onnxruntime)")
    return parser


def export_options(args: argparse.Namespace) -> dict:
    """argparse namespace -> keyword arguments of albert_export.export (same names, underscores)."""
    return {
        "output_dir": args.output,
        "layers": args.layers,
        "opset": args.opset,
        "validate": args.validate,
        "atol": args.atol,
        "min_agreement": args.min_agreement,
        "overwrite": args.overwrite,
        "optimize": args.optimize,
        "fp16": args.fp16,
        "int8": args.int8,
        "calibration_data": args.calibration_data,
        "calibration_method": args.calibration_method,
        "calibration_samples": args.calibration_samples,
        "engine": args.engine,
        "shapes": args.shapes,
        "pooler_output": args.pooler_output,
        "ort_format": args.ort_format,
        "output_hidden_states": args.output_hidden_states,
        "output_attentions": args.output_attentions,
        "triton": args.triton,
        "triton_backend": args.triton_backend,
    }


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """warnings.showwarning for the CLI: the message alone, as one warning line of the log."""
    LOGGER.warning(str(message))


def main(argv: list[str] | None = None) -> int:
    """albert-export's entry point: run() with stop signals raised as Interrupted; the exit status (128 + the signal
    when interrupted)."""
    in_main_thread = threading.current_thread() is threading.main_thread()  # only there can signals be handled
    previous = {signum: signal.signal(signum, raise_interrupted) for signum in STOP_SIGNALS} if in_main_thread else {}
    try:
        return run(argv)
    except KeyboardInterrupt as exc:  # also during the imports: torch takes seconds to load
        if os.environ.get("ALBERT_EXPORT_DEBUG"):
            raise
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"albert-export: interrupted ({signal.Signals(signum).name}); no partial bundle is left behind",
              file=sys.stderr)
        return 128 + signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def check_flags(args: argparse.Namespace) -> str | None:
    """The flag checks that need no torch, made before it is imported (seconds): the task's name (returned
    canonical), the precision flags, --shapes with its engine. ExportOptions.checked makes the others, and these
    again (the task's name apart), by the same functions."""
    from .engine import check_engine, parse_shapes
    from .precision import precision_from_options

    task = canonical_task(args.task) if args.task is not None else None
    precision_from_options(args.fp16, args.int8, args.calibration_data, args.calibration_method,
                           args.calibration_samples)
    check_engine(args.engine, args.shapes, args.optimize)
    if args.shapes is not None:
        parse_shapes(args.shapes, rank=len(input_dims(task)) if task is not None else 2)
    return task


def run(argv: list[str] | None) -> int:
    """Parse `argv`, check the flags, export, print the bundle's path; the exit status (2: usage error, 1: failure)."""
    args = build_parser().parse_args(argv)
    configure(args.log_level)
    try:
        task = check_flags(args)
    except ModuleNotFoundError as exc:  # an install without the export extra
        return refuse_missing(exc)
    except Exception as exc:  # a usage error, said before torch is loaded
        return refuse(exc, 2)
    try:
        from .exporter import ExportOptions, bundle_from_checkpoint
    except ModuleNotFoundError as exc:  # an install without the export extra
        return refuse_missing(exc)
    # export()'s two halves: whatever the option check raises is a usage error (exit 2), what follows exits 1
    try:
        options = ExportOptions.checked(task, **export_options(args))
    except Exception as exc:  # an unknown task, a value or combination of flags that cannot work
        return refuse(exc, 2)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning  # one line per warning, no source excerpt
            path = bundle_from_checkpoint(args.model, options)
    except UnknownTaskError as exc:  # --task left out and config.json does not settle it: a usage error
        return refuse(exc, 2, debug=False)
    except ModuleNotFoundError as exc:  # e.g. onnxruntime (the cpu or gpu extra) missing for validation
        return refuse_missing(exc)
    except Exception as exc:  # one clear line, never a traceback (unless asked for)
        return refuse(exc, 1)
    print(path)
    return 0


def refuse(exc: Exception, status: int, debug: bool = True) -> int:
    """One `albert-export: error:` line on stderr (with debug and ALBERT_EXPORT_DEBUG=1, the traceback)."""
    if debug and os.environ.get("ALBERT_EXPORT_DEBUG"):
        raise exc
    print(f"albert-export: error: {failure_message(exc)}", file=sys.stderr)
    return status


def refuse_missing(exc: ModuleNotFoundError) -> int:
    """A package an extra brings is not installed: one line naming it and the pip command, exit 1."""
    line = missing_module_line(exc.name or "", "albert-export")
    if line is None or os.environ.get("ALBERT_EXPORT_DEBUG"):
        raise exc
    print(f"albert-export: error: {line}", file=sys.stderr)
    return 1


def intended_error_types() -> tuple[type[BaseException], ...]:
    """The bases of the errors each package raises on purpose (imported when a failure is shown: not at start-up)."""
    from calibration import CalibrationError
    from graphs.errors import GraphError
    from runtime.errors import AlbertRuntimeError

    from .errors import ExportError

    return ExportError, GraphError, CalibrationError, AlbertRuntimeError


def failure_message(exc: BaseException) -> str:
    """What follows `albert-export: error: `: our errors' own message; a third-party one gets what it lacks."""
    message = first_line(exc)
    if isinstance(exc, MemoryError):
        return ("out of memory" + (f" ({message})" if message else "") +
                "; the model is too large for this machine's memory, check config.json's sizes")
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}; check the path and its permissions"
    if message and isinstance(exc, intended_error_types()):
        return message
    return (f"unexpected failure: {message or type(exc).__name__.lower()}; run with ALBERT_EXPORT_DEBUG=1 for the "
            "traceback, and please report it")


if __name__ == "__main__":
    sys.exit(main())
