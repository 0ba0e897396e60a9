"""The base of every error the exporter raises on purpose; the CLI prints its message alone."""


class ExportError(Exception):
    """An export that cannot go on: the message names the problem and what to do."""
