"""What the export says while it works: lines on stderr through `logging` (the `albert_export` logger), a tqdm bar
for each long loop when stderr is a terminal, and one summary line per stage with its time. stdout is kept for the
bundle path; `stdout_to_stderr` keeps native libraries (TensorRT's builder) off it too.

    with stage("validated") as done:
        ...
        done("on 4 shapes: max abs diff logits 1.2e-06")   # -> "validated on 4 shapes: ... (0.8 s)"
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator

LOGGER = logging.getLogger("albert_export")


class _CurrentStderr(logging.StreamHandler):
    """A handler on whatever sys.stderr is when a record is written (pytest's capsys replaces it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _Prefixed(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.ERROR:
            return "albert-export: error: " + super().format(record)
        if record.levelno >= logging.WARNING:
            return "albert-export: warning: " + super().format(record)
        return super().format(record)


def configure(level: int = logging.INFO) -> None:
    """The CLI's set-up: the albert_export logger writes plain lines to stderr at `level` (--quiet: WARNING,
    --verbose: DEBUG). Library callers keep logging's defaults (and their own handlers)."""
    handler = _CurrentStderr()
    handler.setFormatter(_Prefixed("%(message)s"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level)
    LOGGER.propagate = False


def log(message: str) -> None:
    """`message` as one info line of the albert_export logger (the stages' default log)."""
    LOGGER.info(message)


def bars_shown() -> bool:
    """Bars only on a terminal: a log file gets the stage lines, never bar fragments."""
    stream = sys.stderr
    return LOGGER.isEnabledFor(logging.INFO) and hasattr(stream, "isatty") and stream.isatty()


def bar(items: Iterable, *, desc: str, total: int | None = None, unit: str = "it",
        size: Callable[[object], int] | None = None) -> Iterator:
    """`items`, with a tqdm bar advanced by size(item) (default 1) after each item is used."""
    if not bars_shown():
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with the export extra
        yield from items
        return
    with tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True) as progress:
        for item in items:
            yield item
            progress.update(size(item) if size else 1)


@contextlib.contextmanager
def stage(name: str, log: Callable[[str], None] = log) -> Iterator[Callable[[str], None]]:
    """Log `name summary (t s)` when the block ends without an exception; the block gives the summary."""
    summary = [""]
    started = time.perf_counter()
    yield lambda text: summary.__setitem__(0, text)
    log(" ".join(filter(None, [name, summary[0], f"({time.perf_counter() - started:.1f} s)"])))


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """File descriptor 1 points at fd 2 inside the block: native code that prints cannot reach stdout."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
