"""The outbox of final states: a row for each message that finished, written in the
transaction that finished it, read by the delivery task until the application's
callback has taken it (``scheduler.outcomes``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, Table, and_, delete, false, func, or_, select, text, update
from sqlalchemy.orm import Session

from scheduler.store.bulk import columns_of, insert_columns, update_rows
from scheduler.store.models import UNDELIVERED_SQL, Message, Outcome

_OUTCOMES = cast(Table, Outcome.__table__)
#: The partial index's predicate, as literal text, so the planner uses it.
_UNDELIVERED = text(UNDELIVERED_SQL)


class Settled(NamedTuple):
    """A message's final state as it was stored: what its callback is told."""

    message_id: str
    state: str
    code: str
    reason: str
    at: datetime


def write(connection: Connection, rows: Sequence[Settled]) -> None:
    """Put ``rows`` in the outbox, in the caller's transaction (one statement)."""
    if rows:
        columns = columns_of(Settled._fields, rows)
        insert_columns(
            connection,
            _OUTCOMES,
            {**columns, "next_attempt_at": columns["at"]},
            {"attempts": 0},
        )


class Pending(NamedTuple):
    """An outcome claimed for delivery, with what the callback gets."""

    id: int
    message_id: str
    idempotency_key: str | None
    state: str
    code: str
    reason: str
    at: datetime
    attempts: int


def claim(session: Session, now: datetime, limit: int, lease: timedelta) -> list[Pending]:
    """Up to ``limit`` outcomes due for a delivery, oldest first, leased to the caller
    until ``now + lease`` so another delivery task leaves them alone meanwhile."""
    due = list(
        session.execute(
            select(
                Outcome.id,
                Outcome.message_id,
                Message.idempotency_key,
                Outcome.state,
                Outcome.code,
                Outcome.reason,
                Outcome.at,
                Outcome.attempts,
            )
            .join(Message, Message.id == Outcome.message_id)
            .where(
                _UNDELIVERED,
                Outcome.next_attempt_at <= now,
                or_(Outcome.lease_expires_at.is_(None), Outcome.lease_expires_at <= now),
            )
            .order_by(Outcome.next_attempt_at, Outcome.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=Outcome)
        )
    )
    if due:
        session.execute(
            update(Outcome)
            .where(Outcome.id.in_([row.id for row in due]))
            .values(lease_expires_at=now + lease)
            .execution_options(synchronize_session=False)
        )
    return [Pending._make(row) for row in due]


def abandon(session: Session, now: datetime, older: timedelta) -> int:
    """Give up on outcomes still undelivered ``older`` after their message finished; how
    many. Their last error stays, for ``status``."""
    result = session.execute(
        update(Outcome)
        .where(_UNDELIVERED, Outcome.at < now - older)
        .values(abandoned_at=now, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def delivered(connection: Connection, ids: Sequence[int], now: datetime) -> None:
    """The callback took these: done."""
    update_rows(
        connection,
        _OUTCOMES,
        [{"id": i, "delivered_at": now, "lease_expires_at": None} for i in ids],
    )


def failed(
    connection: Connection, outcome: Pending, error: str, retry_at: datetime, now: datetime
) -> None:
    """A delivery of ``outcome`` failed: tried again at ``retry_at``."""
    connection.execute(
        update(Outcome)
        .where(Outcome.id == outcome.id)
        .values(
            attempts=outcome.attempts + 1,
            next_attempt_at=retry_at,
            lease_expires_at=None,
            last_error=error,
        )
    )


def unclaim(connection: Connection, ids: Sequence[int]) -> None:
    """Hand back outcomes claimed but not tried (the run stopped at a failure)."""
    if ids:
        connection.execute(
            update(Outcome).where(Outcome.id.in_(list(ids))).values(lease_expires_at=None)
        )


def discard(session: Session, limit: int) -> int:
    """Remove up to ``limit`` undelivered outcomes: no callback is configured, so nobody
    is waiting for them. How many."""
    ids = select(Outcome.id).where(_UNDELIVERED).order_by(Outcome.id).limit(limit)
    result = session.execute(
        delete(Outcome)
        .where(Outcome.id.in_(ids.scalar_subquery()))
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def purge(session: Session, before: datetime, undelivered: bool = False) -> int:
    """Forget outcomes delivered or given up on before ``before``, and with
    ``undelivered`` (no callback is configured) those still waiting that finished before
    it; how many."""
    result = session.execute(
        delete(Outcome)
        .where(
            or_(
                and_(Outcome.delivered_at.is_not(None), Outcome.delivered_at < before),
                and_(Outcome.abandoned_at.is_not(None), Outcome.abandoned_at < before),
                and_(_UNDELIVERED, Outcome.at < before) if undelivered else false(),
            )
        )
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def summary(session: Session, now: datetime) -> dict[str, Any]:
    """What ``status`` shows of the outbox: undelivered outcomes, those whose delivery
    failed at least once, the oldest one's time, the ones given up on in the last day,
    and the latest error."""
    undelivered, retrying, oldest = session.execute(
        select(
            func.count(),
            func.count().filter(Outcome.attempts > 0),
            func.min(Outcome.at),
        ).where(_UNDELIVERED)
    ).one()
    abandoned = session.scalar(
        select(func.count()).where(Outcome.abandoned_at > now - timedelta(days=1))
    )
    error = session.execute(
        select(Outcome.last_error, Outcome.message_id)
        .where(Outcome.last_error.is_not(None), Outcome.delivered_at.is_(None))
        .order_by(Outcome.id.desc())
        .limit(1)
    ).first()
    return {
        "undelivered": undelivered,
        "retrying": retrying,
        "oldest_undelivered": oldest.isoformat() if oldest else None,
        "abandoned_24h": abandoned or 0,
        "last_error": {"message_id": error.message_id, "error": error.last_error}
        if error
        else None,
    }


def of_message(session: Session, message_id: str) -> list[dict[str, Any]]:
    """Each outcome of one message and how its delivery stands, for ``explain``."""
    rows = session.scalars(
        select(Outcome).where(Outcome.message_id == message_id).order_by(Outcome.id)
    )
    return [
        {
            "state": row.state,
            "at": row.at.isoformat(),
            "attempts": row.attempts,
            "delivered_at": row.delivered_at.isoformat() if row.delivered_at else None,
            "abandoned_at": row.abandoned_at.isoformat() if row.abandoned_at else None,
            "next_attempt_at": None
            if row.delivered_at or row.abandoned_at
            else row.next_attempt_at.isoformat(),
            "last_error": row.last_error,
        }
        for row in rows
    ]
