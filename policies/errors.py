"""The one error hierarchy of healthgate: every error names the field and the value."""

from __future__ import annotations


class HealthgateError(Exception):
    """Base class of every error healthgate raises on purpose."""


class InvalidInput(HealthgateError, ValueError):
    """A value given to healthgate is not acceptable; nothing was stored."""

    def __init__(self, field: str, value: object, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"{field}={value!r}: {problem}")


#: How much of a value a conflict shows: enough to tell two apart, never a whole body.
_SHOWN_CHARS = 100


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


class IdempotencyConflict(HealthgateError):
    """An idempotency key already names a message with different content; nothing was
    stored. A key names one message: a new message needs a new key (Stripe's rule)."""

    def __init__(self, key: str, field: str, first: object, given: object, where: str) -> None:
        self.key = key
        self.field = field
        self.first = first
        self.given = given
        super().__init__(
            f"idempotency_key={_shown(key)}: {field} differs from {where} with this key "
            f"({_shown(first)} there, {_shown(given)} here); a new message needs a new key"
        )


class PolicyFileError(HealthgateError):
    """The policy file cannot be used; the message names the file and the key."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {problem}")
