"""Errors a user can act on."""


class ShapeError(ValueError):
    """Operands whose shapes cannot go together; the message names the op and both shapes."""
