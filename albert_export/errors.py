"""The base of every error the exporter raises on purpose; the CLI prints its message alone.

Each error keeps a builtin base beside it (ValueError, RuntimeError, FileExistsError, ...), so callers that
catch those still do.
"""


class ExportError(Exception):
    """An export that cannot go on: the message names the problem and what to do."""


class ExportOptionError(ExportError, ValueError):
    """An export option with a value this exporter cannot honour."""
