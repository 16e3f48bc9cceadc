"""Errors the trainers raise, shared so callers catch one type whichever trainer ran."""


class NonFiniteError(FloatingPointError):
    """A NaN or inf appeared in scores, losses, advantages or gradients; the message names the step."""
