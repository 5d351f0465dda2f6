"""The one error hierarchy of healthgate: every error names the field and the value."""

from __future__ import annotations

import reprlib

#: The most characters of a value an error message shows: enough to recognise it, and a
#: pasted blob or a value nested a million deep cannot flood a log or exhaust the stack.
SHOWN_CHARS = 100

_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxstring = _repr.maxother = _repr.maxlong = SHOWN_CHARS
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 10


def shown(value: object) -> str:
    """``repr(value)`` in at most :data:`SHOWN_CHARS` characters, whatever the value."""
    try:
        return cut(_repr.repr(value))
    except ValueError:  # an int past Python's digit limit
        return f"<{type(value).__name__}>"


def cut(text: str) -> str:
    """``text`` in at most :data:`SHOWN_CHARS` characters."""
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


class HealthgateError(Exception):
    """Base class of every error healthgate raises on purpose."""


class InvalidInput(HealthgateError, ValueError):
    """A value given to healthgate is not acceptable; nothing was stored."""

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
