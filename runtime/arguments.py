"""The range of every numeric option of the runtime's entry points (pipeline(), the backends, albert-run,
albert-serve), in one table, and the argparse pieces the command lines share (albert-export's too): each refuses a
bad value in one line. (albert-export's --opset, --calibration-samples and --atol are checked by the export's
options, whose bounds depend on the installed onnx/onnxruntime and the precision.)

`check_number(name, value)` checks a Python value (pipeline(), the backends; OptionError); `number(name)` is the
argparse type of the same entry (the command lines then exit 2 with argparse's one line). A number is finite;
an integer option takes an int (numpy's too), never a bool, a float or a string (`is_integer`, the project's one
test of "an integer, not a bool", the heads', the config's and the export options' too); an upper bound is a constant
or, for threads, the CPUs this process may run on (more threads than CPUs only slows a run down, and each is an
OS thread: 10**6 of them take minutes to start).
"""
from __future__ import annotations

import argparse
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable

from .errors import OptionError


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line, `PROG: error: ... (see PROG --help)`, exit 2 (argparse would print
    its usage block first): albert-run, albert-serve and albert-export say it alike."""

    def error(self, message: str):
        """Exit with status 2 and the message, pointing at --help."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def is_integer(value: Any, numpy: bool = True) -> bool:
    """Whether `value` is an integer and not a bool: an int, or a numpy integer too unless `numpy` is False (where
    the value goes on to JSON or a protobuf as it is)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Integral if numpy else int)


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, as a container's cpuset limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Range:
    """kind int: an integer; kind float: any finite number. maximum: a bound, or a function giving it now."""

    kind: type
    minimum: float
    maximum: float | Callable[[], float] | None = None
    maximum_is: str = ""  # what the maximum is, where that is not obvious ("the CPUs this process may use")

    def bound(self) -> float | None:
        """The largest allowed value (computed now where `maximum` is a callable), or None for no upper limit."""
        return self.maximum() if callable(self.maximum) else self.maximum

    def describe(self) -> str:
        """The values the range allows, in words for error messages ("a positive integer", "an integer from 1 to 8")."""
        what, maximum = ("an integer" if self.kind is int else "a finite number"), self.bound()
        if maximum is not None:
            why = f" ({self.maximum_is})" if self.maximum_is else ""
            return f"{what} from {_show(self.minimum)} to {_show(maximum)}{why}"
        if self.kind is int and self.minimum in (0, 1):
            return "a non-negative integer" if self.minimum == 0 else "a positive integer"
        return f"{what} of at least {_show(self.minimum)}"

    def holds(self, value: Any) -> bool:
        """Whether `value` is a finite real of the range's kind within its minimum and bound (booleans never are)."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.kind is int and not is_integer(value):
            return False
        if not math.isfinite(value) or value < self.minimum:
            return False
        maximum = self.bound()
        return maximum is None or value <= maximum


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


RANGES: dict[str, Range] = {
    # pipeline() and the backends
    "threads": Range(int, 1, cpu_count, "the CPUs this process may use"),
    "batch_size": Range(int, 1),
    "num_workers": Range(int, 0),
    # albert-run's task options (the heads check their values again, with HF's messages)
    "top_k": Range(int, 1),
    "doc_stride": Range(int, 0),
    "stride": Range(int, 0),
    "max_seq_len": Range(int, 1),
    "max_question_len": Range(int, 1),
    "max_answer_len": Range(int, 1),
    # albert-serve (serving.requests.Limits holds their defaults)
    "port": Range(int, 0, 65535),
    "max_batch_size": Range(int, 1, 4096),
    "max_batch_tokens": Range(int, 1, 1 << 24),
    "max_delay_ms": Range(float, 0, 60_000, "one minute"),
    "max_queue": Range(int, 1, 1_000_000),
    "timeout_s": Range(float, 0.001, 86_400, "one day"),
    "read_timeout_s": Range(float, 0.01, 3_600, "one hour"),
    "shutdown_timeout_s": Range(float, 0, 3_600, "one hour"),
    "max_request_bytes": Range(int, 1, 1 << 30, "1 GiB"),
    "max_response_bytes": Range(int, 1024, 1 << 32, "4 GiB"),
    "max_header_bytes": Range(int, 1024, 1 << 20, "1 MiB"),
    "max_windows": Range(int, 1, 1_000_000),
    "max_answers": Range(int, 1, 10_000_000),
    "max_input_chars": Range(int, 1, 100_000_000),
    "max_inputs": Range(int, 1, 1_000_000),
    "max_connections": Range(int, 1, 1_000_000),
    "workers": Range(int, 1, 64),
}


def check_number(name: str, value: Any) -> Any:
    """`value` when it is in RANGES[name], else OptionError: "threads must be an integer from 1 to 2 (...), got 3"."""
    entry = RANGES[name]
    if not entry.holds(value):
        raise OptionError(f"{name} must be {entry.describe()}, got {value!r}")
    return int(value) if entry.kind is int else value


def number(name: str) -> Callable[[str], float]:
    """The argparse type of RANGES[name]: argparse then says `argument --NAME: must be ..., got '...'`, exit 2."""
    entry = RANGES[name]

    def parse(text: str):
        try:
            value = entry.kind(text)
        except ValueError:
            value = None
        if value is None or not entry.holds(value):
            raise argparse.ArgumentTypeError(f"must be {entry.describe()}, got {text!r}")
        return value

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def comma_list(text: str) -> list[str]:
    """The comma-separated words of `text`, stripped; an argparse error where an item is empty."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty item; give words separated by commas")
    return items


def device_or_default(device: str | None, backend: str) -> str:
    """--device as given, else the backend's own: cuda for tensorrt (its engines run on a GPU only), else cpu."""
    return device or ("cuda" if backend == "tensorrt" else "cpu")


def device_argument(text: str) -> str:
    """--device: cpu, cuda or cuda:N."""
    from .backends import parse_device  # here: the backends check their threads with this module's table

    try:
        return str(parse_device(text))
    except OptionError:
        raise argparse.ArgumentTypeError(f"{text!r} is not cpu, cuda or cuda:N") from None
