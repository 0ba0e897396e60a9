"""The base of every error graphs/ raises on purpose; callers catch it by type."""


class GraphError(ValueError):
    """A graph cannot be assembled, optimized or converted as asked: the message names why and what to do."""
