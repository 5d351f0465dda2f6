"""Dispatch through the gate, on every store, with the clock frozen."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import pytest
from freezegun.api import FrozenDateTimeFactory
from sqlalchemy import select
from sqlalchemy.orm import Session

from policies.outcome import Failure
from policies.pace import Limits, Verdict
from scheduler import constants
from scheduler.client import Healthgate
from scheduler.dispatch import Claim, claim_due, dispatch_claimed
from scheduler.limits import MemoryLimiter, Ticket
from scheduler.providers import Outbound, SendFailed, Sent
from scheduler.settings import Settings
from scheduler.store.models import Chat
from tasks.application import create_app
from tests.conftest import LINE_A, LINE_B, POLICY, START
from tests.test_limits import WIDE

Sends = Callable[[], list[dict[str, str]]]
BOB = "+14155550123"
CAROL = "+14155550124"


def state(hg: Healthgate, message_id: str) -> str:
    return str(hg.explain(message_id)["state"])


def last(hg: Healthgate, message_id: str) -> dict[str, str]:
    decision: dict[str, str] = hg.explain(message_id)["decisions"][-1]
    return decision


def test_healthy_chat_message_is_sent_once(hg: Healthgate, sends: Sends) -> None:
    message_id = hg.enqueue(to=BOB, body="hello", line=LINE_A)

    hg.drain()
    hg.drain()

    assert state(hg, message_id) == "sent"
    assert [
        (s["message_id"], s["line"], s["recipient"], s["idempotency_key"]) for s in sends()
    ] == [(message_id, LINE_A, BOB, message_id)]


def test_send_at_in_the_future_waits_until_then(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    message_id = hg.enqueue(to=BOB, body="later", line=LINE_A, send_at=START + timedelta(hours=1))

    hg.drain()
    assert state(hg, message_id) == "queued"
    clock.tick(timedelta(hours=1))
    hg.drain()

    assert state(hg, message_id) == "sent"


def test_at_risk_chat_second_message_in_window_is_throttled(hg: Healthgate, sends: Sends) -> None:
    hg.set_chat_health(LINE_A, BOB, "AT_RISK")
    first = hg.enqueue(to=BOB, body="one", line=LINE_A)
    second = hg.enqueue(to=BOB, body="two", line=LINE_A)

    hg.drain()

    assert (state(hg, first), state(hg, second)) == ("sent", "throttled")
    assert last(hg, second)["code"] == "chat_at_risk"
    assert last(hg, second)["not_before"] == (START + timedelta(hours=24)).isoformat()
    assert len(sends()) == 1


def test_at_risk_throttle_ends_when_the_window_passes(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    hg.set_chat_health(LINE_A, BOB, "AT_RISK")
    hg.enqueue(to=BOB, body="one", line=LINE_A)
    second = hg.enqueue(to=BOB, body="two", line=LINE_A)
    hg.drain()

    clock.tick(timedelta(hours=23, minutes=59))
    hg.drain()
    assert state(hg, second) == "throttled"
    clock.tick(timedelta(minutes=1))
    hg.drain()

    assert state(hg, second) == "sent"


def test_a_reply_lifts_the_at_risk_throttle(hg: Healthgate, sends: Sends) -> None:
    hg.set_chat_health(LINE_A, BOB, "AT_RISK")
    hg.enqueue(to=BOB, body="one", line=LINE_A)
    second = hg.enqueue(to=BOB, body="two", line=LINE_A)
    hg.drain()

    hg.record_inbound(LINE_A, BOB, "sounds good")
    hg.drain()

    assert state(hg, second) == "sent"


def test_critical_chat_is_deferred_and_sent_after_it_is_healthy(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    hg.set_chat_health(LINE_A, BOB, "CRITICAL")
    message_id = hg.enqueue(to=BOB, body="hold me", line=LINE_A)

    hg.drain()
    assert state(hg, message_id) == "deferred"
    assert last(hg, message_id)["code"] == "chat_critical"
    clock.tick(1)
    hg.set_chat_health(LINE_A, BOB, "AT_RISK")
    hg.drain()
    assert state(hg, message_id) == "deferred"  # AT_RISK is not enough
    clock.tick(1)
    hg.set_chat_health(LINE_A, BOB, "HEALTHY")
    hg.drain()

    assert state(hg, message_id) == "sent"
    assert len(sends()) == 1


def test_deferred_message_expires_after_the_maximum_hold(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    hg.set_chat_health(LINE_A, BOB, "CRITICAL")
    message_id = hg.enqueue(to=BOB, body="hold me", line=LINE_A)
    hg.drain()

    clock.tick(timedelta(hours=72))
    hg.drain()

    assert state(hg, message_id) == "expired"
    assert last(hg, message_id)["code"] == "max_hold"
    assert sends() == []


def test_deferred_message_expires_at_its_own_expires_at(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    hg.set_chat_health(LINE_A, BOB, "CRITICAL")
    message_id = hg.enqueue(
        to=BOB, body="soon stale", line=LINE_A, expires_at=START + timedelta(hours=2)
    )
    hg.drain()
    assert last(hg, message_id)["not_before"] == (START + timedelta(hours=2)).isoformat()

    clock.tick(timedelta(hours=2))
    hg.drain()

    assert state(hg, message_id) == "expired"
    assert last(hg, message_id)["code"] == "expires_at"


def test_opt_out_drops_queued_messages_at_once(hg: Healthgate, sends: Sends) -> None:
    queued = [hg.enqueue(to=BOB, body=f"m{i}", line=LINE_A) for i in range(3)]
    other = hg.enqueue(to=CAROL, body="unaffected", line=LINE_A)

    hg.set_chat_health(LINE_A, BOB, "OPTED_OUT")

    assert [state(hg, m) for m in queued] == ["dropped"] * 3
    hg.drain()
    assert [s["message_id"] for s in sends()] == [other]


def test_opt_out_covers_the_recipient_on_every_line(hg: Healthgate, sends: Sends) -> None:
    on_b = hg.enqueue(to=BOB, body="from b", line=LINE_B)

    hg.record_inbound(LINE_A, BOB, "STOP")
    later = hg.enqueue(to=BOB, body="from b again", line=LINE_B)
    hg.drain()

    assert (state(hg, on_b), state(hg, later)) == ("dropped", "dropped")
    assert sends() == []


def test_optin_restores_sending(hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory) -> None:
    hg.record_inbound(LINE_A, BOB, "STOP")
    clock.tick(1)
    hg.record_inbound(LINE_A, BOB, "OPTIN")

    message_id = hg.enqueue(to=BOB, body="welcome back", line=LINE_A)
    hg.drain()

    assert state(hg, message_id) == "sent"


def test_claimed_message_is_dropped_by_an_opt_out_before_dispatch(
    hg: Healthgate, sends: Sends
) -> None:
    message_id = hg.enqueue(to=BOB, body="racing", line=LINE_A)
    claim = claim_due(hg.runtime, START, 10)

    hg.set_chat_health(LINE_A, BOB, "OPTED_OUT")
    report = dispatch_claimed(hg.runtime, claim, START)

    assert state(hg, message_id) == "dropped"
    assert report.counts == {"stale_claim": 1}
    assert sends() == []


def test_critical_line_sends_nothing_and_resumes_when_healthy(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    hg.enqueue(to=BOB, body="warm up", line=LINE_B)
    hg.drain()
    hg.set_line_health(LINE_B, "CRITICAL")
    pinned = hg.enqueue(to=CAROL, body="pinned", line=LINE_B)
    existing = hg.enqueue(to=BOB, body="existing chat")

    hg.drain()
    assert (state(hg, pinned), state(hg, existing)) == ("deferred", "deferred")
    assert last(hg, existing)["code"] == "line_critical"
    assert len(sends()) == 1
    clock.tick(1)
    hg.set_line_health(LINE_B, "HEALTHY")
    hg.drain()

    assert (state(hg, pinned), state(hg, existing)) == ("sent", "sent")


def test_new_recipient_on_a_line_turned_critical_is_rerouted(hg: Healthgate, sends: Sends) -> None:
    message_id = hg.enqueue(to=BOB, body="routed")
    routed_to = hg.explain(message_id)["line"]
    other = LINE_B if routed_to == LINE_A else LINE_A

    hg.set_line_health(routed_to, "CRITICAL")
    hg.drain()

    assert state(hg, message_id) == "sent"
    assert [d["action"] for d in hg.explain(message_id)["decisions"]][-3:] == [
        "REROUTE",
        "SEND",
        "SENT",
    ]
    assert sends()[0]["line"] == other


def test_flagged_line_sends_nothing(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    hg.set_line_health(LINE_A, "FLAGGED")
    message_id = hg.enqueue(to=BOB, body="x", line=LINE_A)

    hg.drain()

    assert state(hg, message_id) == "deferred"
    assert last(hg, message_id)["code"] == "line_flagged"
    clock.tick(1)
    hg.set_line_health(LINE_A, "ACTIVE")
    hg.drain()
    assert state(hg, message_id) == "sent"


def test_unrouted_message_is_released_when_a_line_recovers(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    hg.set_line_health(LINE_A, "CRITICAL")
    hg.set_line_health(LINE_B, "CRITICAL")
    message_id = hg.enqueue(to=BOB, body="waiting for a line")
    hg.drain()
    assert state(hg, message_id) == "deferred"

    clock.tick(1)
    hg.set_line_health(LINE_B, "HEALTHY")
    hg.drain()

    assert state(hg, message_id) == "sent"
    assert sends()[0]["line"] == LINE_B


@pytest.mark.parametrize(
    "policy_text", [POLICY + "\n[caps]\nsends_per_minute = 3\n"], indirect=False
)
def test_pace_cap_throttles_to_the_computed_moment(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    ids = [hg.enqueue(to=f"+1415555020{i}", body="hi", line=LINE_A) for i in range(5)]

    hg.drain()
    assert [state(hg, m) for m in ids] == ["sent"] * 3 + ["throttled"] * 2
    assert last(hg, ids[3])["code"] == "cap_sends_per_minute"
    assert last(hg, ids[3])["not_before"] == (START + timedelta(minutes=1)).isoformat()
    # The next waits its turn at the cap's pace (a minute over 3), not the same moment.
    turn = START + timedelta(minutes=1, seconds=20)
    assert last(hg, ids[4])["not_before"] == turn.isoformat()
    clock.tick(timedelta(minutes=1))
    hg.drain()
    assert [state(hg, m) for m in ids] == ["sent"] * 4 + ["throttled"]
    clock.tick(timedelta(seconds=20))
    hg.drain()

    assert [state(hg, m) for m in ids] == ["sent"] * 5


@pytest.mark.parametrize(
    "policy_text", [POLICY + "\n[caps]\nsends_per_minute = 4\n"], indirect=False
)
def test_at_risk_line_runs_at_its_pace_factor(hg: Healthgate, sends: Sends) -> None:
    hg.set_line_health(LINE_A, "AT_RISK")
    ids = [hg.enqueue(to=f"+1415555020{i}", body="hi", line=LINE_A) for i in range(4)]

    hg.drain()

    assert [state(hg, m) for m in ids] == ["sent"] * 2 + ["throttled"] * 2
    assert "AT_RISK pace" in last(hg, ids[2])["reason"]


def test_stale_claim_token_dispatches_nothing(hg: Healthgate, sends: Sends) -> None:
    message_id = hg.enqueue(to=BOB, body="once", line=LINE_A)
    claim = claim_due(hg.runtime, START, 10)

    report = dispatch_claimed(hg.runtime, Claim("not-the-token", claim.ids), START)
    dispatch_claimed(hg.runtime, claim, START)
    again = dispatch_claimed(hg.runtime, claim, START)

    assert report.counts == {"stale_claim": 1}
    assert again.counts == {"stale_claim": 1}
    assert state(hg, message_id) == "sent"
    assert len(sends()) == 1


def test_expired_lease_returns_the_message_to_the_queue(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    message_id = hg.enqueue(to=BOB, body="lost worker", line=LINE_A)
    dead = claim_due(hg.runtime, START, 10)

    clock.tick(timedelta(seconds=hg.runtime.settings.lease_seconds))
    hg.drain()
    late = dispatch_claimed(hg.runtime, dead, START)

    assert state(hg, message_id) == "sent"
    assert late.counts == {"stale_claim": 1}
    assert len(sends()) == 1


def test_two_claims_never_share_a_message(hg: Healthgate) -> None:
    hg.enqueue_many([{"to": f"+1415555020{i}", "body": "x"} for i in range(6)])

    first = claim_due(hg.runtime, START, 4)
    second = claim_due(hg.runtime, START, 4)

    assert len(first.ids) == 4
    assert len(second.ids) == 2
    assert not set(first.ids) & set(second.ids)


class Refusing:
    """A provider that fails every send the same way."""

    deduplicates = False

    def __init__(self, failure: SendFailed) -> None:
        self.failure = failure
        self.calls: list[Outbound] = []

    def send(self, message: Outbound) -> Sent:
        self.calls.append(message)
        raise self.failure

    def close(self) -> None:
        pass


def use(hg: Healthgate, provider: Refusing) -> None:
    hg.runtime.providers._clients["log"] = provider


def test_provider_opt_out_marks_the_chat_and_drops_its_queue(hg: Healthgate) -> None:
    use(hg, Refusing(SendFailed(Failure.RECIPIENT_OPTED_OUT, "HTTP 403, code 2024")))
    first = hg.enqueue(to=BOB, body="one", line=LINE_A)
    later = hg.enqueue(to=BOB, body="two", line=LINE_A, send_at=START + timedelta(hours=1))

    hg.drain()

    assert (state(hg, first), state(hg, later)) == ("dropped", "dropped")
    assert last(hg, first)["code"] == "provider_opted_out"
    assert hg.status()["chats"] == {"OPTED_OUT": 1}


def test_provider_line_block_pauses_the_line(hg: Healthgate) -> None:
    use(hg, Refusing(SendFailed(Failure.LINE_BLOCKED, "HTTP 403, code 2027")))
    message_id = hg.enqueue(to=BOB, body="one", line=LINE_A)

    hg.drain()

    assert state(hg, message_id) == "deferred"
    line = next(x for x in hg.status()["lines"] if x["number"] == LINE_A)
    assert line["status"] == "FLAGGED"


def test_transient_failure_retries_with_the_same_key_then_fails(
    hg: Healthgate, clock: FrozenDateTimeFactory
) -> None:
    provider = Refusing(SendFailed(Failure.TRANSIENT, "HTTP 503"))
    use(hg, provider)
    message_id = hg.enqueue(to=BOB, body="flaky", line=LINE_A)

    for _ in range(5):
        hg.drain()
        clock.tick(timedelta(hours=1))

    assert state(hg, message_id) == "failed"
    assert last(hg, message_id)["code"] == "attempts_exhausted"
    assert {call.idempotency_key for call in provider.calls} == {message_id}
    assert len(provider.calls) == 5


def test_rate_limit_waits_for_the_provider_hint(hg: Healthgate) -> None:
    use(hg, Refusing(SendFailed(Failure.RATE_LIMITED, "HTTP 429", timedelta(minutes=10))))
    message_id = hg.enqueue(to=BOB, body="busy", line=LINE_A)

    hg.drain()

    assert state(hg, message_id) == "throttled"
    assert last(hg, message_id)["not_before"] == (START + timedelta(minutes=10)).isoformat()


class Elsewhere(MemoryLimiter):
    """A shared limiter that also counts another host's sends, which this store never saw."""

    def __init__(self, line: str, new_chats: int) -> None:
        super().__init__()
        for i in range(new_chats):
            ticket = Ticket(f"other_{i}", 1, line, f"+1415555030{i}", new_chat=True)
            self.hit(None, ticket, WIDE, START)  # type: ignore[arg-type]
        #: The tickets of each call, as (message id, starts a conversation).
        self.calls: list[list[tuple[str, bool]]] = []

    def hit_many(
        self, session: Session, requests: Sequence[tuple[Ticket, Limits]], now: datetime
    ) -> list[Verdict]:
        self.calls.append([(ticket.message_id, ticket.new_chat) for ticket, _ in requests])
        return super().hit_many(session, requests, now)


ONE_NEW_A_DAY = POLICY + "\n[caps]\nnew_conversations_per_day = 1\n"


def test_a_batch_asks_the_limiter_once_for_all_its_sends(hg: Healthgate, sends: Sends) -> None:
    # Given three messages to three recipients, one of them twice
    limiter = hg.runtime.limiter = Elsewhere(LINE_A, new_chats=0)
    ids = [hg.enqueue(to=to, body="hi", line=LINE_A) for to in (BOB, CAROL, BOB)]

    # When one batch dispatches them
    hg.drain()

    # Then all go; the first pass asks for the two new conversations together, and
    # Bob's second message is asked for once his conversation is known to have started
    assert [state(hg, m) for m in ids] == ["sent"] * 3
    assert limiter.calls == [[(ids[0], True), (ids[1], True)], [(ids[2], False)]]


@pytest.mark.parametrize("policy_text", [ONE_NEW_A_DAY])
def test_a_conversation_the_limiter_refuses_to_start_is_not_started_by_the_next_message(
    hg: Healthgate, sends: Sends
) -> None:
    # Given a line whose one new conversation of the day another host already used
    hg.runtime.limiter = Elsewhere(LINE_A, new_chats=1)
    ids = [hg.enqueue(to=BOB, body=f"note {i}", line=LINE_A) for i in range(2)]

    # When both of Bob's messages are dispatched in one batch (this store saw no send)
    hg.drain()

    # Then neither goes: the second does not pass as part of a conversation the first
    # would have started, and the chat has not started
    assert [state(hg, m) for m in ids] == ["throttled", "throttled"]
    assert {last(hg, m)["code"] for m in ids} == {"cap_new_conversations_per_day"}
    assert sends() == []
    with hg.runtime.sessions() as session:
        chat = session.scalars(select(Chat).where(Chat.recipient == BOB)).one()
        assert chat.first_sent_at is None


def test_a_full_batch_claims_the_next_one_itself(hg: Healthgate, settings: Settings) -> None:
    # Given five due messages, batches of two, and tasks run where they are sent
    app = create_app(settings.model_copy(update={"dispatch_batch": 2}))
    app.conf.task_always_eager = True
    ids = [hg.enqueue(to=f"+1415555020{i}", body="hi", line=LINE_A) for i in range(5)]
    first = claim_due(hg.runtime, START, 2)

    # When the first batch is dispatched, with no tick after it
    app.tasks[constants.DISPATCH_TASK].apply(args=(first.token, first.ids))

    # Then each full batch claimed the next, and the last, not full, claimed nothing
    assert [state(hg, m) for m in ids] == ["sent"] * 5
    assert hg.status()["messages"].get("claimed", 0) == 0
