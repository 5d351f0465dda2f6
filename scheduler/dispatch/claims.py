"""Claiming due messages: leases and fence tokens, so each message has one dispatcher."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from policies.statuses import Action
from scheduler.runtime import Runtime
from scheduler.store import transitions
from scheduler.store.models import WAITING_SQL, WAITING_STATES, Message, MessageState


class Claim(NamedTuple):
    """Messages leased to one dispatcher; only the holder of ``token`` may move them on."""

    token: str
    ids: list[str]


def claim_due(runtime: Runtime, now: datetime, limit: int) -> Claim:
    """Lease up to ``limit`` due messages atomically, highest priority first, then oldest.

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
            # Highest priority first: when the caps cannot take every due message, a
            # passcode is claimed (and so decided and sent) before any campaign.
            .order_by(Message.priority.desc(), Message.not_before, Message.id)
            .limit(room)
            .with_for_update(skip_locked=True)
        )
        ids = transitions.move_where(
            session,
            Action.CLAIM,
            Message.id.in_(due.scalar_subquery()),
            WAITING_STATES,
            now,
            claim_token=token,
            lease_expires_at=now + timedelta(seconds=settings.lease_seconds),
        )
    return Claim(token, ids)


def expire_leases(session: Session, now: datetime) -> None:
    """Return claims whose lease ran out to the queue; their fence token no longer holds."""
    transitions.move_where(
        session,
        Action.REQUEUE,
        Message.lease_expires_at <= now,
        [MessageState.CLAIMED],
        now,
        claim_token=None,
        not_before=now,
    )
