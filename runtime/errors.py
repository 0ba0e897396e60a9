"""Errors the runtime raises on purpose: each names the problem and what to do about it."""
from __future__ import annotations

from .bundle import BundleError
from .taskspec import UnknownTaskError

__all__ = ["BundleError", "UnknownTaskError", "InputError", "OptionError", "BackendError", "TruncationWarning"]


class InputError(ValueError):
    """One input cannot be processed: empty text, no mask token, a JSON object with the wrong keys, ..."""


class OptionError(ValueError):
    """Options that cannot be honoured together or do not apply to the bundle's task."""


class BackendError(RuntimeError):
    """The inference engine cannot be created or run (missing package, provider, device or engine file)."""


class TruncationWarning(UserWarning):
    """A text was longer than the model's maximum positions and was cut."""


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
