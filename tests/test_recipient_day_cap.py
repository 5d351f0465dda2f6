"""The per-recipient daily cap: one person gets at most so many messages a day from a line.

The pure gate, the store's loader, every limiter (memory, the database on SQLite and
PostgreSQL, Redis) and the whole dispatch path, each with time passed in or frozen.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from freezegun.api import FrozenDateTimeFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from policies.codes import CAP_CODES, Code
from policies.config import Caps, Policy, parse_policy
from policies.errors import PolicyFileError
from policies.gate import ChatFacts, LineFacts, MessageFacts, decide
from policies.pace import Verdict, line_limits
from policies.statuses import Action, LineReputation
from policies.usage import DAY, LineUsage, TimesNotLoaded
from scheduler.client import Healthgate
from scheduler.limits import RedisLimiter, Ticket
from scheduler.settings import Settings
from scheduler.store.db import create_db_engine, session_factory
from scheduler.store.models import Chat, Line, Message
from scheduler.store.transitions import TIMED_HOLDS
from scheduler.store.usage import load_usage
from tests.conftest import LINE_A, LINE_B, START, examples
from tests.services import require_redis
from tests.test_limits import (
    BOB,
    CAROL,
    KINDS,
    LINE,
    NOW,
    Backend,
    backend,
    limits,
    open_backend,
    recipient,
)

__all__ = ["backend"]  # the parametrised fixture, shared with the limiter suite

OTHER_LINE = "+14155550101"
CAP = "sends_per_recipient_per_day"


def policy(**line_caps: int) -> Policy:
    """Two lines: the first with its own caps, the second on ``[caps]``."""
    data = {"lines": [{"number": LINE, "caps": line_caps}, {"number": OTHER_LINE}]}
    return parse_policy(data, "test.toml")


def usage_of(*hours_ago: float, to: str = BOB) -> LineUsage:
    """A line that sent ``to`` once at each of ``hours_ago``, recorded in full."""
    usage = LineUsage(day=[])
    for hours in sorted(hours_ago, reverse=True):
        usage.record(to, NOW - timedelta(hours=hours), new_chat=False)
    return usage


# The pure gate.


def test_the_cap_defaults_under_the_line_s_daily_cap() -> None:
    # Given the default caps, Then a recipient's day is a small share of the line's
    caps = Caps()
    assert caps.sends_per_recipient_per_day == 20
    assert caps.sends_per_recipient_per_minute < caps.sends_per_recipient_per_day
    assert caps.sends_per_recipient_per_day < caps.sends_per_day


def test_a_recipient_at_the_cap_is_throttled_until_the_oldest_send_leaves_the_day() -> None:
    # Given a line allowed 3 sends a day to one recipient, who got 3 over the last day
    usage = usage_of(20, 9, 1)

    # When a fourth message to them, and one to someone else, are decided
    bob = decide(MessageFacts(BOB), ChatFacts(), LineFacts(LINE), usage, policy(**{CAP: 3}), NOW)
    carol = decide(
        MessageFacts(CAROL), ChatFacts(), LineFacts(LINE), usage, policy(**{CAP: 3}), NOW
    )

    # Then theirs waits until the send of 20 hours ago leaves the day, naming the cap;
    # the other recipient's goes now
    assert (bob.action, bob.code, bob.not_before) == (
        Action.THROTTLE,
        Code.CAP_SENDS_PER_RECIPIENT_PER_DAY,
        NOW + timedelta(hours=4),
    )
    assert bob.reason == f"line {LINE} reached {CAP}=3"
    assert carol.action is Action.SEND


def test_the_cap_s_code_is_a_timed_hold() -> None:
    # A throttle nothing releases would hold its message until it expires.
    assert CAP_CODES[CAP] is Code.CAP_SENDS_PER_RECIPIENT_PER_DAY
    assert Code.CAP_SENDS_PER_RECIPIENT_PER_DAY in TIMED_HOLDS


@pytest.mark.parametrize(
    ("reputation", "sent_today", "action"),
    [
        (LineReputation.HEALTHY, 9, Action.SEND),
        (LineReputation.AT_RISK, 4, Action.SEND),
        (LineReputation.AT_RISK, 5, Action.THROTTLE),
    ],
)
def test_an_at_risk_line_runs_the_cap_at_its_pace(
    reputation: LineReputation, sent_today: int, action: Action
) -> None:
    # Given a cap of 10 a day per recipient and a pace factor of one half
    rules = policy(**{CAP: 10})
    usage = usage_of(*(2 + hour for hour in range(sent_today)))

    # When the next message to the recipient is decided on a line of this reputation
    decision = decide(
        MessageFacts(BOB), ChatFacts(), LineFacts(LINE, reputation), usage, rules, NOW
    )

    # Then an AT_RISK line allows 5 a day to them, a HEALTHY one 10
    assert decision.action is action
    if action is Action.THROTTLE:
        assert decision.reason == f"line {LINE} reached {CAP}=5 (AT_RISK pace)"


def test_a_recovering_line_ramps_the_cap() -> None:
    # Given a line back to HEALTHY 6 of its 24 ramp hours ago, at a factor of one half
    rules = policy(**{CAP: 20})

    # When its caps are worked out
    limits = line_limits(
        rules.caps_for(LINE), LineReputation.HEALTHY, NOW - timedelta(hours=6), NOW, rules
    )

    # Then the cap is a quarter of the way from 10 to 20
    assert limits.sends_per_recipient_per_day == 12


def test_a_line_s_own_cap_overrides_the_default() -> None:
    # Given a line whose own cap is 2, the other on the default 20
    rules = policy(**{CAP: 2})
    usage = usage_of(5, 3)

    # When a third message to the same recipient is decided on each line
    def on(line: str) -> Action:
        return decide(MessageFacts(BOB), ChatFacts(), LineFacts(line), usage, rules, NOW).action

    # Then the line with its own cap holds it and the other sends
    assert (rules.caps_for(LINE).sends_per_recipient_per_day, on(LINE)) == (2, Action.THROTTLE)
    assert (rules.caps_for(OTHER_LINE).sends_per_recipient_per_day, on(OTHER_LINE)) == (
        20,
        Action.SEND,
    )


@pytest.mark.parametrize("value", [0, -1, "20", 2.5, True])
def test_a_bad_cap_is_named_with_its_value(value: object) -> None:
    with pytest.raises(PolicyFileError, match=rf"caps\.{CAP}: .*\(got {re.escape(repr(value))}\)"):
        parse_policy({"lines": [{"number": LINE}], "caps": {CAP: value}}, "test.toml")


def test_the_cap_reached_by_counts_is_never_passed_as_free() -> None:
    # Given a recipient's day known as a count of 2 and one loaded send
    usage = LineUsage(recipient_day_unloaded={BOB: 2})
    usage.record(BOB, NOW - timedelta(hours=1), new_chat=False)

    # Then a cap of 3 cannot say when it frees up without the times; a cap of 4 has room
    with pytest.raises(TimesNotLoaded):
        usage.recipient_day_allowed(BOB, 3, NOW)
    assert usage.recipient_day_allowed(BOB, 4, NOW) == NOW


# The store's loader.


def test_the_loader_reads_a_recipient_s_times_only_near_the_cap(sqlite_template: Path) -> None:
    # Given a line that sent Bob 5 messages and Carol 2 over the last day, and Bob one
    # two days ago
    engine = create_db_engine(f"sqlite:///{sqlite_template}")
    session = session_factory(engine)()
    try:
        line = Line(number=LINE, provider="log", created_at=NOW)
        session.add(line)
        session.flush()
        chats = {to: Chat(line_id=line.id, recipient=to, created_at=NOW) for to in (BOB, CAROL)}
        session.add_all(chats.values())
        session.flush()
        hours = [(BOB, h) for h in (48, 20, 10, 5, 3, 1)] + [(CAROL, h) for h in (8, 2)]
        for n, (to, ago) in enumerate(hours):
            at = NOW - timedelta(hours=ago)
            session.add(
                Message(
                    id=f"msg_{n}",
                    line_id=line.id,
                    chat_id=chats[to].id,
                    recipient=to,
                    body="hi",
                    state="sent",
                    dispatched_at=at,
                    created_at=at,
                    updated_at=at,
                )
            )
        session.flush()

        # When a batch of 2 reads the usage for both, at a cap of 7 a day per recipient
        caps = {line.id: limits(**{CAP: 7})}
        usage = load_usage(session, [line], caps, NOW, 2, {BOB, CAROL})[line.id]
    finally:
        session.close()
        engine.dispose()

    # Then Bob, within the batch of the cap, has the day's times; Carol only a count
    assert usage.recipient_day == {BOB: [NOW - timedelta(hours=h) for h in (20, 10, 5, 3, 1)]}
    assert usage.recipient_day_unloaded == {CAROL: 2}


# Every limiter.


def test_every_limiter_holds_a_recipient_at_the_cap_until_the_day_frees_up(
    backend: Backend,
) -> None:
    # Given 2 sends a day per recipient, both used on Bob three hours apart
    caps = limits(**{CAP: 2})
    backend.hit(Ticket("m0", 1, LINE, BOB, False), caps, NOW)
    backend.hit(Ticket("m1", 1, LINE, BOB, False), caps, NOW + timedelta(hours=3))

    # When Bob gets another five hours later, and Carol one, and Bob one on another line
    bob = backend.hit(Ticket("m2", 1, LINE, BOB, False), caps, NOW + timedelta(hours=5))
    carol = backend.hit(Ticket("m3", 1, LINE, CAROL, False), caps, NOW + timedelta(hours=5))
    elsewhere = backend.hit(Ticket("m4", 1, OTHER_LINE, BOB, False), caps, NOW)

    # Then Bob waits until a day after his first send, to the microsecond; the others go
    assert bob == Verdict(NOW + DAY, CAP, 2)
    assert (carol.cap, elsewhere.cap) == ("", "")
    just_before = NOW + DAY - timedelta(microseconds=1)
    assert backend.hit(Ticket("m5", 1, LINE, BOB, False), caps, just_before) == Verdict(
        NOW + DAY, CAP, 2
    )
    assert backend.hit(Ticket("m6", 1, LINE, BOB, False), caps, NOW + DAY) == Verdict(
        NOW + DAY, "", 0
    )


def test_every_limiter_runs_the_cap_at_an_at_risk_line_s_pace(backend: Backend) -> None:
    # Given the caps of an AT_RISK line whose own daily cap per recipient is 4
    rules = policy(**{CAP: 4})
    paced = line_limits(rules.caps_for(LINE), LineReputation.AT_RISK, None, NOW, rules)

    # When Bob is sent three messages an hour apart
    verdicts = [
        backend.hit(Ticket(f"m{i}", 1, LINE, BOB, False), paced, NOW + timedelta(hours=i))
        for i in range(3)
    ]

    # Then two go and the third waits a day after the first
    assert verdicts[:2] == [Verdict(NOW, "", 0), Verdict(NOW + timedelta(hours=1), "", 0)]
    assert verdicts[2] == Verdict(NOW + DAY, CAP, 2)


def test_redis_keeps_a_recipient_s_sends_for_the_day() -> None:
    # Given a Redis limiter
    client = redis.Redis.from_url(require_redis())
    limiter = RedisLimiter(client, prefix=f"test:{uuid.uuid4().hex[:8]}:")

    # When a send to Bob is consumed
    limiter.hit(Session(), Ticket("m0", 1, LINE, BOB, False), limits(), NOW)

    # Then his key lives as long as the day window, not the minute's
    ttl = timedelta(milliseconds=client.pttl(f"{limiter.prefix}{{{LINE}}}:to:{BOB}"))
    client.delete(*client.keys(limiter.prefix + "*"))
    limiter.close()
    assert DAY - timedelta(minutes=1) < ttl <= DAY


#: One send a run asks for: line index, recipient index, seconds after the one before.
steps = st.lists(
    st.tuples(
        st.integers(0, 1),
        st.integers(0, 2),
        st.one_of(st.integers(0, 90), st.integers(0, 30_000), st.just(86_400)),
    ),
    min_size=1,
    max_size=18,
)


def model_verdict(sent: list[datetime], cap: int, at: datetime) -> Verdict:
    """The cap as SPEC states it: at most ``cap`` sends in any day; a refused send may
    go once the oldest of the last ``cap`` leaves the day."""
    inside = [t for t in sent if at - DAY < t <= at]
    if len(inside) < cap:
        return Verdict(at, "", 0)
    return Verdict(inside[len(inside) - cap] + DAY, CAP, cap)


@pytest.fixture(params=KINDS)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    """Opens fresh limiters of one kind, one per example."""
    return lambda: open_backend(request.param, request, tmp_path / f"{uuid.uuid4().hex}.db")


@settings(
    max_examples=examples(15),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(run=steps, cap=st.integers(1, 4), batched=st.booleans())
def test_every_limiter_keeps_the_cap_as_the_model_does(
    opener: Callable[[], Any], run: list[tuple[int, int, int]], cap: int, batched: bool
) -> None:
    # Given a fresh limiter, the other caps out of the way, and a model of the cap
    caps = limits(**{CAP: cap})
    lines = (LINE, OTHER_LINE)
    sent: dict[tuple[int, int], list[datetime]] = {}
    at = NOW
    with opener() as limiter:
        for n, (line, to, seconds) in enumerate(run):
            at += timedelta(seconds=seconds)
            # When each send is asked for in turn (alone, or as a batch of one)
            ticket = Ticket(f"m{n}", 1, lines[line], recipient(to), False)
            if batched:
                (got,) = limiter.hit_many([(ticket, caps)], at)
            else:
                got = limiter.hit(ticket, caps, at)

            # Then the limiter gives the model's verdict, per line and recipient
            history = sent.setdefault((line, to), [])
            assert got == model_verdict(history, cap, at)
            if got.cap == "":
                history.append(at)


# The whole dispatch path.

CAPPED = f"""
[[lines]]
number = "{LINE_A}"
provider = "log"
caps = {{ {CAP} = 3 }}

[[lines]]
number = "{LINE_B}"
provider = "log"
"""


@pytest.fixture(params=["database", "redis"])
def capped(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    database_url: str,
    clock: FrozenDateTimeFactory,
) -> Iterator[Healthgate]:
    """Line A at 3 sends a day per recipient, B on the default; the caps counted in the
    store or in Redis."""
    redis_url = None
    if request.param == "redis":
        redis_url = require_redis()
        client = redis.Redis.from_url(redis_url)
        client.flushdb()  # the test database only: counters of an earlier run
        client.close()
    policy_file = tmp_path / "healthgate.toml"
    policy_file.write_text(CAPPED)
    settings = Settings(
        data_dir=tmp_path / "data",
        policy_file=policy_file,
        database_url=database_url,
        broker_url="memory://",
        redis_url=redis_url,
    )
    hg = Healthgate(settings)
    hg.sync_lines()
    yield hg
    hg.close()


def test_dispatch_holds_a_recipient_at_the_cap_until_the_day_frees_up(
    capped: Healthgate, clock: FrozenDateTimeFactory
) -> None:
    hg = capped
    # Given Bob sent 3 messages on line A, ten minutes apart
    first = []
    for n in range(3):
        first.append(hg.enqueue(to=BOB, body=f"update {n}", line=LINE_A))
        hg.drain()
        clock.tick(timedelta(minutes=10))
    assert [hg.explain(m)["state"] for m in first] == ["sent"] * 3

    # When a fourth to Bob on A, one to Carol on A and four to Bob on B are dispatched
    fourth = hg.enqueue(to=BOB, body="update 3", line=LINE_A)
    carol = hg.enqueue(to=CAROL, body="hello", line=LINE_A)
    on_b = [hg.enqueue(to=BOB, body=f"note {n}", line=LINE_B) for n in range(4)]
    hg.drain()

    # Then the fourth waits until Bob's first send on A leaves the day, naming the cap;
    # Carol, and Bob on the line with the default cap, are sent
    held = hg.explain(fourth)
    decision = held["decisions"][-1]
    assert (held["state"], decision["code"]) == ("throttled", CAP_CODES[CAP].value)
    assert decision["not_before"] == (START + DAY).isoformat()
    assert f"{CAP}=3" in decision["reason"]
    assert [hg.explain(m)["state"] for m in [carol, *on_b]] == ["sent"] * 5

    # And once that day has passed, it goes
    clock.move_to(START + DAY)
    hg.drain()
    assert hg.explain(fourth)["state"] == "sent"
