"""healthgate's errors, importable from the scheduler package too."""

from policies.errors import HealthgateError, IdempotencyConflict, InvalidInput, PolicyFileError

__all__ = ["HealthgateError", "IdempotencyConflict", "InvalidInput", "PolicyFileError"]
