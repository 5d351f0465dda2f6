"""Acting on messages by hand: cancel, release, retry.

Each action is a move of ``scheduler.store.transitions``, recorded on every message it
moves with the code, the reason and who asked (the decision's ``actor``). Each is
idempotent: asked again, it finds nothing left to move, changes nothing and is no error.

Every message an action may move is locked first (``FOR UPDATE`` on PostgreSQL, in id
order as a dispatcher locks its batch; SQLite's write lock serializes the rest), then
moved only from the states its move starts from. A dispatcher locks its claimed rows
the same way and re-checks its claim, so a message is cancelled or sent, never both.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import ColumnElement, and_, exists, select, true
from sqlalchemy.orm import Session

from policies.codes import Code
from policies.e164 import to_e164
from policies.errors import HealthgateError, InvalidInput
from policies.statuses import Action
from scheduler.operate.finding import parse_code
from scheduler.store import transitions
from scheduler.store.models import (
    CANCELLABLE_STATES,
    RETRYABLE_STATES,
    DecisionRecord,
    Line,
    Message,
    MessageState,
)

#: Longest reason kept on a decision by hand: a note, not a document.
REASON_MAX = 500


class Acted(NamedTuple):
    """What one action did."""

    #: The messages it moved now.
    changed: list[str]
    #: The messages named that were already where it leads (asked twice).
    unchanged: list[str]


class NotActionable(HealthgateError):
    """The message named cannot take this action in the state it is in."""

    def __init__(self, message_id: str, state: str, why: str) -> None:
        super().__init__(f"message {message_id} is {state}: {why}")
        self.message_id = message_id
        self.current = state


def cancel(
    session: Session,
    now: datetime,
    actor: str,
    *,
    message_id: str | None = None,
    idempotency_key: str | None = None,
    to: str | None = None,
    line: str | None = None,
    reason: str | None = None,
) -> Acted:
    """Cancel one message (by id or idempotency key), or every message still waiting
    for a recipient (on one line, if given). A message already ``sending`` or finished
    is refused by name (``NotActionable``); one already cancelled is left as it is."""
    actor, note = _who(actor), _note(reason)
    named = _one_of(message_id=message_id, idempotency_key=idempotency_key, to=to)
    if line is not None and to is None:
        raise InvalidInput("line", line, "cancels by recipient only: give the recipient too")
    if named == "to":
        which = and_(Message.recipient == to_e164(to, "to"), _on_line(session, line))
        ids = _lock(session, which, CANCELLABLE_STATES)
        unchanged: list[str] = []
    else:
        message = _lock_named(session, message_id, idempotency_key)
        state = MessageState(message.state)
        if state is MessageState.CANCELLED:
            return Acted([], [message.id])
        if state not in CANCELLABLE_STATES:
            raise NotActionable(
                message.id,
                state.value,
                "only a message not yet sending can be cancelled",
            )
        ids, unchanged = [message.id], []
    moved = transitions.move_where(
        session,
        Action.CANCEL,
        Message.id.in_(ids),
        CANCELLABLE_STATES,
        now,
        Code.CANCELLED,
        f"cancelled by {actor}{note}",
        actor=actor,
        claim_token=None,
        lease_expires_at=None,
    )
    return Acted(sorted(moved), unchanged)


def release(
    session: Session,
    now: datetime,
    actor: str,
    *,
    line: str | None = None,
    to: str | None = None,
    reason_code: str | None = None,
    reason: str | None = None,
) -> list[str]:
    """Let the gate look again now at held (throttled or deferred) messages: all, a
    line's, a chat's (line and recipient) or those of one hold code. Their ids.

    ``held_since`` stays, so the maximum hold still counts from the first hold.
    """
    actor, note = _who(actor), _note(reason)
    holds: Collection[Code] = set(Code)
    if reason_code is not None:
        holds = {Code(parse_code(reason_code, "code"))}
    which: ColumnElement[bool] = _on_line(session, line)
    if to is not None:
        which = and_(which, Message.recipient == to_e164(to, "to"))
    held = (MessageState.THROTTLED, MessageState.DEFERRED)
    _lock(session, and_(which, Message.last_code.in_(sorted(holds))), held)
    return sorted(
        transitions.release(
            session, which, holds, now, Code.RELEASE_MANUAL, f"released by {actor}{note}", actor
        )
    )


def retry(
    session: Session,
    now: datetime,
    actor: str,
    *,
    message_id: str | None = None,
    reason_code: str | None = None,
    reason: str | None = None,
) -> Acted:
    """Send a ``failed`` or ``needs_review`` message again, by id, or every one whose
    last code is ``reason_code``: back to ``queued``, for the gate to decide again.

    The send keeps the message's id as the provider's idempotency key, so a provider
    that took the first attempt does not deliver it twice. ``attempts`` goes on (each
    attempt names its limiter ticket); the retries allowed count again from here, and
    the maximum hold starts again. A message whose body was purged cannot go again.
    """
    actor, note = _who(actor), _note(reason)
    named = _one_of(message_id=message_id, code=reason_code)
    if named == "code":
        code = parse_code(str(reason_code), "code")
        which = and_(Message.last_code == code, Message.purged_at.is_(None))
        ids, unchanged = _lock(session, which, RETRYABLE_STATES), list[str]()
    else:
        message = _lock_named(session, message_id, None)
        state = MessageState(message.state)
        if message.purged_at is not None:
            raise NotActionable(message.id, state.value, "its body was purged; enqueue it anew")
        if state not in RETRYABLE_STATES:
            if _retried(session, message.id):
                return Acted([], [message.id])
            raise NotActionable(
                message.id, state.value, "only a failed or needs_review message can be retried"
            )
        ids, unchanged = [message.id], []
    moved = transitions.move_where(
        session,
        Action.RETRY,
        Message.id.in_(ids),
        RETRYABLE_STATES,
        now,
        Code.RETRY_MANUAL,
        f"retried by {actor}{note}",
        actor=actor,
        not_before=now,
        held_since=None,
        claim_token=None,
        lease_expires_at=None,
        retried_at_attempt=Message.attempts,
    )
    return Acted(sorted(moved), unchanged)


def _who(actor: object) -> str:
    if not isinstance(actor, str) or not actor.strip():
        raise InvalidInput("actor", actor, "must say who asks, e.g. cli:alice")
    if len(actor) > 200 or not actor.isprintable():
        raise InvalidInput("actor", actor, "must be printable and at most 200 characters")
    return actor.strip()


def _note(reason: object) -> str:
    if reason is None:
        return ""
    if not isinstance(reason, str) or len(reason) > REASON_MAX or "\x00" in reason:
        raise InvalidInput("reason", reason, f"must be text of at most {REASON_MAX} characters")
    return f": {reason}" if reason.strip() else ""


def _one_of(**named: object) -> str:
    """The one of ``named`` given; bad input otherwise."""
    given = [name for name, value in named.items() if value is not None]
    if len(given) != 1:
        names = ", ".join(named)
        raise InvalidInput(
            "/".join(named),
            ", ".join(given) or "nothing",
            f"give exactly one of {names}",
        )
    return given[0]


def _on_line(session: Session, line: str | None) -> ColumnElement[bool]:
    if line is None:
        return true()
    number = to_e164(line, "line")
    line_id = session.scalar(select(Line.id).where(Line.number == number))
    if line_id is None:
        raise InvalidInput("line", line, "no line has this number")
    return Message.line_id == line_id


def _lock(
    session: Session, which: ColumnElement[bool], states: Sequence[MessageState]
) -> list[str]:
    """Lock the messages ``which`` selects in ``states``, in id order; their ids."""
    return list(
        session.scalars(
            select(Message.id)
            .where(which, Message.state.in_([s.value for s in states]))
            .order_by(Message.id)
            .with_for_update()
        )
    )


def _lock_named(session: Session, message_id: str | None, key: str | None) -> Message:
    """The one message named by id or idempotency key, locked."""
    field, value = ("id", message_id) if message_id is not None else ("idempotency_key", key)
    column = Message.id if message_id is not None else Message.idempotency_key
    message = session.scalars(
        select(Message)
        .where(column == value)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if message is None:
        raise InvalidInput(field, value, f"no message has this {field.replace('_', ' ')}")
    return message


def _retried(session: Session, message_id: str) -> bool:
    """A person already sent this message again."""
    return bool(
        session.scalar(
            select(
                exists().where(
                    DecisionRecord.message_id == message_id,
                    DecisionRecord.action == Action.RETRY.value,
                )
            )
        )
    )
