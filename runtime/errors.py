"""Errors the runtime raises on purpose, each naming the problem and what to do about it; and how a command line
shows one. The leaf of the package: every other runtime module imports its errors from here.

Every error subclasses AlbertRuntimeError and keeps the builtin base it had (ValueError, KeyError, TypeError,
RuntimeError), so code that catches those, as it would around transformers, still catches them.
"""
from __future__ import annotations

__all__ = [
    "AlbertRuntimeError", "BundleError", "UnknownTaskError", "InputError", "OptionError", "BackendError",
    "UsageError", "CallError", "TensorError", "InputKeyError", "TruncationWarning", "PipelineException", "NoMaskTokenError", "UnknownChoiceError",
    "UnknownParameterError", "one_line", "is_failure", "error_line",
]


class AlbertRuntimeError(Exception):
    """The base of every error the runtime raises on purpose: the message names the problem and what to do."""


class BundleError(AlbertRuntimeError):
    """A bundle that is missing, incomplete, corrupt or of an unknown format."""


class UnknownTaskError(KeyError, ValueError, AlbertRuntimeError):
    """A task name no bundle has (a KeyError, as transformers' pipeline() raises for one, and a ValueError)."""

    def __str__(self) -> str:
        return str(self.args[0])


class InputError(ValueError, AlbertRuntimeError):
    """One input cannot be processed: empty text, no mask token, a JSON object with the wrong keys, ..."""


class TensorError(InputError):
    """A model input tensor that the bundle's model cannot take (name, dtype, rank, dims or a value out of range);
    `tensor` names it."""

    def __init__(self, tensor: str, message: str):
        super().__init__(message)
        self.tensor = tensor


class OptionError(ValueError, AlbertRuntimeError):
    """Options that cannot be honoured together or do not apply to the bundle's task."""


class BackendError(RuntimeError, AlbertRuntimeError):
    """The inference engine cannot be created or run (missing package, provider, device or engine file)."""


class CallError(TypeError, AlbertRuntimeError):
    """A call with arguments the function does not take, where Python (and HF) raise a TypeError."""


class InputKeyError(KeyError, AlbertRuntimeError):
    """An input object without a key it needs, where HF raises a KeyError."""

    def __str__(self) -> str:
        return str(self.args[0])


class UsageError(AlbertRuntimeError):
    """A command line that cannot be honoured (albert-run, albert-serve: exit status 2)."""


class TruncationWarning(UserWarning):
    """A text was longer than the model's maximum positions and was cut."""


class PipelineException(Exception):
    """transformers' `PipelineException`, same bases and (task, model, reason) signature, without importing it."""

    def __init__(self, task: str, model: str, reason: str):
        super().__init__(reason)
        self.task = task
        self.model = model


class NoMaskTokenError(PipelineException, InputError):
    """fill-mask got a text without the mask token (HF raises PipelineException; an InputError for our callers)."""


class UnknownChoiceError(KeyError, OptionError):
    """An option value outside its choices, where HF raises a KeyError (its enums' lookup); also a ValueError."""

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownParameterError(TypeError, OptionError):
    """A keyword argument the task does not take (HF: a TypeError from its _sanitize_parameters); `unknown` holds
    their names, so a command line can name its own flags for them."""

    def __init__(self, message: str, unknown: tuple[str, ...] = ()):
        super().__init__(message)
        self.unknown = unknown


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message ("" when it has none): a third-party one, quoted inside ours."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def one_line(exc: BaseException) -> str:
    """An exception as one line for a user: its message (a KeyError's without the quotes), never its class name,
    a Rust panic from tokenizers is named as such."""
    message = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
    message = " ".join(str(message).split())
    if type(exc).__name__ == "PanicException":
        return f"the tokenizer failed on this input ({message})"
    return message or "failed without saying why"


def is_failure(exc: BaseException) -> bool:
    """An exception that fails one input: any Exception, and the tokenizers library's Rust panics (which derive
    from BaseException only). KeyboardInterrupt and SystemExit are not."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def error_line(prog: str, exc: BaseException, line: int | None = None) -> str:
    """`prog: error: ...`, or for one input line `prog: line N: ...`: the stderr lines of albert-run/albert-serve."""
    return f"{prog}: {'error' if line is None else f'line {line}'}: {one_line(exc)}"
