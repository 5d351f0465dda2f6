"""Messages brought to each final state, for the tests of the callbacks on outcome."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from policies.outcome import Failure
from scheduler.client import Healthgate
from scheduler.dispatch.reconcile import reconcile
from scheduler.providers import Outbound, Sent
from scheduler.providers.base import SendFailed
from scheduler.providers.log import LogProvider
from scheduler.runtime import utcnow
from scheduler.store.models import Message, Outcome
from tests.conftest import LINE_A

#: One recipient for each way a message finishes.
SENT_TO = "+14155550131"
DROPPED_TO = "+14155550132"
EXPIRED_TO = "+14155550133"
FAILED_TO = "+14155550134"
REVIEW_TO = "+14155550135"
CANCELLED_TO = "+14155550136"

FINAL = ("sent", "dropped", "expired", "failed", "needs_review", "cancelled")


class WorkerDied(BaseException):
    """Stands for SIGKILL during a provider call: nothing after it runs."""


class Scripted:
    """The ``log`` provider, but refusing ``FAILED_TO`` for good and dying on
    ``REVIEW_TO``; it cannot deduplicate, so an unconfirmed send goes to a person."""

    deduplicates = False

    def __init__(self, inner: LogProvider) -> None:
        self.inner = inner

    def send(self, message: Outbound) -> Sent:
        if message.recipient == FAILED_TO:
            raise SendFailed(Failure.REJECTED, "HTTP 400, invalid recipient")
        if message.recipient == REVIEW_TO:
            raise WorkerDied
        return self.inner.send(message)

    def close(self) -> None:
        self.inner.close()


def finish_one_of_each(
    hg: Healthgate, now: datetime, step: timedelta = timedelta(seconds=1)
) -> dict[str, str]:
    """Bring one message to each final state, at times from ``now`` to a few ``step``s
    after it; their ids by state. Under a frozen clock every time is ``now``'s; under
    the real one (a worker in another thread or process reads it), a busy machine may
    take longer than ``step`` to enqueue, so each pass runs at the later of its planned
    time and the clock's."""
    inner = hg.runtime.providers.get("log")
    assert isinstance(inner, LogProvider)
    hg.runtime.providers._clients["log"] = Scripted(inner)
    try:
        hg.record_inbound(LINE_A, DROPPED_TO, "STOP", at=now)
        ids = {
            "sent": hg.enqueue(to=SENT_TO, body="your order shipped", line=LINE_A),
            "dropped": hg.enqueue(to=DROPPED_TO, body="after STOP", line=LINE_A),
            "expired": hg.enqueue(
                to=EXPIRED_TO, body="flash sale", line=LINE_A, expires_at=now + step
            ),
            "failed": hg.enqueue(to=FAILED_TO, body="no such number", line=LINE_A),
            "cancelled": hg.enqueue(
                to=CANCELLED_TO, body="tomorrow", line=LINE_A, send_at=now + timedelta(days=1)
            ),
        }
        hg.cancel(ids["cancelled"], actor="test")
        later = max(now + 2 * step, utcnow())
        hg.drain(later)
        # Alone in its batch: the worker "dies" during its provider call.
        ids["needs_review"] = hg.enqueue(to=REVIEW_TO, body="lost answer", line=LINE_A)
        dying = max(later, utcnow())
        with contextlib.suppress(WorkerDied):
            hg.drain(dying)
        after = timedelta(seconds=hg.runtime.settings.reconcile_after_seconds)
        reconcile(hg.runtime, dying + after + step, 10)
    finally:
        hg.runtime.providers._clients["log"] = inner
    states = {state: hg.explain(message_id)["state"] for state, message_id in ids.items()}
    assert states == {state: state for state in FINAL}
    return ids


def stored_outcomes(hg: Healthgate) -> list[dict[str, Any]]:
    """What each finished message stores, as its callback must get it."""
    with hg.runtime.sessions() as session:
        rows = session.execute(
            select(Outcome.id, Message.id, Message.idempotency_key, Message.state)
            .add_columns(Message.last_code, Message.last_reason, Message.updated_at)
            .join(Message, Message.id == Outcome.message_id)
            .order_by(Outcome.id)
        ).all()
    return [
        {
            "id": f"out_{outcome_id}",
            "type": f"message.{state}",
            "message_id": message_id,
            "key": key,
            "state": state,
            "code": code,
            "reason": reason,
            "at": at.isoformat(),
        }
        for outcome_id, message_id, key, state, code, reason, at in rows
    ]
