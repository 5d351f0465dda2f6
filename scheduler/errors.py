"""healthgate's errors, importable from the scheduler package too."""

from policies.errors import HealthgateError, InvalidInput, PolicyFileError

__all__ = ["HealthgateError", "InvalidInput", "PolicyFileError"]
