"""Two PostgreSQL sessions at once on one message: dispatch against an opt-out, and
against a claimer that finds its lease expired.

An opt-out and a dispatch serialize on the chat's row: the message is either committed
to send before the opt-out is recorded, or not sent at all, and neither side fails with
a deadlock. A dispatch's SEND commits only while its fence token holds: a claimer that
finds the lease expired waits for it and then finds the message SENDING.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import text

from policies.errors import IdempotencyConflict
from scheduler.client import Healthgate
from scheduler.dispatch import claim_due, dispatch_claimed
from scheduler.dispatch import gating as dispatch
from scheduler.intake import enqueue as intake
from scheduler.providers.log import read_send_log
from scheduler.runtime import utcnow
from scheduler.settings import Settings
from tests.conftest import LINE_A, POLICY, TABLES, budget
from tests.test_e2e import wait_until

pytestmark = pytest.mark.timeout(budget(60))

BOB = "+14155550123"


class Gate:
    """Holds a thread at one point until the test lets it go."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.go = threading.Event()

    def hold(self) -> None:
        self.inside.set()
        assert self.go.wait(30), "never let go"

    def before(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """``call``, held here each time before it runs."""

        def held(*args: Any) -> Any:
            self.hold()
            return call(*args)

        return held


class Worker(threading.Thread):
    """Runs ``work`` and keeps what it raised, for the test to check."""

    def __init__(self, work: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:
            self.error = exc


@pytest.fixture
def pg_settings(tmp_path: Path, postgres_database: str) -> Settings:
    engine = sqlalchemy.create_engine(postgres_database)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    engine.dispose()
    policy = tmp_path / "healthgate.toml"
    policy.write_text(POLICY)
    return Settings(data_dir=tmp_path / "data", policy_file=policy, database_url=postgres_database)


@pytest.fixture
def two_clients(pg_settings: Settings) -> Iterator[tuple[Healthgate, Healthgate]]:
    """One client dispatches, the other records the opt-out: two engines, two sessions."""
    dispatcher, inbox = Healthgate(pg_settings), Healthgate(pg_settings)
    dispatcher.sync_lines()
    yield dispatcher, inbox
    dispatcher.close()
    inbox.close()


def waiting_on_a_lock(settings: Settings) -> bool:
    engine = sqlalchemy.create_engine(str(settings.database_url))
    with engine.connect() as conn:
        waiting = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
    engine.dispose()
    return int(waiting) > 0


def race(
    settings: Settings, dispatcher: Healthgate, inbox: Healthgate, gate: Gate
) -> tuple[Worker, Worker]:
    """Dispatch BOB's message until ``gate`` holds it, STOP meanwhile, then let go."""
    claim = claim_due(dispatcher.runtime, utcnow(), 10)
    sending = Worker(lambda: dispatch_claimed(dispatcher.runtime, claim))
    sending.start()
    assert gate.inside.wait(30), "dispatch never reached the gate"
    stopping = Worker(lambda: inbox.record_inbound(LINE_A, BOB, "STOP"))
    stopping.start()
    wait_until(lambda: waiting_on_a_lock(settings), 20, "the opt-out to wait for a lock")
    assert stopping.is_alive()
    gate.go.set()
    sending.join(30)
    stopping.join(30)
    return sending, stopping


def test_opt_out_waits_for_a_dispatch_holding_the_chat_and_the_send_precedes_it(
    pg_settings: Settings, two_clients: tuple[Healthgate, Healthgate]
) -> None:
    # Given a dispatch of BOB's message holding his chat while the limiter decides
    dispatcher, inbox = two_clients
    message_id = dispatcher.enqueue(to=BOB, body="hello", line=LINE_A)
    gate = Gate()
    limiter = dispatcher.runtime.limiter
    limiter.hit_many = gate.before(limiter.hit_many)  # type: ignore[method-assign]
    # When BOB's STOP is recorded meanwhile
    sending, stopping = race(pg_settings, dispatcher, inbox, gate)
    # Then the opt-out waited for the dispatch, whose send was committed first and went
    assert sending.error is None, sending.error
    assert stopping.error is None, stopping.error
    assert dispatcher.explain(message_id)["state"] == "sent"
    assert [s["message_id"] for s in read_send_log(pg_settings.send_log_path)] == [message_id]
    # And nothing enqueued after it goes to BOB
    later = dispatcher.enqueue(to=BOB, body="again", line=LINE_A)
    dispatcher.drain()
    assert dispatcher.explain(later)["state"] == "dropped"


def test_opt_out_and_a_dispatch_that_locked_its_messages_do_not_deadlock(
    pg_settings: Settings,
    two_clients: tuple[Healthgate, Healthgate],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a dispatch of BOB's message held as it starts loading its batch
    dispatcher, inbox = two_clients
    message_id = dispatcher.enqueue(to=BOB, body="hello", line=LINE_A)
    gate = Gate()
    monkeypatch.setattr(dispatch, "load_batch", gate.before(dispatch.load_batch))
    # When BOB's STOP is recorded meanwhile
    sending, stopping = race(pg_settings, dispatcher, inbox, gate)
    # Then both finish without error, and the message went only if its send came first
    assert sending.error is None, sending.error
    assert stopping.error is None, stopping.error
    state = dispatcher.explain(message_id)["state"]
    sent = tuple(s["message_id"] for s in read_send_log(pg_settings.send_log_path))
    assert (state, sent) in {("sent", (message_id,)), ("dropped", ())}


def test_claimer_finding_the_lease_expired_waits_for_the_dispatch_holding_it(
    pg_settings: Settings, two_clients: tuple[Healthgate, Healthgate]
) -> None:
    # Given a dispatch holding its batch at the gate, its message still CLAIMED
    dispatcher, other = two_clients
    message_id = dispatcher.enqueue(to=BOB, body="hello", line=LINE_A)
    gate = Gate()
    limiter = dispatcher.runtime.limiter
    limiter.hit_many = gate.before(limiter.hit_many)  # type: ignore[method-assign]
    claim = claim_due(dispatcher.runtime, utcnow(), 10)
    sending = Worker(lambda: dispatch_claimed(dispatcher.runtime, claim))
    sending.start()
    assert gate.inside.wait(30), "dispatch never reached the gate"
    # When another tick claims after the lease ran out
    after_lease = utcnow() + timedelta(seconds=pg_settings.lease_seconds + 1)
    claims: list[list[str]] = []
    claiming = Worker(lambda: claims.append(claim_due(other.runtime, after_lease, 10).ids))
    claiming.start()
    wait_until(lambda: waiting_on_a_lock(pg_settings), 20, "the claimer to wait for a lock")
    gate.go.set()
    sending.join(30)
    claiming.join(30)
    # Then the claimer got nothing, and the message was sent once by the lease's holder
    assert sending.error is None, sending.error
    assert claiming.error is None, claiming.error
    assert claims == [[]]
    assert dispatcher.explain(message_id)["state"] == "sent"
    assert [s["message_id"] for s in read_send_log(pg_settings.send_log_path)] == [message_id]


def test_two_enqueues_of_one_key_with_other_content_at_once_one_wins_one_is_refused(
    pg_settings: Settings,
    two_clients: tuple[Healthgate, Healthgate],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given one enqueue that wrote its message and is held before it commits
    first, second = two_clients
    gate, held = Gate(), threading.Lock()
    store = intake.store_all

    def store_then_hold(*args: Any) -> list[str]:
        ids = store(*args)
        if held.acquire(blocking=False):  # the first caller only
            gate.hold()
        return ids

    monkeypatch.setattr(intake, "store_all", store_then_hold)
    winner = Worker(lambda: first.enqueue(to=BOB, body="first", idempotency_key="order-1"))
    winner.start()
    assert gate.inside.wait(30), "the first enqueue never wrote"

    # When a second one with the same key and another body writes meanwhile (and waits
    # for the first on the key's unique index), then the first commits
    loser = Worker(lambda: second.enqueue(to=BOB, body="second", idempotency_key="order-1"))
    loser.start()
    wait_until(lambda: waiting_on_a_lock(pg_settings), 20, "the second to wait for the key")
    gate.go.set()
    winner.join(30)
    loser.join(30)

    # Then the first is stored, and the second is refused, naming the body
    assert winner.error is None
    assert isinstance(loser.error, IdempotencyConflict)
    assert loser.error.field == "body"
    assert [m["body"] for m in messages(first)] == ["first"]


def messages(client: Healthgate) -> list[dict[str, Any]]:
    with client.runtime.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, body FROM messages ORDER BY id")).mappings()
        return [dict(row) for row in rows]
