"""One suite for every limiter backend: memory, the database (SQLite, PostgreSQL), Redis."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import sqlalchemy
from sqlalchemy import select
from sqlalchemy.orm import Session

from policies.pace import Limits, Verdict
from scheduler import constants
from scheduler.limits import DatabaseLimiter, Limiter, MemoryLimiter, RedisLimiter, Ticket
from scheduler.runtime import Runtime
from scheduler.settings import Settings
from scheduler.simulate.limiter import SimulatedLimiter
from scheduler.store.db import create_db_engine, session_factory
from scheduler.store.models import Chat, Line, Message
from tests.conftest import TABLES
from tests.services import require_redis

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LINE = "+14155550100"
BOB = "+14155550123"
CAROL = "+14155550124"

WIDE = Limits(
    sends_per_minute=100,
    sends_per_day=1000,
    sends_per_recipient_per_minute=100,
    sends_per_recipient_per_day=100,
    distinct_recipients_per_hour=100,
    new_conversations_per_day=100,
)


def limits(**caps: int) -> Limits:
    values = {name: getattr(WIDE, name) for name in Limits.__dataclass_fields__ if name != "note"}
    return Limits(**(values | caps))


def recipient(n: int) -> str:
    return f"+1415555{n:04d}"


class Backend:
    """A limiter and the store rows its ``hit`` needs, one transaction per hit."""

    def __init__(self, limiter: Limiter, sessions: sqlalchemy.orm.sessionmaker[Session]) -> None:
        self.limiter = limiter
        self.sessions = sessions

    def hit(self, ticket: Ticket, limits: Limits, now: datetime) -> Verdict:
        with self.sessions.begin() as session:
            ensure_rows(session, ticket, now)
            return self.limiter.hit(session, ticket, limits, now)

    def hit_many(self, requests: Sequence[tuple[Ticket, Limits]], now: datetime) -> list[Verdict]:
        with self.sessions.begin() as session:
            for ticket, _ in requests:
                ensure_rows(session, ticket, now)
            return self.limiter.hit_many(session, requests, now)


def ensure_rows(session: Session, ticket: Ticket, now: datetime) -> None:
    """The line, chat and message rows a dispatcher would have (the database counts them)."""
    line = session.scalars(select(Line).where(Line.number == ticket.line)).one_or_none()
    if line is None:
        line = Line(number=ticket.line, provider="log", created_at=now)
        session.add(line)
        session.flush()
    chat = session.scalars(
        select(Chat).where(Chat.line_id == line.id, Chat.recipient == ticket.recipient)
    ).one_or_none()
    if chat is None:
        chat = Chat(line_id=line.id, recipient=ticket.recipient, created_at=now)
        session.add(chat)
        session.flush()
    if session.get(Message, ticket.message_id) is None:
        session.add(
            Message(
                id=ticket.message_id,
                line_id=line.id,
                chat_id=chat.id,
                recipient=ticket.recipient,
                body="hi",
                state="claimed",
                created_at=now,
                updated_at=now,
            )
        )
    session.flush()


def postgres_engine(url: str) -> sqlalchemy.Engine:
    engine = create_db_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    return engine


KINDS = ["memory", "simulated", "database-sqlite", "database-postgresql", "redis"]


@contextmanager
def open_backend(kind: str, request: pytest.FixtureRequest, path: Path) -> Iterator[Backend]:
    """A fresh limiter of ``kind`` over a fresh store (a copy of the template at ``path``).

    PostgreSQL has one database per test session: opening a backend on it empties it.
    """
    if kind == "database-postgresql":
        engine = postgres_engine(request.getfixturevalue("postgres_database"))
    else:
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        engine = create_db_engine(f"sqlite:///{path}")
    limiter: Limiter
    if kind == "memory":
        limiter = MemoryLimiter()
    elif kind == "simulated":
        limiter = SimulatedLimiter()
    elif kind == "redis":
        limiter = RedisLimiter(
            redis.Redis.from_url(require_redis()), prefix=f"test:{uuid.uuid4().hex[:8]}:"
        )
    else:
        limiter = DatabaseLimiter()
    try:
        yield Backend(limiter, session_factory(engine))
    finally:
        if isinstance(limiter, RedisLimiter):
            stale = limiter.client.keys(limiter.prefix + "*")
            if stale:
                limiter.client.delete(*stale)
        limiter.close()
        engine.dispose()


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every limiter, each over a store that holds the rows a dispatcher would."""
    with open_backend(request.param, request, tmp_path / "limits.db") as opened:
        yield opened


def ticket(n: int, to: str = BOB, *, new_chat: bool = False, attempt: int = 1) -> Ticket:
    return Ticket(f"msg_{n:04d}", attempt, LINE, to, new_chat)


def test_sends_under_the_cap_are_consumed(backend: Backend) -> None:
    # Given a line allowed 3 sends a minute
    # When three sends arrive within the minute
    verdicts = [
        backend.hit(ticket(i, recipient(i)), limits(sends_per_minute=3), NOW) for i in range(3)
    ]

    # Then each passes now, with no cap binding
    assert verdicts == [Verdict(NOW, "", 0)] * 3


def test_send_over_a_cap_gets_the_earliest_moment_and_the_cap(backend: Backend) -> None:
    # Given 3 sends a minute, used at 12:00:00, :10 and :20
    caps = limits(sends_per_minute=3)
    for i in range(3):
        backend.hit(ticket(i, recipient(i)), caps, NOW + timedelta(seconds=10 * i))

    # When a fourth arrives at 12:00:30
    verdict = backend.hit(ticket(3, recipient(3)), caps, NOW + timedelta(seconds=30))

    # Then it may go once the first leaves the minute, and the cap is named
    assert verdict == Verdict(NOW + timedelta(minutes=1), "sends_per_minute", 3)


def test_earliest_moment_is_exact_to_the_microsecond(backend: Backend) -> None:
    # Given a send at a moment with microseconds, filling a cap of one a minute
    first = NOW + timedelta(seconds=1, microseconds=234_567)
    backend.hit(ticket(0, BOB), limits(sends_per_minute=1), first)

    # When another comes
    verdict = backend.hit(ticket(1, CAROL), limits(sends_per_minute=1), first)

    # Then it may go exactly a minute after the first, not a rounded moment
    assert verdict.allowed_at == first + timedelta(minutes=1)


def test_refused_send_consumes_nothing(backend: Backend) -> None:
    # Given a full minute and a refused send
    caps = limits(sends_per_minute=1)
    backend.hit(ticket(0, BOB), caps, NOW)
    backend.hit(ticket(1, CAROL), caps, NOW + timedelta(seconds=30))

    # When the minute of the first send has passed
    verdict = backend.hit(ticket(2, CAROL), caps, NOW + timedelta(minutes=1))

    # Then the next send passes: the refused one left no trace
    assert verdict.allowed_at == NOW + timedelta(minutes=1)


def test_the_same_attempt_is_counted_once(backend: Backend) -> None:
    # Given a cap of 1 a minute, consumed by one attempt
    caps = limits(sends_per_minute=1)
    backend.hit(ticket(0), caps, NOW)

    # When the same attempt is hit again (a redelivered dispatch)
    verdict = backend.hit(ticket(0), caps, NOW + timedelta(seconds=5))

    # Then it passes without counting twice, and another message is still refused
    assert verdict.allowed_at == NOW + timedelta(seconds=5)
    assert backend.hit(ticket(1), caps, NOW + timedelta(seconds=6)).cap == "sends_per_minute"


def test_new_conversations_cap_binds_only_new_chats(backend: Backend) -> None:
    # Given 2 new conversations a day, both used
    caps = limits(new_conversations_per_day=2)
    backend.hit(ticket(0, recipient(0), new_chat=True), caps, NOW)
    backend.hit(ticket(1, recipient(1), new_chat=True), caps, NOW + timedelta(minutes=1))

    # When a third new chat and a message to an existing chat arrive
    new = backend.hit(ticket(2, recipient(2), new_chat=True), caps, NOW + timedelta(minutes=2))
    existing = backend.hit(ticket(3, recipient(0)), caps, NOW + timedelta(minutes=2))

    # Then the new chat waits a day after the first, the existing chat sends
    assert new == Verdict(NOW + timedelta(days=1), "new_conversations_per_day", 2)
    assert existing.allowed_at == NOW + timedelta(minutes=2)


def test_distinct_recipients_per_hour_lets_known_recipients_through(backend: Backend) -> None:
    # Given 2 distinct recipients an hour, both used
    caps = limits(distinct_recipients_per_hour=2)
    backend.hit(ticket(0, BOB), caps, NOW)
    backend.hit(ticket(1, CAROL), caps, NOW + timedelta(minutes=10))

    # When Bob again and a third recipient arrive
    at = NOW + timedelta(minutes=20)
    again = backend.hit(ticket(2, BOB), caps, at)
    third = backend.hit(ticket(3, recipient(9)), caps, at)

    # Then Bob sends; the third waits until Carol, now the recipient last seen longest
    # ago (Bob was seen again), leaves the hour
    assert again.allowed_at == at
    assert third == Verdict(NOW + timedelta(minutes=70), "distinct_recipients_per_hour", 2)


def test_sends_per_recipient_per_minute(backend: Backend) -> None:
    # Given 2 sends a minute per recipient, both used on Bob
    caps = limits(sends_per_recipient_per_minute=2)
    backend.hit(ticket(0, BOB), caps, NOW)
    backend.hit(ticket(1, BOB), caps, NOW + timedelta(seconds=1))

    # When Bob and Carol get one more each
    bob = backend.hit(ticket(2, BOB), caps, NOW + timedelta(seconds=2))
    carol = backend.hit(ticket(3, CAROL), caps, NOW + timedelta(seconds=2))

    # Then Bob waits for the minute, Carol sends
    assert bob == Verdict(NOW + timedelta(minutes=1), "sends_per_recipient_per_minute", 2)
    assert carol.cap == ""


def test_daily_cap_names_when_the_day_frees_up(backend: Backend) -> None:
    # Given 2 sends a day, used two hours apart
    caps = limits(sends_per_day=2)
    backend.hit(ticket(0, BOB), caps, NOW)
    backend.hit(ticket(1, CAROL), caps, NOW + timedelta(hours=2))

    # When another comes three hours later
    verdict = backend.hit(ticket(2, BOB), caps, NOW + timedelta(hours=3))

    # Then it waits until a day after the first
    assert verdict == Verdict(NOW + timedelta(days=1), "sends_per_day", 2)


def test_the_latest_cap_binds(backend: Backend) -> None:
    # Given both the minute and the day full
    caps = limits(sends_per_minute=1, sends_per_day=1)
    backend.hit(ticket(0, BOB), caps, NOW)

    # When another send comes
    verdict = backend.hit(ticket(1, BOB), caps, NOW + timedelta(seconds=1))

    # Then the day binds: it is the later of the two moments
    assert verdict == Verdict(NOW + timedelta(days=1), "sends_per_day", 1)


def test_a_retry_attempt_is_checked_again(backend: Backend) -> None:
    # Given two sends in the minute at a cap of 2 a minute
    caps = limits(sends_per_minute=2)
    backend.hit(ticket(0, BOB), caps, NOW)
    backend.hit(ticket(1, CAROL), caps, NOW)

    # When the second message is retried (attempt 2) within the minute
    verdict = backend.hit(ticket(1, CAROL, attempt=2), caps, NOW + timedelta(seconds=30))

    # Then the retry is refused: a retry is another send, not a redelivery
    assert verdict == Verdict(NOW + timedelta(minutes=1), "sends_per_minute", 2)


def test_redis_keys_live_under_the_prefix_and_expire() -> None:
    # Given a Redis limiter with its prefix
    client = redis.Redis.from_url(require_redis())
    prefix = f"{constants.LIMITS_KEY_PREFIX}test-{uuid.uuid4().hex[:8]}:"
    limiter = RedisLimiter(client, prefix)

    # When a new conversation is consumed
    limiter.hit(Session(), ticket(0, BOB, new_chat=True), WIDE, NOW)

    # Then every key is under the prefix and has a TTL no longer than a day
    keys = client.keys(prefix + "*")
    ttls = {key.decode().removeprefix(prefix): client.pttl(key) for key in keys}
    client.delete(*keys)
    limiter.close()
    assert sorted(ttls) == sorted(
        f"{{{LINE}}}:{name}"
        for name in ("sends", "new", f"to:{BOB}", "recipients", "hit:msg_0000:1")
    )
    assert all(0 < ttl <= constants.LIMITS_DAY_SECONDS * 1000 for ttl in ttls.values())


def test_database_limiter_serializes_two_transactions_on_postgresql(
    postgres_database: str,
) -> None:
    # Given a cap of one send a minute and two dispatch transactions on one line
    engine = postgres_engine(postgres_database)
    sessions = session_factory(engine)
    limiter = DatabaseLimiter()
    caps = limits(sends_per_minute=1)
    with sessions.begin() as session:
        ensure_rows(session, ticket(0, BOB), NOW)
        ensure_rows(session, ticket(1, CAROL), NOW)
    second: list[Verdict] = []

    def other_dispatcher() -> None:
        with sessions.begin() as session:
            limiter.lock(session, [1])
            second.append(limiter.hit(session, ticket(1, CAROL), caps, NOW))

    # When the first consumes the slot and, before it commits, the second tries
    with sessions.begin() as session:
        limiter.lock(session, [1])
        first = limiter.hit(session, ticket(0, BOB), caps, NOW)
        thread = threading.Thread(target=other_dispatcher)
        thread.start()
        thread.join(timeout=0.5)
        waited = thread.is_alive()
    thread.join(timeout=10)
    engine.dispose()

    # Then the second waited for the first to commit and saw its send
    assert (first.cap, waited) == ("", True)
    assert second == [Verdict(NOW + timedelta(minutes=1), "sends_per_minute", 1)]


@pytest.mark.parametrize(("redis_url", "kind"), [(None, DatabaseLimiter), ("redis", RedisLimiter)])
def test_runtime_builds_its_limiter_from_settings(
    tmp_path: Path, redis_url: str | None, kind: type[Limiter]
) -> None:
    # Given settings with or without HEALTHGATE_REDIS_URL
    url = require_redis() if redis_url else None
    settings = Settings(data_dir=tmp_path / "data", broker_url="memory://", redis_url=url)

    # When a process builds its runtime
    runtime = Runtime.build(settings)
    built = runtime.limiter
    runtime.close()

    # Then the caps live in Redis when it is named, in the database otherwise
    assert type(built) is kind
