"""albert-run's input loop: bytes in, one numbered line at a time, one JSON line (an answer or an error) out.

Lines are read as bytes and decoded one by one, so a line that is not UTF-8 is one bad line, not a failed run.
Each read takes what the input has ready (a terminal: the line just typed; a pipe: what the producer has
written; a file: a block), and only those lines are batched together, so an interactive user gets each answer as
soon as the line is entered while a file is still answered in full batches. Output line k always answers input
line k: a bad line (blank, not UTF-8, invalid JSON, wrong keys, what the head refuses) stops the run, or with
keep_going gets `{"error": ..., "line": N}` on its own line.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Iterator

import numpy as np

from .errors import BackendError, InputError, OptionError, error_line, is_failure, one_line
from .pipelines import head_for, split_outputs
from .tasks.base import Features

BLOCK = 1 << 16  # bytes asked for per read; a read returns less when less is ready
MAX_BATCH = 64  # lines sent to the pipeline together (then batched by batch_size)


def byte_reader(stream) -> Callable[[int], bytes]:
    """read(n): at most n bytes, what the stream has ready (one read of the file descriptor), b"" at the end."""
    raw = getattr(stream, "buffer", stream)
    if hasattr(raw, "read1"):
        return raw.read1
    return lambda size: stream.read(size).encode("utf-8", "surrogatepass")  # a text-only stream (io.StringIO)


def ready_lines(read: Callable[[int], bytes], limit: int = MAX_BATCH) -> Iterator[list[tuple[int, bytes]]]:
    """Groups of (line number, raw line) holding only lines that were ready together, at most `limit` each."""
    number, partial = 0, []
    while data := read(BLOCK):
        *complete, rest = data.split(b"\n")
        if not complete:
            partial.append(rest)
            continue
        complete[0] = b"".join([*partial, complete[0]])
        partial = [rest] if rest else []
        for start in range(0, len(complete), limit):
            group = complete[start: start + limit]
            yield [(number + i, line) for i, line in enumerate(group, start=1)]
            number += len(group)
    if partial:
        yield [(number + 1, b"".join(partial))]


def decode_line(raw: bytes, number: int) -> str:
    """One input line as text, without a trailing CR or a leading byte order mark; InputError if not UTF-8 or blank."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}); save the input as UTF-8"
        ) from None
    if number == 1 and text.startswith("\ufeff"):  # a byte order mark, as some editors write
        text = text[1:]
    if not text.strip():
        raise InputError("blank line; give one input per line (output line N answers input line N)")
    return text


def parse_line(line: str, task: str) -> Any:
    """A line as the pipeline's input (the JSON objects its head takes); InputError says what is wrong with it."""
    shapes = head_for(task).CALL.json_objects
    keys = " or ".join(json.dumps(sorted(s)) for s in shapes)
    if not line.lstrip().startswith("{"):
        if {"text"} not in shapes:
            raise InputError(f"{task} takes JSON objects with keys {keys}, not plain text")
        return line
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        message = exc.msg.removesuffix(" at")  # "Unterminated string starting at" + " at column"
        raise InputError(f"invalid JSON ({message} at column {exc.colno})") from None
    except RecursionError:
        raise InputError("invalid JSON: nested too deeply for this reader") from None
    except ValueError:  # json's int() of a number past sys.get_int_max_str_digits()
        raise InputError("invalid JSON: a number too long to read (more than 4300 digits)") from None
    if not isinstance(item, dict) or set(item) not in shapes:
        got = json.dumps(sorted(item)) if isinstance(item, dict) else f"a JSON {_json_kind(item)}"
        raise InputError(f"{task} takes a JSON object with keys {keys}; got {got}")
    try:
        json.dumps(item, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("a string holds an unpaired surrogate escape (\\ud800-\\udfff); give valid Unicode") from None
    except RecursionError:
        raise InputError("invalid JSON: nested too deeply for this reader") from None
    if set(item) == {"text"}:
        return item["text"]
    return item


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


class LineRunner:
    """Answers numbered lines through a pipeline, writing one JSON line per input line to `out`."""

    def __init__(self, pipe, options: dict[str, Any], keep_going: bool, out, err, prog: str = "albert-run"):
        self.pipe, self.options, self.keep_going = pipe, options, keep_going
        self.out, self.err, self.prog = out, err, prog
        self.failed = 0

    def run(self, read: Callable[[int], bytes]) -> bool:
        """Answer every line; False when a bad line stopped the run."""
        for group in ready_lines(read, max(MAX_BATCH, self.pipe.runner.batch_size)):
            if not self.group(group):
                return False
        return True

    def group(self, lines: list[tuple[int, bytes]]) -> bool:
        """Answer a group of numbered lines in order, reporting each bad one; False where a failure stops the run."""
        items: list[tuple[int, Any, BaseException | None]] = []
        for number, raw in lines:
            try:
                items.append((number, parse_line(decode_line(raw, number), self.pipe.task), None))
            except InputError as exc:
                items.append((number, None, exc))
        good = [item for _, item, error in items if error is None]
        answers = iter(self.answers(good))
        for number, item, error in items:
            result = next(answers) if error is None else error
            if not isinstance(result, BaseException):
                try:
                    self.out.write(answer_json(result) + "\n")
                    continue
                except BackendError as exc:
                    result = exc
            if not self.report(number, result):
                self.out.flush()
                return False
        self.out.flush()
        return True

    def answers(self, items: list) -> list:
        """One result, or the exception that input failed with, per item: the pipeline's stages, the parameters
        checked once, every input preprocessed and postprocessed on its own (so a bad one fails alone), all their
        windows through one forward. An OptionError stops the run (it is no one line's fault)."""
        if not items:
            return []
        settings = self.pipe.sanitize(**self.options)
        features = [self.attempt(self.pipe.preprocess, item, settings) for item in items]
        outputs = iter(self.outputs([feature for feature in features if isinstance(feature, Features)]))
        answers = []
        for feature in features:
            if isinstance(feature, Features):
                windows = next(outputs)
                feature = windows if isinstance(windows, BaseException) else self.attempt(
                    self.pipe.postprocess, feature, windows)
            answers.append(feature)
        return answers

    def outputs(self, features: list[Features]) -> list:
        """Each input's window outputs, or the exception its windows failed with (a failing batch is run again
        one input at a time, to name the line)."""
        try:
            return split_outputs(self.pipe.forward([w for feature in features for w in feature.windows]), features)
        except OptionError:
            raise
        except BaseException as exc:
            if not is_failure(exc):
                raise
            if len(features) == 1:
                return [exc]
        return [outputs for feature in features for outputs in self.outputs([feature])]

    @staticmethod
    def attempt(stage: Callable, *args: Any) -> Any:
        """The stage's value, or the exception that fails this one input."""
        try:
            return stage(*args)
        except OptionError:
            raise
        except BaseException as exc:
            if not is_failure(exc):
                raise
            return exc

    def report(self, number: int, exc: BaseException) -> bool:
        """Say what is wrong with a line; True when the run goes on."""
        self.failed += 1
        print(error_line(self.prog, exc, number), file=self.err)
        if self.keep_going:
            self.out.write(json.dumps({"error": one_line(exc), "line": number}, ensure_ascii=False) + "\n")
        return self.keep_going


def answer_json(result: Any) -> str:
    """A result as one JSON text (albert-run's lines, albert-serve's answers): numpy values as JSON values, and
    NaN or infinity refused (JSON has neither) with a BackendError, the same for both."""
    try:
        return json.dumps(result, ensure_ascii=False, allow_nan=False, default=json_value)
    except ValueError:
        raise BackendError("the answer holds a NaN or infinite score, which JSON cannot carry: the model's outputs "
                           "are not finite (an fp16 overflow, a broken model); re-export the bundle") from None
    except TypeError as exc:
        raise BackendError(f"the answer cannot be written as JSON ({exc})") from None


def json_value(value: Any) -> Any:
    """json.dumps' default: numpy values in results (float32 token-classification scores, return_tensors arrays)
    as JSON values (albert-run's lines, albert-serve's answers)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
