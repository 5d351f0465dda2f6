"""The opt-out ledger: every opt-out, opt-in and reply kept as a fact with its own time,
and the opt-out the gate sees derived from them, whatever order they arrived in.

Under the account scope (the default) the facts of one recipient, on any line, decide
for every chat with them; under the chat scope, each chat's own facts decide for it.
Only an opt-in later in event time (in the ``linq`` mode, any later message) clears an
opt-out: a health report, a provider's HEALTHY or a person setting health never does.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from policies.codes import Code
from policies.config import OptOutScope, Policy
from policies.e164 import to_e164
from policies.keywords import Inbound, classify
from policies.signals import Consent, not_ahead, opted_out_since
from policies.statuses import Action
from scheduler.store import transitions
from scheduler.store.lines import get_line
from scheduler.store.models import WAITING_STATES, Chat, ConsentFact, Message, MessageState, OptOut
from scheduler.store.router import chat_for
from scheduler.store.transitions import REPLY_HOLDS

#: How long a source's name may be in the ledger (the column's size).
_SOURCE_LENGTH = 200


def lock_chats(session: Session, chat: Chat) -> Chat:
    """Lock every chat with ``chat``'s recipient, in id order (the order dispatch takes
    them), and return ``chat``: an opt-out and a dispatch of one recipient serialize."""
    locked = session.scalars(
        select(Chat).where(Chat.recipient == chat.recipient).order_by(Chat.id).with_for_update()
    ).all()
    return next(c for c in locked if c.id == chat.id)


def chat_of(session: Session, line_number: str, recipient: str, now: datetime) -> Chat:
    """The chat of a declared line and a recipient (created if new), locked with the
    recipient's others."""
    line = get_line(session, line_number)
    return lock_chats(session, chat_for(session, line, to_e164(recipient, "recipient"), now))


def record_inbound(
    session: Session,
    policy: Policy,
    line_number: str,
    recipient: str,
    text: str,
    now: datetime,
    *,
    at: datetime | None = None,
    source: str = "inbound message",
) -> Inbound:
    """Record a message from the recipient: a reply, an opt-out or an opt-in.

    ``at`` is when the recipient sent it (default ``now``). It is kept in the ledger
    whatever arrived before it; a late one never moves ``last_inbound_at`` back.
    """
    sent = not_ahead(at or now, "at", now, policy.signals.time_tolerance)
    chat = chat_of(session, line_number, recipient, now)
    kind = classify(text, policy.opt_out)
    if chat.last_inbound_at is None or sent > chat.last_inbound_at:
        chat.last_inbound_at = sent
    if chat.first_inbound_at is None or sent < chat.first_inbound_at:
        chat.first_inbound_at = sent
    since = note(session, policy, chat, kind, sent, now, source)
    if since is None and kind is not Inbound.OPT_OUT:
        # A reply lifts the AT_RISK throttle: its messages are looked at again now.
        transitions.release(
            session,
            Message.chat_id == chat.id,
            REPLY_HOLDS,
            now,
            Code.RELEASE_REPLY,
            "the recipient replied",
        )
    return kind


def opt_out(
    session: Session, policy: Policy, chat: Chat, at: datetime, now: datetime, source: str
) -> datetime | None:
    """Record an opt-out said at ``at`` (a provider's answer, its chat report, a person);
    since when the recipient is opted out, as the ledger now says."""
    return note(session, policy, chat, Inbound.OPT_OUT, at, now, source)


def note(
    session: Session,
    policy: Policy,
    chat: Chat,
    kind: Inbound,
    at: datetime,
    now: datetime,
    source: str,
) -> datetime | None:
    """Add one fact to the ledger and derive the opt-out again; since when the chat is
    opted out (None when it is not). The caller holds the recipient's chats locked."""
    session.add(
        ConsentFact(
            recipient=chat.recipient,
            chat_id=chat.id,
            kind=kind.value,
            at=at,
            source=source[:_SOURCE_LENGTH],
            received_at=now,
        )
    )
    session.flush()
    return derive(session, policy, chat, now, source)


def derive(
    session: Session, policy: Policy, chat: Chat, now: datetime, source: str
) -> datetime | None:
    """Recompute the opt-out of ``chat`` (of every chat with its recipient, under the
    account scope) from the ledger, and drop what it covers."""
    account = policy.opt_out.scope is OptOutScope.ACCOUNT
    which = ConsentFact.recipient == chat.recipient if account else ConsentFact.chat_id == chat.id
    facts = [
        Consent(Inbound(kind), at)
        for kind, at in session.execute(select(ConsentFact.kind, ConsentFact.at).where(which))
    ]
    since = opted_out_since(facts, policy.opt_out)
    chats = (
        session.scalars(select(Chat).where(Chat.recipient == chat.recipient)).all()
        if account
        else [chat]
    )
    for each in chats:
        each.opted_out_at = since
    if account:
        _mark_account(session, chat.recipient, since, source)
    if since is not None:
        covered = Message.recipient == chat.recipient if account else Message.chat_id == chat.id
        drop(session, covered, now, source)
    return since


def _mark_account(session: Session, recipient: str, since: datetime | None, source: str) -> None:
    """Keep the account's opt-out row equal to what the ledger says."""
    if since is None:
        session.execute(delete(OptOut).where(OptOut.recipient == recipient))
        return
    values = {"recipient": recipient, "opted_out_at": since, "source": source[:_SOURCE_LENGTH]}
    builder = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = builder(OptOut).values(values)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[OptOut.recipient],
            set_={"opted_out_at": statement.excluded.opted_out_at},
        )
    )


def drop(session: Session, covered: ColumnElement[bool], now: datetime, source: str) -> int:
    """Drop every waiting or claimed message ``covered`` selects; how many.

    Claimed messages are dropped too: their dispatch task's fence then fails. A message
    already SENDING was committed to go before this opt-out was recorded.
    """
    ids = transitions.move_where(
        session,
        Action.DROP,
        covered,
        [*WAITING_STATES, MessageState.CLAIMED],
        now,
        Code.CHAT_OPTED_OUT,
        f"opted out ({source})",
        not_before=None,
        claim_token=None,
    )
    return len(ids)


def opted_out(session: Session, policy: Policy, chat: Chat) -> datetime | None:
    """Since when ``chat`` is opted out, as last derived; None when it is not."""
    if chat.opted_out_at is not None or policy.opt_out.scope is OptOutScope.CHAT:
        return chat.opted_out_at
    row = session.get(OptOut, chat.recipient)
    return row.opted_out_at if row else None
