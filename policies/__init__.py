"""Pure decisions of healthgate and the policy file they read."""

import importlib
from typing import TYPE_CHECKING, Any

from policies.errors import HealthgateError, IdempotencyConflict, InvalidInput, PolicyFileError

if TYPE_CHECKING:
    from policies.config import Policy, load_policy, parse_policy
    from policies.decision import Decision
    from policies.gate import ChatFacts, LineFacts, MessageFacts, decide
    from policies.statuses import Action, ChatHealth, LineReputation, LineStatus
    from policies.usage import LineUsage

#: Where each name lives, imported on first use: a module that needs only the errors (every
#: ``healthgate`` command) does not pay for pydantic and the policy file's model.
_LAZY = {
    "Policy": "policies.config",
    "load_policy": "policies.config",
    "parse_policy": "policies.config",
    "Decision": "policies.decision",
    "ChatFacts": "policies.gate",
    "LineFacts": "policies.gate",
    "MessageFacts": "policies.gate",
    "decide": "policies.gate",
    "Action": "policies.statuses",
    "ChatHealth": "policies.statuses",
    "LineReputation": "policies.statuses",
    "LineStatus": "policies.statuses",
    "LineUsage": "policies.usage",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'policies' has no attribute {name!r}")


__all__ = [
    "Action",
    "ChatFacts",
    "ChatHealth",
    "Decision",
    "HealthgateError",
    "IdempotencyConflict",
    "InvalidInput",
    "LineFacts",
    "LineReputation",
    "LineStatus",
    "LineUsage",
    "MessageFacts",
    "Policy",
    "PolicyFileError",
    "decide",
    "load_policy",
    "parse_policy",
]
