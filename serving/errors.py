"""The base of every error the server raises on purpose."""


class ServingError(Exception):
    """A request or a server setting that cannot be honoured: the message names why."""


class StageError(ValueError, ServingError):
    """A Triton stage asked for what it cannot do: an unknown stage, outputs of another batch, nothing to run."""


class ListenError(OSError, ServingError):
    """albert-serve cannot listen on the address it was given."""
