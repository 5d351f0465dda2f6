"""The store's tables: the database is the source of truth (an outbox)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from policies.config import DEFAULT_CATEGORIES, DEFAULT_CATEGORY

# A message's states live in a module of their own, light enough for the command line's
# help to list them without loading SQLAlchemy; they are re-exported here.
from scheduler.store.states import CANCELLABLE_STATES as CANCELLABLE_STATES
from scheduler.store.states import FINAL_STATES as FINAL_STATES
from scheduler.store.states import RETRYABLE_STATES as RETRYABLE_STATES
from scheduler.store.states import WAITING_STATES as WAITING_STATES
from scheduler.store.states import MessageState as MessageState

#: The priority of a message stored before categories existed: the default category's.
DEFAULT_PRIORITY: int = DEFAULT_CATEGORIES[DEFAULT_CATEGORY]["priority"]


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python, whatever the database keeps (SQLite keeps naive)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: healthgate stores aware UTC times")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class Line(Base):
    """A sending number, declared in the policy file."""

    __tablename__ = "lines"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(20), unique=True)
    provider: Mapped[str] = mapped_column(String(20))
    #: False once the line is no longer declared: it keeps its history but sends nothing.
    enabled: Mapped[bool] = mapped_column(default=True)
    #: The reputation the gate sees, derived (``policies.signals.line_reputation``)
    #: from the facts below: recomputed whenever one of them changes.
    reputation: Mapped[str] = mapped_column(String(16), default="HEALTHY")
    #: The latest reputation reported, and its time (the provider's ``changed_at``).
    reported_reputation: Mapped[str | None] = mapped_column(String(16))
    reputation_updated_at: Mapped[datetime | None]
    #: The latest CRITICAL and HEALTHY reports: CRITICAL pauses until a later HEALTHY.
    critical_at: Mapped[datetime | None]
    healthy_at: Mapped[datetime | None]
    #: The runtime status the gate sees (ACTIVE / FLAGGED), derived like ``reputation``.
    status: Mapped[str] = mapped_column(String(16), default="ACTIVE")
    #: The latest runtime status reported, and its time.
    reported_status: Mapped[str | None] = mapped_column(String(16))
    status_updated_at: Mapped[datetime | None]
    #: The latest ACTIVE report (the provider's, or a person's).
    active_at: Mapped[datetime | None]
    #: healthgate's own flag: a send's answer said the line cannot send (Linq 2027).
    #: It holds until a later ACTIVE, or an accepted send (a probe).
    blocked_at: Mapped[datetime | None]
    #: When a probe send was let through since ``blocked_at``: one a block.
    probe_at: Mapped[datetime | None]
    #: Why the provider says so (e.g. 360dialog additional_info / errors).
    detail: Mapped[dict[str, Any] | None]
    #: When the line last came back to HEALTHY (and ACTIVE): its pace ramps up from here.
    recovered_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


#: Messages not finished, as SQL: ``/metrics`` counts them by state and line.
OPEN_SQL = "state IN ('queued', 'throttled', 'deferred', 'claimed', 'sending', 'needs_review')"
#: Chats not HEALTHY, as SQL: ``/metrics`` counts them by line.
UNHEALTHY_CHAT_SQL = "health <> 'HEALTHY' OR opted_out_at IS NOT NULL"


class Chat(Base):
    """The conversation between one line and one recipient."""

    __tablename__ = "chats"
    __table_args__ = (
        UniqueConstraint("line_id", "recipient", name="uq_chats_line_recipient"),
        Index("ix_chats_recipient", "recipient"),
        # ``/metrics``: each line's chats that are not HEALTHY, counted without reading
        # the healthy ones, which are nearly all of them.
        Index(
            "ix_chats_unhealthy_line",
            "line_id",
            "health",
            "opted_out_at",
            postgresql_where=text(UNHEALTHY_CHAT_SQL),
            sqlite_where=text(UNHEALTHY_CHAT_SQL),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("lines.id"))
    recipient: Mapped[str] = mapped_column(String(20))
    provider_chat_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    #: The bucket the gate sees (HEALTHY / AT_RISK / CRITICAL), derived
    #: (``policies.signals.chat_health``) from the facts below; an opt-out is kept
    #: apart, in the ledger, so that an opt-in returns the chat to this bucket.
    health: Mapped[str] = mapped_column(String(16), default="HEALTHY")
    #: The latest bucket reported (by the provider or a person), and its time.
    reported_health: Mapped[str | None] = mapped_column(String(16))
    health_updated_at: Mapped[datetime | None]
    #: The latest CRITICAL and HEALTHY reports: CRITICAL pauses until a later HEALTHY.
    critical_at: Mapped[datetime | None]
    healthy_at: Mapped[datetime | None]
    #: Since when the ledger says this chat is opted out (derived; None when not).
    opted_out_at: Mapped[datetime | None]
    last_inbound_at: Mapped[datetime | None]
    #: The recipient's first message: a chat they started is no new conversation.
    first_inbound_at: Mapped[datetime | None]
    first_sent_at: Mapped[datetime | None]
    #: When the chat last came back to HEALTHY: its backlog is released from here.
    recovered_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class ConsentFact(Base):
    """One fact of the opt-out ledger: an opt-out, an opt-in or a reply, with the time
    the recipient (or the provider) said it. Opt-outs are derived from these."""

    __tablename__ = "consent_facts"
    __table_args__ = (
        Index("ix_consent_facts_recipient", "recipient"),
        Index("ix_consent_facts_chat", "chat_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    recipient: Mapped[str] = mapped_column(String(20))
    chat_id: Mapped[int | None] = mapped_column(ForeignKey("chats.id"))
    #: OPT_OUT, OPT_IN or REPLY (``policies.keywords.Inbound``).
    kind: Mapped[str] = mapped_column(String(16))
    #: When it was said: the event's time, never the time it reached healthgate.
    at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(200))
    received_at: Mapped[datetime]


class OptOut(Base):
    """A recipient opted out of the whole account, since ``opted_out_at``: derived from
    the ledger (``ConsentFact``) under the account scope, never written otherwise."""

    __tablename__ = "opt_outs"

    recipient: Mapped[str] = mapped_column(String(20), primary_key=True)
    opted_out_at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(200))


#: ``WAITING_STATES`` as SQL, for the partial index the claim reads.
WAITING_SQL = "state IN ('queued', 'throttled', 'deferred')"
#: Messages held on a rate rule, for the ends of their queues.
THROTTLED_SQL = "state = 'throttled'"
#: The messages that were sent: the only ones the windows of caps and content count.
DISPATCHED_SQL = "dispatched_at IS NOT NULL"
#: Finished messages whose body is still kept: what the retention purge reads.
FINISHED_UNPURGED_SQL = "purged_at IS NULL AND state IN ({})".format(
    ", ".join(f"'{state.value}'" for state in FINAL_STATES)
)
#: Webhook events whose body is still kept.
UNPURGED_SQL = "purged_at IS NULL"
#: Outcomes the application has not been told of yet, and has not been given up on.
UNDELIVERED_SQL = "delivered_at IS NULL AND abandoned_at IS NULL"
#: Outcomes waiting whose last delivery failed.
FAILING_SQL = "last_error IS NOT NULL AND delivered_at IS NULL"


class Message(Base):
    """One outbound message and where it stands."""

    __tablename__ = "messages"
    __table_args__ = (
        # The claim: waiting messages whose time has come, oldest first.
        Index("ix_messages_state_not_before", "state", "not_before"),
        # The claim's order, highest priority first and then oldest: read in index
        # order up to its limit, never sorting every due message (a backlog released
        # at once is all due).
        Index(
            "ix_messages_waiting_priority_due",
            text("priority DESC"),
            "not_before",
            "id",
            postgresql_where=text(WAITING_SQL),
            sqlite_where=text(WAITING_SQL),
        ),
        # Caps: a line's dispatches inside a window. Only sent messages: every read
        # asks for a window of ``dispatched_at``, and a queued message costs no entry.
        Index(
            "ix_messages_line_dispatched",
            "line_id",
            "dispatched_at",
            postgresql_where=text(DISPATCHED_SQL),
            sqlite_where=text(DISPATCHED_SQL),
        ),
        # The status: a line's waiting messages counted by state and hold reason, and the
        # oldest and latest of each, read from the index alone.
        Index(
            "ix_messages_waiting_line",
            "state",
            "line_id",
            "last_code",
            "created_at",
            "not_before",
            postgresql_where=text(WAITING_SQL),
            sqlite_where=text(WAITING_SQL),
        ),
        # Releases and opt-out drops: a chat's waiting messages.
        Index("ix_messages_chat_state", "chat_id", "state"),
        # The ends of the queues of held messages (``store.queues``): a line's, and a
        # chat's, throttled messages by rule, priority and time.
        Index(
            "ix_messages_throttled_line",
            "line_id",
            "last_code",
            "priority",
            "not_before",
            postgresql_where=text(THROTTLED_SQL),
            sqlite_where=text(THROTTLED_SQL),
        ),
        Index(
            "ix_messages_throttled_chat",
            "chat_id",
            "last_code",
            "priority",
            "not_before",
            postgresql_where=text(THROTTLED_SQL),
            sqlite_where=text(THROTTLED_SQL),
        ),
        # Per-recipient caps: a batch's chats' dispatches inside a window (the day's for
        # the daily cap), read as a range rather than every message a chat ever had.
        Index(
            "ix_messages_chat_dispatched",
            "chat_id",
            "dispatched_at",
            postgresql_where=text(DISPATCHED_SQL),
            sqlite_where=text(DISPATCHED_SQL),
        ),
        # Content variation: the same body sent by a line inside a window.
        Index(
            "ix_messages_line_body_dispatched",
            "line_id",
            "body_hash",
            "dispatched_at",
            postgresql_where=text(DISPATCHED_SQL),
            sqlite_where=text(DISPATCHED_SQL),
        ),
        # ``/metrics``: the queue's depth by state and line, read from this index alone
        # (finished messages, nearly all of the table, are not in it).
        Index(
            "ix_messages_open_state_line",
            "state",
            "line_id",
            postgresql_where=text(OPEN_SQL),
            sqlite_where=text(OPEN_SQL),
        ),
        # Retention: finished messages whose body is kept, by when they finished. A
        # purged message leaves it, so each purge batch reads only what it empties.
        Index(
            "ix_messages_finished_unpurged",
            "updated_at",
            postgresql_where=text(FINISHED_UNPURGED_SQL),
            sqlite_where=text(FINISHED_UNPURGED_SQL),
        ),
        # Finding messages (``store.listing``): newest first, by each filter a person
        # asks for, read in index order up to the list's limit instead of sorting.
        Index("ix_messages_created", "created_at", "id"),
        Index("ix_messages_recipient_created", "recipient", "created_at"),
        Index("ix_messages_line_created", "line_id", "created_at"),
        Index("ix_messages_state_created", "state", "created_at"),
        Index("ix_messages_code_created", "last_code", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    #: Null until the router finds a line that may take the recipient.
    line_id: Mapped[int | None] = mapped_column(ForeignKey("lines.id"))
    chat_id: Mapped[int | None] = mapped_column(ForeignKey("chats.id"))
    #: The caller chose the line: never rerouted.
    pinned: Mapped[bool] = mapped_column(default=False)
    recipient: Mapped[str] = mapped_column(String(20))
    #: Empty once purged (see ``purged_at``).
    body: Mapped[str] = mapped_column(Text)
    #: A digest of the normalised body, so near-identical bodies compare equal.
    body_hash: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    #: What kind of message it is (``transactional``, ``marketing``, or one the policy
    #: defines): its window and its priority come from the policy's category.
    category: Mapped[str] = mapped_column(
        String(32), default=DEFAULT_CATEGORY, server_default=DEFAULT_CATEGORY
    )
    #: Its category's priority, kept here for the claim's order (higher goes first);
    #: set again for waiting messages when the policy changes it.
    priority: Mapped[int] = mapped_column(
        default=DEFAULT_PRIORITY, server_default=text(str(DEFAULT_PRIORITY))
    )
    #: The recipient's time zone as the application gave it (None: from the number).
    recipient_tz: Mapped[str | None] = mapped_column(String(64))
    not_before: Mapped[datetime | None]
    send_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    held_since: Mapped[datetime | None]
    #: Send attempts in all; each names its limiter ticket, so it never goes back.
    attempts: Mapped[int] = mapped_column(default=0)
    #: ``attempts`` when a person last retried it: retries run out counting from here.
    retried_at_attempt: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    claim_token: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None]
    dispatched_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    provider_message_id: Mapped[str | None] = mapped_column(String(100))
    last_code: Mapped[str | None] = mapped_column(String(64))
    last_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    #: When the state last changed; for a finished message, when it finished.
    updated_at: Mapped[datetime]
    #: When retention emptied the body of this finished message (its decisions stay).
    purged_at: Mapped[datetime | None]


class DecisionRecord(Base):
    """Every decision taken on a message, so ``explain`` can answer 'why?'."""

    __tablename__ = "decisions"
    # The status page's chart: the holds decided over the last 24 h.
    __table_args__ = (Index("ix_decisions_at", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id"), index=True)
    at: Mapped[datetime]
    #: A gate action (SEND, THROTTLE, ...) or a lifecycle step (ENQUEUE, SENT, RELEASE).
    action: Mapped[str] = mapped_column(String(16))
    code: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    not_before: Mapped[datetime | None]
    line: Mapped[str | None] = mapped_column(String(20))
    #: How many times the same decision was taken again since (counted, not stored),
    #: and the last of those times.
    repeats: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    last_at: Mapped[datetime | None]
    #: Who or what asked, for a decision taken by hand (``cli:alice``, ``client``).
    actor: Mapped[str | None] = mapped_column(String(200))


class Outcome(Base):
    """A message that reached a final state, to be told to the application's callback
    (a Celery task, or a signed webhook): the outbox of final states.

    Written in the transaction that finishes the message, so a crash between that and
    the callback loses nothing: the row waits until a delivery is acknowledged.
    """

    __tablename__ = "outcomes"
    __table_args__ = (
        # What the delivery task claims, in the order it tries them.
        Index(
            "ix_outcomes_undelivered",
            "next_attempt_at",
            "id",
            postgresql_where=text(UNDELIVERED_SQL),
            sqlite_where=text(UNDELIVERED_SQL),
        ),
        # The purge: outcomes that finished before its cut-off.
        Index("ix_outcomes_at", "at"),
        # ``status``: the ones given up on lately, and the latest error of one waiting.
        Index(
            "ix_outcomes_abandoned",
            "abandoned_at",
            postgresql_where=text("abandoned_at IS NOT NULL"),
            sqlite_where=text("abandoned_at IS NOT NULL"),
        ),
        Index(
            "ix_outcomes_failing",
            "id",
            postgresql_where=text(FAILING_SQL),
            sqlite_where=text(FAILING_SQL),
        ),
        # An id is never given twice, even after the newest rows are purged: the
        # application deduplicates on it.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id"), index=True)
    #: The final state reached (sent, dropped, expired, failed, needs_review, cancelled),
    #: and its code and reason as the message stores them.
    state: Mapped[str] = mapped_column(String(16))
    code: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    #: When the message reached it.
    at: Mapped[datetime]
    #: Deliveries tried and failed; the next is not tried before ``next_attempt_at``.
    attempts: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime]
    #: Held by one delivery run until then, which alone may record how it went (its
    #: token), so two never send it at once and a late one changes nothing.
    lease_expires_at: Mapped[datetime | None]
    lease_token: Mapped[str | None] = mapped_column(String(32))
    delivered_at: Mapped[datetime | None]
    #: Given up on after failing for ``OUTCOME_GIVE_UP_SECONDS`` (``last_error`` says why).
    abandoned_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)


class OutcomeListener(Base):
    """A callback some worker delivers outcomes to, and when it last did: a process whose
    own settings name none leaves the outcomes alone while another one listens."""

    __tablename__ = "outcome_listeners"

    #: As ``status`` shows it: ``task NAME (queue Q)`` or ``webhook https://host/…``.
    callback: Mapped[str] = mapped_column(String(300), primary_key=True)
    last_seen: Mapped[datetime]


class WebhookEvent(Base):
    """Every signed event received, applied or not: redeliveries are recognised by id,
    and refused events are kept for inspection rather than dropped."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        Index("ix_webhook_events_received_at", "received_at"),
        # Retention: events whose body is kept, oldest first.
        Index(
            "ix_webhook_events_unpurged",
            "received_at",
            postgresql_where=text(UNPURGED_SQL),
            sqlite_where=text(UNPURGED_SQL),
        ),
    )

    #: The provider's event id (``webhook-id``), prefixed by the source.
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    source: Mapped[str] = mapped_column(String(20))
    event_type: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime]
    #: applied, ignored (older than what is known, or nothing to do) or rejected.
    outcome: Mapped[str] = mapped_column(String(16))
    #: Why; a rejected event's detail quotes the refused value, so it is purged too.
    detail: Mapped[str | None] = mapped_column(Text)
    #: The body as it came; empty once purged (see ``purged_at``).
    payload: Mapped[str] = mapped_column(Text)
    #: When retention emptied the body (id, type, outcome and times stay).
    purged_at: Mapped[datetime | None]


class PolicyState(Base):
    """The policy last applied to held messages, so a change releases them once, by
    whichever worker sees it first."""

    __tablename__ = "policy_state"

    #: One row a kind of state: ``applied``.
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(16))
    #: The policy's normal form (``policies.changes.normalised``): the next change is
    #: worked out against it, whichever worker's file it came from.
    policy: Mapped[dict[str, Any]]
    #: The policy file's modification time (ns): a worker applies only a newer file, so
    #: one that has not yet reloaded never undoes a change.
    file_mtime_ns: Mapped[int] = mapped_column(BigInteger)
    applied_at: Mapped[datetime]
    applied_by: Mapped[str] = mapped_column(String(255))


class WorkerSeen(Base):
    """Each worker process, the policy it runs, and when it was last seen."""

    __tablename__ = "workers"

    #: Celery's worker name and the process id (``celery@host/1234``).
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(16))
    last_seen: Mapped[datetime]
