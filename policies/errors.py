"""The one error hierarchy of healthgate: every error names the field and the value."""

from __future__ import annotations

#: How much of an offending value a message shows: enough to recognise it, never a whole
#: body (a refused 1 MB webhook must not come back, nor sit in the logs, in full).
SHOWN_CHARACTERS = 100


def shown(value: object) -> str:
    """``repr(value)`` for a message: its first ``SHOWN_CHARACTERS`` characters, and the
    value's whole length when it is longer (``'aaa…'… (1,100,000 characters)``)."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit has no repr
        return f"(an {type(value).__name__} too large to show)"
    if len(text) <= SHOWN_CHARACTERS:
        return text
    if isinstance(value, bytes):
        size = f"{len(value):,} bytes"
    elif isinstance(value, str):
        size = f"{len(value):,} characters"
    else:
        size = f"{len(text):,} characters shown as text"
    return f"{text[:SHOWN_CHARACTERS]}… ({size})"


class HealthgateError(Exception):
    """Base class of every error healthgate raises on purpose."""


class InvalidInput(HealthgateError, ValueError):
    """A value given to healthgate is not acceptable; nothing was stored.

    ``value`` is kept whole for programs; the message shows at most its first hundred
    characters (see :func:`shown`).
    """

    def __init__(self, field: str, value: object, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"{field}={shown(value)}: {problem}")


class PolicyFileError(HealthgateError):
    """The policy file cannot be used; the message names the file and the key."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {problem}")
