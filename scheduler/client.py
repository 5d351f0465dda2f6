"""The Python API: one object that owns a runtime and speaks in phone numbers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from policies.errors import InvalidInput
from policies.keywords import Inbound
from policies.statuses import DEFAULT_CATEGORY, LINE_STATES, LineStatus
from policies.text import storable_time
from scheduler import constants
from scheduler.intake.enqueue import check_same_database, enqueue_many
from scheduler.intake.messages import NewMessage
from scheduler.operate import Acted, actions
from scheduler.operate.finding import Moment, find_messages
from scheduler.runtime import Runtime, utcnow
from scheduler.settings import Settings
from scheduler.signals import consent, health
from scheduler.store import reports
from scheduler.store.db import has_schema, upgrade
from scheduler.store.lines import sync_lines
from scheduler.store.retention import Purged, purge

if TYPE_CHECKING:
    from scheduler.dispatch import Report
    from scheduler.signals.polling import PollReport

#: Who asks, on a decision taken through the Python API without naming anyone.
CLIENT_ACTOR = "client"


class Healthgate:
    """Enqueue, set health, drain and inspect, against the store the settings name."""

    def __init__(self, settings: Settings | None = None, runtime: Runtime | None = None) -> None:
        self.runtime = runtime or Runtime.build(settings or Settings())

    def migrate(self) -> None:
        """Create or upgrade the schema, then load the policy file's lines."""
        upgrade(self.runtime.engine)
        self.sync_lines()

    def ensure_schema(self) -> None:
        """Upgrade on the embedded default; elsewhere migrations are the operator's step."""
        if self.runtime.settings.database.startswith("sqlite") or not has_schema(
            self.runtime.engine
        ):
            self.migrate()
        else:
            self.sync_lines()

    def sync_lines(self) -> None:
        with self.runtime.sessions.begin() as session:
            sync_lines(session, self.runtime.policy, utcnow())

    def enqueue(
        self,
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
        session: Session | None = None,
        connection: Connection | None = None,
    ) -> str:
        """Enqueue one message and return its id (the existing id for a known key with
        the same content; ``IdempotencyConflict`` for other content, storing nothing).

        ``category``: ``transactional`` (any time, first), ``marketing`` (08:00-21:00 on
        the recipient's clock by default) or one the policy defines. ``recipient_tz``:
        the recipient's IANA zone, which wins over the one read from the number.
        ``session`` or ``connection``: store it in that transaction (see ``enqueue_many``).
        """
        message = NewMessage(
            to,
            body,
            line,
            chat_id,
            idempotency_key,
            send_at,
            expires_at,
            category,
            recipient_tz,
        )
        return self.enqueue_many([message], session=session, connection=connection)[0]

    def enqueue_many(
        self,
        messages: Iterable[NewMessage | Mapping[str, Any]],
        *,
        session: Session | None = None,
        connection: Connection | None = None,
    ) -> list[str]:
        """Enqueue many messages and return their ids, in order.

        The call is checked whole first: a bad message (``InvalidInput``) or a key held
        with other content (``IdempotencyConflict``), and none is stored. It is then
        committed a part at a time (``ENQUEUE_COMMIT`` messages): a call that fails part
        way has stored the parts before, and calling again with the same keys returns
        their ids and stores the rest.

        With ``session`` (a SQLAlchemy ``Session``) or ``connection`` (a ``Connection``)
        on healthgate's own PostgreSQL database, the messages are written in that
        transaction instead, in one pass, and nothing is committed: they exist if and
        only if the caller commits (the transactional outbox). The write runs under a
        SAVEPOINT: when healthgate refuses the call, it rolls back to it, and the
        caller's transaction stays usable. The rows it writes (new chats, keys) stay
        locked until the caller commits or rolls back: another enqueue to the same new
        recipient or with the same key waits for it, so keep the transaction short.
        A connection to another database, or to SQLite, is refused (``InvalidInput``
        naming the parameter).
        """
        if session is not None and connection is not None:
            raise InvalidInput("session", session, "give session or connection, not both")
        if session is not None:
            if not isinstance(session, Session):
                raise InvalidInput("session", session, "must be a SQLAlchemy Session")
            check_same_database(self.runtime, "session", session.get_bind())
            connection = session.connection()
        elif connection is not None:
            if not isinstance(connection, Connection):
                raise InvalidInput("connection", connection, "must be a SQLAlchemy Connection")
            check_same_database(self.runtime, "connection", connection)
        return enqueue_many(self.runtime, messages, connection=connection)

    def set_chat_health(
        self, line: str, recipient: str, status: str, updated_at: datetime | None = None
    ) -> bool:
        _check_stamp(updated_at)
        with self.runtime.sessions.begin() as session:
            sync_lines(session, self.runtime.policy, utcnow())
            return health.set_chat_health(
                session,
                self.runtime.policy,
                line,
                recipient,
                status,
                utcnow(),
                updated_at=updated_at,
            )

    def set_line_health(self, line: str, status: str, updated_at: datetime | None = None) -> bool:
        """Set a line's reputation (HEALTHY / AT_RISK / CRITICAL) or status (ACTIVE / FLAGGED)."""
        _check_stamp(updated_at)
        with self.runtime.sessions.begin() as session:
            sync_lines(session, self.runtime.policy, utcnow())
            policy = self.runtime.policy
            if status not in LINE_STATES:
                raise InvalidInput("status", status, f"is not one of {', '.join(LINE_STATES)}")
            if status in {s.value for s in LineStatus}:
                return health.set_line_status(
                    session, policy, line, status, utcnow(), updated_at=updated_at
                )
            return health.set_line_reputation(
                session, policy, line, status, utcnow(), updated_at=updated_at
            )

    def record_inbound(
        self, line: str, recipient: str, text: str, at: datetime | None = None
    ) -> Inbound:
        """Record a message from a recipient (reply, opt-out or opt-in), sent at ``at``
        (default now): the ledger orders opt-outs and opt-ins by that time."""
        if not isinstance(text, str):
            raise InvalidInput("text", text, "must be the text the recipient sent")
        _check_stamp(at, "at")
        with self.runtime.sessions.begin() as session:
            return consent.record_inbound(
                session, self.runtime.policy, line, recipient, text, utcnow(), at=at
            )

    def drain(self, now: datetime | None = None) -> Report:
        """Dispatch everything due now in this process."""
        # Dispatch and polling load the providers: imported when asked for, so the
        # commands that only read start without them.
        from scheduler.dispatch import drain

        return drain(self.runtime, now)

    def poll(self, now: datetime | None = None) -> PollReport:
        """Ask every provider once how the lines stand, and apply what changed."""
        from scheduler.signals.polling import poll

        return poll(self.runtime, now)

    def purge(self, older_than: timedelta | None = None, now: datetime | None = None) -> Purged:
        """Empty the bodies of messages finished, and of webhook events received, more
        than ``older_than`` ago (default: ``retention_days``); decisions are kept."""
        if older_than is None:
            older_than = timedelta(days=self.runtime.settings.retention_days)
        if not isinstance(older_than, timedelta) or older_than < timedelta(0):
            raise InvalidInput("older_than", older_than, "must be a duration of 0 or more")
        now = now or utcnow()
        try:
            before = now - older_than
        except OverflowError:
            raise InvalidInput("older_than", older_than, "reaches before year 1") from None
        return purge(self.runtime.sessions, before, now)

    def status(self) -> dict[str, Any]:
        with self.runtime.reads() as session:
            settings = self.runtime.settings
            return reports.status(
                session, utcnow(), self.runtime.policy, settings.tick, settings.outcome_callback
            )

    def explain(self, message_id: str) -> dict[str, Any]:
        with self.runtime.reads() as session:
            return reports.explain(session, message_id, self.runtime.policy, utcnow())

    def messages(
        self,
        to: str | None = None,
        line: str | None = None,
        state: str | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
        newer_than: Moment | None = None,
        older_than: Moment | None = None,
        limit: int = constants.LIST_LIMIT,
    ) -> list[dict[str, Any]]:
        """Messages matching every filter given, newest first, without bodies.

        ``reason`` is the last decision's code (``cap_sends_per_minute``); ``newer_than``
        and ``older_than`` take a datetime, a timedelta before now, or text (``30m``, ISO).
        """
        with self.runtime.reads() as session:
            return find_messages(
                session,
                utcnow(),
                to=to,
                line=line,
                state=state,
                reason=reason,
                idempotency_key=idempotency_key,
                newer_than=newer_than,
                older_than=older_than,
                limit=limit,
            )

    def cancel(
        self,
        message_id: str | None = None,
        *,
        idempotency_key: str | None = None,
        to: str | None = None,
        line: str | None = None,
        reason: str | None = None,
        actor: str = CLIENT_ACTOR,
    ) -> Acted:
        """Cancel a message not yet sending (by id or key), or every waiting message to
        ``to`` (on ``line``); ``NotActionable`` for one already sending or finished."""
        with self.runtime.sessions.begin() as session:
            return actions.cancel(
                session,
                utcnow(),
                actor,
                message_id=message_id,
                idempotency_key=idempotency_key,
                to=to,
                line=line,
                reason=reason,
            )

    def release(
        self,
        line: str | None = None,
        to: str | None = None,
        reason_code: str | None = None,
        *,
        reason: str | None = None,
        actor: str = CLIENT_ACTOR,
    ) -> list[str]:
        """Let the gate look again now at held messages: all, a line's, a chat's, or
        those held by one code; the ids released."""
        with self.runtime.sessions.begin() as session:
            return actions.release(
                session, utcnow(), actor, line=line, to=to, reason_code=reason_code, reason=reason
            )

    def retry(
        self,
        message_id: str | None = None,
        *,
        reason_code: str | None = None,
        reason: str | None = None,
        actor: str = CLIENT_ACTOR,
    ) -> Acted:
        """Send a failed or needs_review message again (by id, or all of one code),
        with the same provider idempotency key."""
        with self.runtime.sessions.begin() as session:
            return actions.retry(
                session,
                utcnow(),
                actor,
                message_id=message_id,
                reason_code=reason_code,
                reason=reason,
            )

    def close(self) -> None:
        self.runtime.close()


def _check_stamp(updated_at: object, field: str = "updated_at") -> None:
    """When a signal was given: an aware time, compared with stored UTC stamps."""
    if updated_at is None:
        return
    if not isinstance(updated_at, datetime) or updated_at.tzinfo is None:
        raise InvalidInput(field, updated_at, "must be a timezone-aware datetime")
    storable_time(updated_at, field)
