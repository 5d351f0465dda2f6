"""A batch of sends through ``hit_many`` is the same as ``hit`` one at a time, on every backend."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from policies.errors import InvalidInput
from policies.pace import Limits, Verdict
from policies.usage import DAY, HOUR
from scheduler.limits import MemoryLimiter, RedisLimiter, Ticket
from scheduler.limits.redis import HIT
from scheduler.store.models import Chat, Message
from tests.conftest import budget, examples
from tests.services import require_redis
from tests.test_limits import (
    BOB,
    CAROL,
    KINDS,
    LINE,
    NOW,
    Backend,
    backend,
    ensure_rows,
    limits,
    open_backend,
    recipient,
    ticket,
)

__all__ = ["backend"]  # the parametrised fixture, shared with the single-send suite

pytestmark = pytest.mark.timeout(budget(300))

OTHER_LINE = "+14155550101"
LINES = (LINE, OTHER_LINE, "+14155550102")


def test_sends_of_a_line_are_taken_in_order(backend: Backend) -> None:
    # Given a line allowed 2 sends a minute
    caps = limits(sends_per_minute=2)

    # When three sends of it come in one batch
    verdicts = backend.hit_many([(ticket(i, recipient(i)), caps) for i in range(3)], NOW)

    # Then the first two are consumed and the third waits for the minute
    assert verdicts == [
        Verdict(NOW, "", 0),
        Verdict(NOW, "", 0),
        Verdict(NOW + timedelta(minutes=1), "sends_per_minute", 2),
    ]


def test_a_refused_send_in_a_batch_consumes_nothing(backend: Backend) -> None:
    # Given 2 sends a minute and 1 new conversation a day
    caps = limits(sends_per_minute=2, new_conversations_per_day=1)

    # When two new chats and then a send to a known chat come in one batch
    verdicts = backend.hit_many(
        [
            (ticket(0, BOB, new_chat=True), caps),
            (ticket(1, CAROL, new_chat=True), caps),
            (ticket(2, BOB), caps),
        ],
        NOW,
    )

    # Then the second new chat is refused and took no minute slot: the third send fits
    assert [verdict.cap for verdict in verdicts] == ["", "new_conversations_per_day", ""]
    assert backend.hit(ticket(3, BOB), caps, NOW).cap == "sends_per_minute"


def test_a_ticket_twice_in_one_batch_is_counted_once(backend: Backend) -> None:
    # Given 1 send a minute
    caps = limits(sends_per_minute=1)

    # When the same ticket comes twice in a batch, then another message
    verdicts = backend.hit_many([(ticket(0), caps), (ticket(0), caps), (ticket(1), caps)], NOW)

    # Then both copies pass, and only one slot was used: the other message is refused
    assert verdicts == [
        Verdict(NOW, "", 0),
        Verdict(NOW, "", 0),
        Verdict(NOW + timedelta(minutes=1), "sends_per_minute", 1),
    ]


def test_several_lines_in_one_batch_keep_their_own_caps(backend: Backend) -> None:
    # Given two lines, one allowed 1 send a minute and the other 2
    one, two = limits(sends_per_minute=1), limits(sends_per_minute=2)
    a = [Ticket(f"msg_a{i}", 1, LINE, recipient(i), False) for i in range(3)]
    b = [Ticket(f"msg_b{i}", 1, OTHER_LINE, recipient(i), False) for i in range(3)]

    # When their sends come interleaved in one batch
    verdicts = backend.hit_many(
        [(a[0], one), (b[0], two), (a[1], one), (b[1], two), (a[2], one), (b[2], two)], NOW
    )

    # Then each line's sends are counted against that line's caps alone, in order
    later = NOW + timedelta(minutes=1)
    assert verdicts == [
        Verdict(NOW, "", 0),
        Verdict(NOW, "", 0),
        Verdict(later, "sends_per_minute", 1),
        Verdict(NOW, "", 0),
        Verdict(later, "sends_per_minute", 1),
        Verdict(later, "sends_per_minute", 2),
    ]


def test_each_send_of_a_batch_is_checked_against_its_own_limits(backend: Backend) -> None:
    # Given one line whose sends carry different limits (its pace changed mid-batch)
    one, two = limits(sends_per_minute=1), limits(sends_per_minute=2)

    # When a send at 1 a minute, one at 2 a minute, and one at 1 a minute come in a batch
    verdicts = backend.hit_many(
        [(ticket(0, recipient(0)), one), (ticket(1, recipient(1)), two), (ticket(2, BOB), one)],
        NOW,
    )

    # Then the second fits under its own cap of 2; the third is refused under its cap of 1
    assert verdicts == [
        Verdict(NOW, "", 0),
        Verdict(NOW, "", 0),
        Verdict(NOW + timedelta(minutes=1), "sends_per_minute", 1),
    ]


def test_an_empty_batch_has_no_verdicts(backend: Backend) -> None:
    assert backend.hit_many([], NOW) == []


@pytest.mark.parametrize("kind", ["database-sqlite", "database-postgresql"])
def test_database_limiter_names_a_line_it_does_not_know(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # Given a store with no line of this number
    # When a batch asks for a send on it
    # Then the error names the field and the number
    with (
        open_backend(kind, request, tmp_path / "limits.db") as opened,
        opened.sessions.begin() as session,
        pytest.raises(InvalidInput, match=rf"ticket.line='\{LINE}'"),
    ):
        opened.limiter.hit_many(session, [(ticket(0), limits())], NOW)


@pytest.mark.parametrize("kind", ["database-sqlite", "database-postgresql"])
def test_database_limiter_names_a_message_it_does_not_know(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # Given a store with the line but no message msg_0009
    with open_backend(kind, request, tmp_path / "limits.db") as opened:
        with opened.sessions.begin() as session:
            ensure_rows(session, ticket(0), NOW)

        # When a batch asks for a send of it
        # Then the error names the field and the id
        with (
            opened.sessions.begin() as session,
            pytest.raises(InvalidInput, match=r"ticket\.message_id='msg_0009'"),
        ):
            opened.limiter.hit_many(session, [(ticket(0), limits()), (ticket(9), limits())], NOW)


def test_redis_limiter_loads_its_script_again_when_the_server_lost_it() -> None:
    # Given a Redis limiter whose script the server does not hold (as after a restart);
    # a variant of the script stands in, so the scripts of other clients stay loaded
    client = redis.Redis.from_url(require_redis())
    limiter = RedisLimiter(client, prefix=f"test:{uuid.uuid4().hex[:8]}:")
    limiter._hit = client.register_script(f"{HIT}-- {uuid.uuid4().hex}\n")

    # When a batch over two lines comes (one pipeline)
    requests = [(Ticket("msg_a", 1, line, BOB, False), limits()) for line in LINES[:2]]
    verdicts = limiter.hit_many(Session(), requests, NOW)

    # Then the script is loaded again and both sends are counted
    stale = client.keys(limiter.prefix + "*")
    client.delete(*stale)
    limiter.close()
    assert verdicts == [Verdict(NOW, "", 0)] * 2
    assert sum(key.endswith(b"hit:msg_a:1") for key in stale) == 2


class Send(NamedTuple):
    """One message a run may send: the ticket is built from its line and recipient."""

    line: int
    recipient: int


class Request(NamedTuple):
    """One ask for a send: which message, which attempt, starting a chat or not."""

    message: int
    attempt: int
    new_chat: bool

    def ticket(self, messages: list[Send]) -> Ticket:
        send = messages[self.message]
        return Ticket(
            f"msg_{self.message:03d}",
            self.attempt,
            LINES[send.line],
            recipient(send.recipient),
            self.new_chat,
        )


class Scenario(NamedTuple):
    """Sends made one by one before ``NOW``, then one batch at ``NOW``."""

    messages: list[Send]
    caps: list[Limits]
    history: list[tuple[Request, timedelta]]
    batch: list[Request]

    def requests(self, asks: list[Request]) -> list[tuple[Ticket, Limits]]:
        tickets = [ask.ticket(self.messages) for ask in asks]
        return [(t, self.caps[LINES.index(t.line)]) for t in tickets]


#: Each cap tight or out of the way: sends still get through, and the tight ones bind.
tight = st.one_of(st.integers(min_value=1, max_value=3), st.just(100))


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """A few lines with tight caps, so that every cap binds; repeats and retries included."""
    messages = draw(
        st.lists(
            st.builds(Send, st.integers(0, len(LINES) - 1), st.integers(0, 2)),
            min_size=1,
            max_size=6,
        )
    )
    asks = st.builds(Request, st.integers(0, len(messages) - 1), st.integers(1, 2), st.booleans())
    caps = [
        Limits(
            sends_per_minute=draw(tight),
            sends_per_day=draw(st.one_of(st.integers(min_value=1, max_value=8), st.just(100))),
            sends_per_recipient_per_minute=draw(tight),
            sends_per_recipient_per_day=draw(tight),
            distinct_recipients_per_hour=draw(tight),
            new_conversations_per_day=draw(tight),
        )
        for _ in LINES
    ]
    # Earlier sends across the day, minute and hour windows, oldest first.
    ago = st.integers(min_value=1, max_value=int(DAY / timedelta(microseconds=1)))
    history = draw(st.lists(st.tuples(asks, ago), max_size=8))
    history.sort(key=lambda entry: -entry[1])
    past = [(ask, timedelta(microseconds=micros)) for ask, micros in history]
    return Scenario(messages, caps, past, draw(st.lists(asks, min_size=1, max_size=15)))


def consumed(backend: Backend) -> object:
    """What a backend holds as counted at ``NOW``, comparable between two limiters."""
    limiter = backend.limiter
    if isinstance(limiter, MemoryLimiter):
        # Its whole state: the tickets counted and each line's usage.
        return sorted(limiter._counted), limiter._usage
    if isinstance(limiter, RedisLimiter):
        return redis_state(limiter)
    with backend.sessions() as session:
        sends = session.execute(
            select(Message.id, Message.dispatched_at, Message.attempts).order_by(Message.id)
        ).all()
        chats = session.execute(
            select(Chat.line_id, Chat.recipient, Chat.first_sent_at).order_by(Chat.id)
        ).all()
        return sends, chats


def redis_state(limiter: RedisLimiter) -> dict[str, object]:
    """Each key's entries still inside its window at ``NOW``, the prefix left out.

    Old entries are cleaned when a script runs, so what lies outside the windows depends
    on how many calls ran, not on what they counted.
    """
    windows = {"sends": DAY, "new": DAY, "recipients": HOUR}
    state: dict[str, object] = {}
    for raw in limiter.client.keys(limiter.prefix + "*"):
        name = raw.decode().removeprefix(limiter.prefix)
        kind = name.split(":", 1)[1]
        if kind.startswith("hit:"):
            state[name] = limiter.client.get(raw)
            continue
        window = DAY if kind.startswith("to:") else windows[kind]
        since = (NOW - window - datetime(1970, 1, 1, tzinfo=NOW.tzinfo)) // timedelta(
            microseconds=1
        )
        entries = limiter.client.zrangebyscore(raw, f"({since}", "+inf", withscores=True)
        if entries:
            state[name] = entries
    return state


def run(backend: Backend, scenario: Scenario, batched: bool) -> tuple[list[Verdict], object]:
    """The history one send at a time, then the batch either way; its verdicts and state."""
    for ask, ago in scenario.history:
        (request,) = scenario.requests([ask])
        backend.hit(*request, NOW - ago)
    requests = scenario.requests(scenario.batch)
    if batched:
        verdicts = backend.hit_many(requests, NOW)
    else:
        verdicts = [backend.hit(ticket, caps, NOW) for ticket, caps in requests]
    return verdicts, consumed(backend)


Opener = Callable[[], AbstractContextManager[Backend]]


@pytest.fixture(params=KINDS)
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens any number of fresh backends of one kind, one after the other."""
    return lambda: open_backend(request.param, request, tmp_path / f"{uuid.uuid4().hex}.db")


@settings(
    max_examples=examples(40),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
@example(  # a retry of a send counted earlier in the same batch
    Scenario(
        [Send(0, 0), Send(0, 1)],
        [limits(sends_per_minute=2)] * len(LINES),
        [],
        [Request(0, 1, False), Request(0, 2, False), Request(1, 1, False)],
    )
)
@example(  # a retry of a send counted before the batch
    Scenario(
        [Send(0, 0), Send(0, 1)],
        [limits(sends_per_minute=2)] * len(LINES),
        [(Request(0, 1, False), timedelta(seconds=10))],
        [Request(0, 2, False), Request(1, 1, False)],
    )
)
@example(  # two sends that each say they start the same chat, then another new chat
    Scenario(
        [Send(0, 0), Send(0, 0), Send(0, 1)],
        [limits(new_conversations_per_day=2)] * len(LINES),
        [],
        [Request(0, 1, True), Request(1, 1, True), Request(2, 1, True)],
    )
)
def test_a_batch_gives_and_consumes_what_sends_one_by_one_do(
    fresh: Opener, scenario: Scenario
) -> None:
    # Given the same history on two fresh limiters
    # When one takes the batch one send at a time and the other in one call
    with fresh() as one_by_one:
        expected = run(one_by_one, scenario, batched=False)
    with fresh() as batched:
        got = run(batched, scenario, batched=True)

    # Then every verdict and everything counted is the same
    assert got == expected
