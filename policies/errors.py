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


class PolicyFileError(HealthgateError):
    """The policy file cannot be used; the message names the file and the key."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {problem}")
