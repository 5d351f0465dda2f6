"""Pure decisions of healthgate and the policy file they read."""

from policies.config import Policy, load_policy, parse_policy
from policies.decision import Decision
from policies.errors import HealthgateError, IdempotencyConflict, InvalidInput, PolicyFileError
from policies.gate import ChatFacts, LineFacts, MessageFacts, decide
from policies.statuses import Action, ChatHealth, LineReputation, LineStatus
from policies.usage import LineUsage

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
