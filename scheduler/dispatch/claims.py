"""Claiming due messages: leases and fence tokens, so each message has one dispatcher."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from scheduler.runtime import Runtime
from scheduler.store.models import WAITING_SQL, Message, MessageState


class Claim(NamedTuple):
    """Messages leased to one dispatcher; only the holder of ``token`` may move them on."""

    token: str
    ids: list[str]


def claim_due(runtime: Runtime, now: datetime, limit: int) -> Claim:
    """Lease up to ``limit`` due messages atomically.

    PostgreSQL skips rows another claimer holds (``FOR UPDATE SKIP LOCKED``); SQLite
    transactions take the write lock first (``BEGIN IMMEDIATE``), so claims never
    overlap. Claims whose lease ran out go back to the queue first.
    """
    settings = runtime.settings
    token = uuid.uuid4().hex
    with runtime.sessions.begin() as session:
        expire_leases(session, now)
        in_flight = (
            session.scalar(
                select(func.count())
                .select_from(Message)
                .where(Message.state == MessageState.CLAIMED)
            )
            or 0
        )
        room = min(limit, settings.max_in_flight - in_flight)
        if room <= 0:
            return Claim(token, [])
        due = (
            select(Message.id)
            # The partial index's own predicate, as literal text, so that the planner
            # uses it whatever plan it caches.
            .where(text(WAITING_SQL), Message.not_before <= now)
            .order_by(Message.not_before, Message.id)
            .limit(room)
            .with_for_update(skip_locked=True)
        )
        ids = session.scalars(
            update(Message)
            .where(Message.id.in_(due.scalar_subquery()))
            .values(
                state=MessageState.CLAIMED.value,
                claim_token=token,
                lease_expires_at=now + timedelta(seconds=settings.lease_seconds),
                updated_at=now,
            )
            .returning(Message.id)
            .execution_options(synchronize_session=False)
        ).all()
    return Claim(token, list(ids))


def expire_leases(session: Session, now: datetime) -> None:
    """Return claims whose lease ran out to the queue; their fence token no longer holds."""
    session.execute(
        update(Message)
        .where(Message.state == MessageState.CLAIMED, Message.lease_expires_at <= now)
        .values(state=MessageState.QUEUED.value, claim_token=None, not_before=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
