"""The outbox of final states: a row for each message that finished, written in the
transaction that finished it, read by the delivery task until the application's
callback has taken it (``scheduler.outcomes``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    Connection,
    Table,
    and_,
    delete,
    exists,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, aliased

from scheduler import constants
from scheduler.store.bulk import columns_of, insert_columns
from scheduler.store.models import (
    FAILING_SQL,
    UNDELIVERED_SQL,
    Message,
    Outcome,
    OutcomeListener,
)

_OUTCOMES = cast(Table, Outcome.__table__)
#: The partial indexes' predicates, as literal text, so the planner uses them.
_UNDELIVERED = text(UNDELIVERED_SQL)
_FAILING = text(FAILING_SQL)
#: A callback not delivered to for this long no longer counts as listening.
_LISTENING = timedelta(seconds=constants.OUTCOME_LISTENER_STALE_SECONDS)


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


class Claimed(NamedTuple):
    """Outcomes leased to one delivery run, which records how each went with ``token``."""

    token: str
    due: list[Pending]


def claim(session: Session, now: datetime, limit: int, lease: timedelta) -> Claimed:
    """Up to ``limit`` outcomes due for a delivery, oldest first, leased to the caller
    until ``now + lease`` so another delivery run leaves them alone meanwhile.

    An outcome waits while an earlier one of its message is undelivered (a
    ``needs_review`` that a late answer turned ``sent``): the application hears them in
    the order they happened.
    """
    earlier = aliased(Outcome)
    before_it = exists().where(
        earlier.message_id == Outcome.message_id,
        earlier.id < Outcome.id,
        earlier.delivered_at.is_(None),
        earlier.abandoned_at.is_(None),
    )
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
                ~before_it,
            )
            .order_by(Outcome.next_attempt_at, Outcome.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=Outcome)
        )
    )
    token = uuid.uuid4().hex
    if due:
        session.execute(
            update(Outcome)
            .where(Outcome.id.in_([row.id for row in due]))
            .values(lease_expires_at=now + lease, lease_token=token)
            .execution_options(synchronize_session=False)
        )
    return Claimed(token, [Pending._make(row) for row in due])


def _held(claimed: Claimed, ids: Sequence[int]) -> Any:
    """The rows of ``ids`` still leased to ``claimed``'s run."""
    return and_(Outcome.id.in_(list(ids)), Outcome.lease_token == claimed.token)


def delivered(connection: Connection, claimed: Claimed, ids: Sequence[int], now: datetime) -> None:
    """The callback took these: done (unless the lease passed to another run)."""
    if ids:
        connection.execute(
            update(Outcome)
            .where(_held(claimed, ids))
            .values(delivered_at=now, lease_expires_at=None, lease_token=None)
        )


def failed(
    connection: Connection,
    claimed: Claimed,
    outcome: Pending,
    error: str,
    retry_at: datetime,
) -> None:
    """A delivery of ``outcome`` failed: tried again at ``retry_at``."""
    connection.execute(
        update(Outcome)
        .where(_held(claimed, [outcome.id]))
        .values(
            attempts=outcome.attempts + 1,
            next_attempt_at=retry_at,
            lease_expires_at=None,
            lease_token=None,
            last_error=error,
        )
    )


def unclaim(connection: Connection, claimed: Claimed, ids: Sequence[int]) -> None:
    """Hand back outcomes claimed but not tried (the run stopped at a failure)."""
    if ids:
        connection.execute(
            update(Outcome)
            .where(_held(claimed, ids))
            .values(lease_expires_at=None, lease_token=None)
        )


def abandon(session: Session, now: datetime, older: timedelta) -> int:
    """Give up on outcomes whose deliveries have failed since ``older`` after their
    message finished; how many. Their last error stays, for ``status``. One never tried
    (no worker ran meanwhile) is tried first."""
    result = session.execute(
        update(Outcome)
        .where(_FAILING, Outcome.abandoned_at.is_(None), Outcome.at < now - older)
        .values(abandoned_at=now, lease_expires_at=None, lease_token=None)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def listening(session: Session, callback: str, now: datetime) -> None:
    """Note that a worker delivers outcomes to ``callback`` now."""
    updated = session.execute(
        update(OutcomeListener)
        .where(OutcomeListener.callback == callback)
        .values(last_seen=now)
        .execution_options(synchronize_session=False)
    )
    if not getattr(updated, "rowcount", 0):
        session.merge(OutcomeListener(callback=callback, last_seen=now))


def listeners(session: Session, now: datetime) -> list[str]:
    """The callbacks some worker delivered outcomes to lately."""
    return list(
        session.scalars(
            select(OutcomeListener.callback)
            .where(OutcomeListener.last_seen > now - _LISTENING)
            .order_by(OutcomeListener.callback)
        )
    )


def discard(session: Session, now: datetime) -> int:
    """Remove the undelivered outcomes, when no worker has delivered any lately: nobody
    is waiting for them. How many."""
    if listeners(session, now):
        return 0
    result = session.execute(
        delete(Outcome)
        .where(_UNDELIVERED, Outcome.at <= now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def purge(session: Session, before: datetime, now: datetime) -> int:
    """Forget outcomes of messages finished before ``before`` that were delivered or
    given up on, and those nobody took while no worker listened; how many."""
    told = or_(Outcome.delivered_at.is_not(None), Outcome.abandoned_at.is_not(None))
    forgotten = told if listeners(session, now) else None
    result = session.execute(
        delete(Outcome)
        .where(Outcome.at < before, *([forgotten] if forgotten is not None else []))
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def summary(session: Session, now: datetime) -> dict[str, Any]:
    """What ``status`` shows of the outbox: the callbacks workers deliver to, the
    undelivered outcomes, those whose delivery failed at least once, the oldest one's
    time, the ones given up on in the last day, and the latest error."""
    undelivered, retrying, oldest = session.execute(
        select(
            func.count(),
            func.count().filter(Outcome.attempts > 0),
            func.min(Outcome.at),
        ).where(_UNDELIVERED)
    ).one()
    abandoned = session.scalar(
        select(func.count()).where(
            Outcome.abandoned_at.is_not(None), Outcome.abandoned_at > now - timedelta(days=1)
        )
    )
    error = session.execute(
        select(Outcome.last_error, Outcome.message_id)
        .where(_FAILING)
        .order_by(Outcome.id.desc())
        .limit(1)
    ).first()
    return {
        "listening": listeners(session, now),
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
