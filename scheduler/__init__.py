"""healthgate: enqueue outbound messages; workers send them only when health allows.

``from scheduler import enqueue`` uses a client built from ``HEALTHGATE_*`` settings on
first use; build a :class:`Healthgate` yourself to choose the settings explicitly.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from policies.errors import HealthgateError, IdempotencyConflict, InvalidInput, PolicyFileError
from policies.statuses import DEFAULT_CATEGORY

if TYPE_CHECKING:
    from scheduler.client import Healthgate
    from scheduler.intake.messages import NewMessage
    from scheduler.settings import Settings

__all__ = [
    "Healthgate",
    "HealthgateError",
    "IdempotencyConflict",
    "InvalidInput",
    "NewMessage",
    "PolicyFileError",
    "Settings",
    "configure",
    "enqueue",
    "enqueue_many",
    "set_chat_health",
    "set_line_health",
]

#: Names imported on first use: ``import scheduler`` (and so every ``healthgate`` command,
#: ``--help`` first) does not pay for the database, the dispatcher and the web layer.
_LAZY = {
    "Healthgate": "scheduler.client",
    "NewMessage": "scheduler.intake.messages",
    "Settings": "scheduler.settings",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'scheduler' has no attribute {name!r}")


_default: Healthgate | None = None


def configure(settings: Settings | None = None) -> Healthgate:
    """Replace the client behind the module-level functions (closing the old one)."""
    global _default
    from scheduler.client import Healthgate

    if _default is not None:
        _default.close()
    _default = Healthgate(settings)
    return _default


def _client() -> Healthgate:
    return _default or configure()


def enqueue(
    to: str,
    body: str,
    line: str | None = None,
    chat_id: str | None = None,
    idempotency_key: str | None = None,
    send_at: datetime | None = None,
    expires_at: datetime | None = None,
    *,
    category: str = DEFAULT_CATEGORY,
    recipient_tz: str | None = None,
) -> str:
    """Enqueue one message; returns its id. See :meth:`Healthgate.enqueue`."""
    return _client().enqueue(
        to,
        body,
        line,
        chat_id,
        idempotency_key,
        send_at,
        expires_at,
        category=category,
        recipient_tz=recipient_tz,
    )


def enqueue_many(messages: Iterable[NewMessage | Mapping[str, Any]]) -> list[str]:
    """Enqueue many messages; returns their ids in order. See :meth:`Healthgate.enqueue_many`."""
    return _client().enqueue_many(messages)


def set_chat_health(line: str, recipient: str, status: str) -> bool:
    """Set a chat's health by hand (HEALTHY, AT_RISK, CRITICAL, OPTED_OUT)."""
    return _client().set_chat_health(line, recipient, status)


def set_line_health(line: str, status: str) -> bool:
    """Set a line's reputation or runtime status by hand."""
    return _client().set_line_health(line, status)
