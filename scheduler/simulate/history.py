"""A trace rebuilt from a store: its enqueues, inbound messages and health facts.

Read in pages and merged in time order, so a long history is never held in memory.
Nothing here asks a provider: the provider's side is what the store recorded.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from policies.config import Policy
from policies.keywords import Inbound as Kind
from scheduler.simulate.trace import ChatReport, Enqueue, Event, Inbound, LineReport, when
from scheduler.store.models import Chat, ConsentFact, Line, Message

#: Rows read a page from the store.
PAGE = 2000
#: The text that stands for a body retention has emptied (its digest is lost with it).
PURGED_BODY = "(body purged by retention)"
#: What a recorded reply said is not kept: any ordinary text stands for it.
REPLY_TEXT = "(reply)"


def history(
    sessions: sessionmaker[Session], policy: Policy, since: datetime, until: datetime
) -> Iterator[Event]:
    """Every event the store recorded in ``[since, until)``, in the order healthgate
    heard of them."""
    streams = [
        _enqueues(sessions, since, until),
        _inbound(sessions, policy, since, until),
        _reports(sessions, since, until),
    ]
    return heapq.merge(*streams, key=when)


def _enqueues(sessions: sessionmaker[Session], since: datetime, until: datetime) -> Iterator[Event]:
    with sessions() as session:
        lines = {line.id: line.number for line in session.scalars(select(Line))}
        rows = session.execute(
            select(
                Message.id,
                Message.created_at,
                Message.recipient,
                Message.body,
                Message.pinned,
                Message.line_id,
                Message.idempotency_key,
                Message.send_at,
                Message.expires_at,
            )
            .where(Message.created_at >= since, Message.created_at < until)
            .order_by(Message.created_at, Message.id)
            .execution_options(yield_per=PAGE)
        )
        for mid, created, to, body, pinned, line_id, key, send_at, expires_at in rows:
            line = lines.get(line_id) if pinned and line_id is not None else None
            # The message's own id stands for a missing key, so a replay maps one to one.
            yield Enqueue(created, to, body or PURGED_BODY, line, key or mid, send_at, expires_at)


def _inbound(
    sessions: sessionmaker[Session], policy: Policy, since: datetime, until: datetime
) -> Iterator[Event]:
    words = {
        Kind.OPT_OUT.value: policy.opt_out.opt_out_keywords[0],
        Kind.OPT_IN.value: policy.opt_out.opt_in_keywords[0]
        if policy.opt_out.opt_in_keywords
        else "OPTIN",
        Kind.REPLY.value: REPLY_TEXT,
    }
    with sessions() as session:
        rows = session.execute(
            select(ConsentFact.at, ConsentFact.kind, ConsentFact.recipient, Line.number)
            .join(Chat, Chat.id == ConsentFact.chat_id)
            .join(Line, Line.id == Chat.line_id)
            .where(ConsentFact.at >= since, ConsentFact.at < until)
            .order_by(ConsentFact.at, ConsentFact.id)
            .execution_options(yield_per=PAGE)
        )
        for at, kind, recipient, line in rows:
            yield Inbound(at, line, recipient, words.get(kind, REPLY_TEXT))


def _reports(sessions: sessionmaker[Session], since: datetime, until: datetime) -> Iterator[Event]:
    """The health facts the store keeps: each line's and chat's CRITICAL and HEALTHY
    times and latest reports (a store keeps the newest of each kind, not every one)."""
    found: list[Event] = []
    with sessions() as session:
        for line in session.scalars(select(Line)):
            for at, status in (
                (line.critical_at, "CRITICAL"),
                (line.healthy_at, "HEALTHY"),
                (line.reputation_updated_at, line.reported_reputation),
                (line.status_updated_at, line.reported_status),
                (line.active_at, "ACTIVE"),
            ):
                if at is not None and status and since <= at < until:
                    found.append(LineReport(at, line.number, status))
        chats = session.execute(
            select(
                Chat.recipient,
                Line.number,
                Chat.critical_at,
                Chat.healthy_at,
                Chat.health_updated_at,
                Chat.reported_health,
            )
            .join(Line, Line.id == Chat.line_id)
            .where(Chat.health_updated_at.is_not(None))
            .execution_options(yield_per=PAGE)
        )
        for recipient, number, critical, healthy, updated, reported in chats:
            for at, status in ((critical, "CRITICAL"), (healthy, "HEALTHY"), (updated, reported)):
                if at is not None and status and status != "OPTED_OUT" and since <= at < until:
                    found.append(ChatReport(at, number, recipient, status))
    # Health facts are few (a few per line and chat, not per message): sorted in memory.
    found = sorted(set(found), key=when)
    yield from found
