"""The policy applied to held messages, and the policy each worker runs.

A policy change re-examines the messages held under a rule it changed, once, whichever
worker sees it first: the applied policy is one row, moved from one fingerprint to the
next by a compare-and-set that only one worker wins.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from scheduler import constants
from scheduler.store.models import PolicyState, WorkerSeen


class Applied(NamedTuple):
    """A policy as applied (or to apply) to held messages."""

    fingerprint: str
    #: Its normal form (``policies.changes.normalised``).
    policy: dict[str, Any]
    #: Its file's modification time (ns): a file only newer than the applied one applies.
    file_mtime_ns: int


def applied(session: Session) -> Applied | None:
    """The policy last applied, None before any worker recorded one."""
    row = session.get(PolicyState, constants.POLICY_APPLIED)
    return None if row is None else Applied(row.fingerprint, row.policy, row.file_mtime_ns)


def _insert(session: Session) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def record_first(session: Session, policy: Applied, now: datetime, worker: str) -> bool:
    """Record ``policy`` as applied when none is (nothing held changes: there is nothing
    to compare with); whether this call recorded it."""
    statement = (
        _insert(session)(PolicyState)
        .values(
            name=constants.POLICY_APPLIED, applied_at=now, applied_by=worker, **policy._asdict()
        )
        .on_conflict_do_nothing(index_elements=["name"])
        .returning(PolicyState.name)
    )
    return session.execute(statement).first() is not None


def take_change(
    session: Session, previous: Applied, policy: Applied, now: datetime, worker: str
) -> bool:
    """Move the applied policy from ``previous`` to ``policy``, if no other worker moved
    it since and ``policy``'s file is the newer; whether this call did.

    On PostgreSQL a second worker's update waits for the first's transaction and then
    finds the fingerprint changed; SQLite runs one writer at a time.
    """
    moved = session.execute(
        update(PolicyState)
        .where(
            PolicyState.name == constants.POLICY_APPLIED,
            PolicyState.fingerprint == previous.fingerprint,
            PolicyState.file_mtime_ns < policy.file_mtime_ns,
        )
        .values(applied_at=now, applied_by=worker, **policy._asdict())
        .returning(PolicyState.name)
        .execution_options(synchronize_session=False)
    )
    return moved.first() is not None


def record_worker(session: Session, name: str, fingerprint: str, now: datetime) -> None:
    """Record that worker ``name`` runs the policy ``fingerprint`` at ``now``: one upsert."""
    statement = _insert(session)(WorkerSeen).values(
        name=name, fingerprint=fingerprint, last_seen=now
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["name"],
            set_={"fingerprint": statement.excluded.fingerprint, "last_seen": now},
        )
    )


class Worker(NamedTuple):
    """One worker process as last seen."""

    name: str
    fingerprint: str
    last_seen: datetime
    #: Not seen for ``WORKER_STALE_TICKS`` ticks: idle, or gone.
    stale: bool
    #: It runs the policy applied to held messages.
    applied: bool


def workers(
    session: Session, now: datetime, tick: timedelta = timedelta(seconds=constants.TICK_SECONDS)
) -> list[Worker]:
    """Every worker seen, the most recently seen first, stale ones marked."""
    current = applied(session)
    since = now - tick * constants.WORKER_STALE_TICKS
    rows = session.scalars(
        select(WorkerSeen).order_by(WorkerSeen.last_seen.desc(), WorkerSeen.name)
    )
    return [
        Worker(
            row.name,
            row.fingerprint,
            row.last_seen,
            stale=row.last_seen < since,
            applied=current is not None and row.fingerprint == current.fingerprint,
        )
        for row in rows
    ]
