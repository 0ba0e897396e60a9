"""The base of every error the server raises on purpose."""


class ServingError(Exception):
    """A request or a server setting that cannot be honoured: the message names why."""
