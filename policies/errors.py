"""The one error hierarchy of healthgate: every error names the field and the value."""

from __future__ import annotations

import reprlib
from datetime import datetime

#: How much of an offending value a message shows: enough to recognise it, never a whole
#: body (a refused 1 MB webhook must not come back, nor sit in the logs, in full).
SHOWN_CHARACTERS = 100

# A container is shown a few levels and items deep: a value nested a million deep can
# neither flood a log nor exhaust the stack.
_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxstring = _repr.maxother = _repr.maxlong = SHOWN_CHARACTERS
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 10


def shown(value: object) -> str:
    """``repr(value)`` for a message: its first ``SHOWN_CHARACTERS`` characters, and the
    value's whole length when it is longer (``'aaa…'… (1,100,000 characters)``)."""
    if isinstance(value, datetime):
        # As the caller wrote it, not Python's constructor call.
        return repr(value.isoformat())
    if isinstance(value, str | bytes):
        text = repr(value[: SHOWN_CHARACTERS + 1])
        unit = "characters" if isinstance(value, str) else "bytes"
        if len(value) <= SHOWN_CHARACTERS and len(text) <= SHOWN_CHARACTERS:
            return text
        return f"{text[:SHOWN_CHARACTERS]}… ({len(value):,} {unit})"
    try:
        return cut(_repr.repr(value))
    except ValueError:  # an int past Python's digit limit has no repr
        return f"(an {type(value).__name__} too large to show)"


def cut(text: str) -> str:
    """``text`` in at most ``SHOWN_CHARACTERS`` characters, and its length when longer."""
    if len(text) <= SHOWN_CHARACTERS:
        return text
    return f"{text[:SHOWN_CHARACTERS]}… ({len(text):,} characters)"


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


class IdempotencyConflict(HealthgateError):
    """An idempotency key already names a message with different content; nothing was
    stored. A key names one message: a new message needs a new key (Stripe's rule)."""

    def __init__(self, key: str, field: str, first: object, given: object, where: str) -> None:
        self.key = key
        self.field = field
        self.first = first
        self.given = given
        super().__init__(
            f"idempotency_key={shown(key)}: {field} differs from {where} with this key "
            f"({shown(first)} there, {shown(given)} here); a new message needs a new key"
        )


class PolicyFileError(HealthgateError):
    """The policy file cannot be used; the message names the file and the key."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {problem}")
