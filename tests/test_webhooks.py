"""Signed Linq webhooks through the real ASGI app, on every store: each gate end to end."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pydantic.v1  # noqa: F401  FastAPI imports it lazily, which fails once freezegun fakes date
import pytest
from fastapi.testclient import TestClient
from freezegun.api import FrozenDateTimeFactory
from pydantic import SecretStr
from sqlalchemy import text

from scheduler.client import Healthgate
from scheduler.settings import Settings
from scheduler.signals.webhooks.inbox import LinqInbox, Receipt
from scheduler.store import listing
from scheduler.store.models import WebhookEvent
from scheduler.web import create_app
from tests.conftest import LINE_A, START
from tests.linq_events import (
    CHAT_ID,
    OTHER_SECRET,
    SECRET,
    chat_created,
    chat_health_event,
    line_event,
    message_event,
    signed,
)
from tests.test_e2e import wait_until
from tests.web_client import BASE_URL

BOB = "+14155550123"
#: A time far in the future: a signal stamped then would win every comparison.
FAR = datetime(2999, 1, 1, tzinfo=UTC)
Post = Callable[..., httpx2.Response]


@pytest.fixture
def client(settings: Settings, hg: Healthgate) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update={"linq_webhook_secret": SecretStr(SECRET)}))
    with TestClient(app, base_url=BASE_URL) as test_client:
        yield test_client


@pytest.fixture
def post(client: TestClient) -> Post:
    """Sign a payload now (the frozen clock) and post it to the webhook endpoint."""

    def _post(payload: dict[str, Any] | bytes, **kwargs: Any) -> httpx2.Response:
        at = kwargs.pop("signed_at", None) or START
        body, headers = signed(payload, at, **kwargs)
        return client.post("/webhooks/linq", content=body, headers=headers)

    return _post


def state(hg: Healthgate, message_id: str) -> str:
    return str(hg.explain(message_id)["state"])


def stored(hg: Healthgate) -> dict[str, Any]:
    """Everything a webhook could change: lines, chats, messages, recorded events."""
    with hg.runtime.sessions() as session:
        return {
            "status": hg.status(),
            "chats": listing.chats(session, None, None, 1000),
            "messages": listing.messages(session, None, 1000),
            "events": listing.events(session, None, 1000, with_payload=True),
        }


def events(hg: Healthgate) -> list[dict[str, Any]]:
    with hg.runtime.sessions() as session:
        return listing.events(session, None, 100)


def test_stop_drops_the_chats_whole_queue(hg: Healthgate, post: Post) -> None:
    # Given two messages queued for Bob
    queued = [hg.enqueue(to=BOB, body=f"m{i}", line=LINE_A) for i in range(2)]

    # When Bob's STOP arrives as a signed message.received
    response = post(message_event(LINE_A, BOB, START, text="STOP", status="OPTED_OUT"))

    # Then both are dropped at once and the event is recorded as applied
    assert response.status_code == 200, response.text
    assert [state(hg, m) for m in queued] == ["dropped", "dropped"]
    assert [e["outcome"] for e in events(hg)] == ["applied"]


def test_optin_after_stop_lets_later_messages_send(
    hg: Healthgate, post: Post, clock: FrozenDateTimeFactory
) -> None:
    # Given Bob opted out
    post(message_event(LINE_A, BOB, START, text="STOP", status="OPTED_OUT"))
    clock.tick(timedelta(minutes=5))
    later = START + timedelta(minutes=5)

    # When he sends OPTIN, and a message is enqueued afterwards
    response = post(
        message_event(LINE_A, BOB, later, text="OPTIN", status="HEALTHY"), signed_at=later
    )
    message_id = hg.enqueue(to=BOB, body="welcome back", line=LINE_A)
    hg.drain()

    # Then it is sent
    assert response.status_code == 200, response.text
    assert state(hg, message_id) == "sent"


def test_stop_keyword_alone_opts_out_when_the_event_has_no_health(
    hg: Healthgate, post: Post
) -> None:
    message_id = hg.enqueue(to=BOB, body="hi", line=LINE_A)

    post(message_event(LINE_A, BOB, START, text="STOP"))

    assert state(hg, message_id) == "dropped"


def test_critical_reputation_pauses_the_line_and_healthy_resumes_it(
    hg: Healthgate, post: Post, clock: FrozenDateTimeFactory
) -> None:
    # Given the line turned CRITICAL
    post(line_event(LINE_A, START, new_reputation="CRITICAL", new_status="ACTIVE"))
    message_id = hg.enqueue(to=BOB, body="hi", line=LINE_A)
    hg.drain()
    assert state(hg, message_id) == "deferred"

    # When it is HEALTHY again
    clock.tick(timedelta(minutes=10))
    later = START + timedelta(minutes=10)
    post(line_event(LINE_A, later, new_reputation="HEALTHY", new_status="ACTIVE"), signed_at=later)
    hg.drain()

    # Then the held message is sent
    assert state(hg, message_id) == "sent"


def test_deprecated_health_status_alias_is_read_when_reputation_is_absent(
    hg: Healthgate, post: Post
) -> None:
    response = post(line_event(LINE_A, START, new_health_status="CRITICAL"))

    assert response.status_code == 200, response.text
    assert hg.status()["lines"][0]["reputation"] == "CRITICAL"


def test_reputation_is_preferred_over_the_deprecated_alias(hg: Healthgate, post: Post) -> None:
    post(line_event(LINE_A, START, new_reputation="AT_RISK", new_health_status="CRITICAL"))

    assert hg.status()["lines"][0]["reputation"] == "AT_RISK"


def test_flagged_status_pauses_the_line_until_active(
    hg: Healthgate, post: Post, clock: FrozenDateTimeFactory
) -> None:
    post(line_event(LINE_A, START, new_reputation="HEALTHY", new_status="FLAGGED"))
    message_id = hg.enqueue(to=BOB, body="hi", line=LINE_A)
    hg.drain()
    assert state(hg, message_id) == "deferred"

    clock.tick(timedelta(minutes=10))
    later = START + timedelta(minutes=10)
    post(line_event(LINE_A, later, new_reputation="HEALTHY", new_status="ACTIVE"), signed_at=later)
    hg.drain()

    assert state(hg, message_id) == "sent"


def test_chat_health_event_finds_the_chat_by_the_providers_id(hg: Healthgate, post: Post) -> None:
    # Given the chat was announced with its id, and a message queued on it
    post(chat_created(LINE_A, BOB, "HEALTHY", START - timedelta(hours=1)))
    message_id = hg.enqueue(to=BOB, body="hi", line=LINE_A)

    # When a delivery receipt on that chat says CRITICAL
    response = post(chat_health_event(LINE_A, "CRITICAL", START))
    hg.drain()

    # Then the chat's message is held
    assert response.json()["outcome"] == "applied"
    assert state(hg, message_id) == "deferred"


def test_older_chat_health_event_never_overwrites_a_newer_one(hg: Healthgate, post: Post) -> None:
    # Given the chat is CRITICAL as of START
    post(chat_created(LINE_A, BOB, "HEALTHY", START - timedelta(hours=2)))
    post(chat_health_event(LINE_A, "CRITICAL", START))
    message_id = hg.enqueue(to=BOB, body="hi", line=LINE_A)

    # When an older HEALTHY arrives late
    response = post(chat_health_event(LINE_A, "HEALTHY", START - timedelta(hours=1)))
    hg.drain()

    # Then it is recorded as ignored and the chat stays CRITICAL
    assert response.json()["outcome"] == "ignored"
    assert state(hg, message_id) == "deferred"


def test_replayed_event_changes_nothing(
    hg: Healthgate, post: Post, clock: FrozenDateTimeFactory
) -> None:
    # Given Bob's STOP was applied, then he opted back in by other means
    stop = message_event(LINE_A, BOB, START, text="STOP", event_id="evt_stop")
    post(stop, webhook_id="msg_stop")
    clock.tick(1)
    hg.record_inbound(LINE_A, BOB, "OPTIN")
    message_id = hg.enqueue(to=BOB, body="hi", line=LINE_A)

    # When the same STOP is delivered again
    response = post(stop, webhook_id="msg_stop")
    hg.drain()

    # Then it is answered 200 and the new message still goes out
    assert response.status_code == 200
    assert response.json()["outcome"] == "duplicate"
    assert state(hg, message_id) == "sent"
    assert len(events(hg)) == 1


def test_forged_signature_is_401_and_changes_nothing(hg: Healthgate, post: Post) -> None:
    hg.enqueue(to=BOB, body="hi", line=LINE_A)
    before = stored(hg)

    response = post(message_event(LINE_A, BOB, START, text="STOP"), secret=OTHER_SECRET)

    assert response.status_code == 401
    assert "webhook-signature" in response.json()["error"]
    assert stored(hg) == before


def test_stale_timestamp_is_401_and_changes_nothing(hg: Healthgate, post: Post) -> None:
    hg.enqueue(to=BOB, body="hi", line=LINE_A)
    before = stored(hg)

    response = post(
        message_event(LINE_A, BOB, START, text="STOP"), signed_at=START - timedelta(minutes=6)
    )

    assert response.status_code == 401
    assert "too old" in response.json()["error"]
    assert stored(hg) == before


def test_unsigned_request_is_401(hg: Healthgate, client: TestClient) -> None:
    before = stored(hg)

    response = client.post("/webhooks/linq", json=message_event(LINE_A, BOB, START, text="STOP"))

    assert response.status_code == 401
    assert stored(hg) == before


def test_webhooks_are_refused_without_a_secret(settings: Settings, hg: Healthgate) -> None:
    body, headers = signed(message_event(LINE_A, BOB, START, text="STOP"), START)

    with TestClient(create_app(settings), base_url=BASE_URL) as unconfigured:
        response = unconfigured.post("/webhooks/linq", content=body, headers=headers)

    assert response.status_code == 503
    assert "HEALTHGATE_LINQ_WEBHOOK_SECRET" in response.json()["error"]
    assert events(hg) == []


@pytest.mark.parametrize(
    ("payload", "status", "field", "value"),
    [
        (b'{"event_id": "evt_1", "data": ', 400, "body", '{"event_id": "evt_1", "data": '),
        (
            message_event(LINE_A, BOB, START, text="hi", status="SICK"),
            422,
            "data.chat.health_status.status",
            "SICK",
        ),
        (
            line_event(LINE_A, START, new_reputation="OPTED_OUT"),
            422,
            "data.new_reputation",
            "OPTED_OUT",
        ),
        (line_event(LINE_A, START, new_status="PAUSED"), 422, "data.new_status", "PAUSED"),
        (
            message_event(LINE_A, BOB, START, text="hi", status="AT_RISK", status_at=FAR),
            422,
            "data.chat.health_status.updated_at",
            FAR.isoformat(),
        ),
        (
            line_event(LINE_A, FAR, new_reputation="CRITICAL"),
            422,
            "data.changed_at",
            FAR.isoformat(),
        ),
        (
            {**line_event(LINE_A, START, new_reputation="CRITICAL"), "created_at": "yesterday"},
            422,
            "created_at",
            "yesterday",
        ),
    ],
    ids=[
        "malformed-json",
        "unknown-chat-status",
        "opted-out-line",
        "unknown-line-status",
        "chat-health-from-the-future",
        "line-change-from-the-future",
        "bad-time",
    ],
)
def test_bad_input_is_4xx_naming_the_field_recorded_rejected_and_changes_nothing(
    hg: Healthgate, post: Post, payload: Any, status: int, field: str, value: str
) -> None:
    # Given a queued message and a known state
    hg.enqueue(to=BOB, body="hi", line=LINE_A)
    before = stored(hg)

    # When a signed but bad event arrives
    response = post(payload)

    # Then it is refused, naming the field and the value, recorded, and nothing else changed
    assert response.status_code == status, response.text
    assert (response.json()["field"], response.json()["value"]) == (field, value)
    assert value in response.json()["error"]
    after = stored(hg)
    [event] = after.pop("events")
    before.pop("events")
    assert after == before
    assert (event["outcome"], event["detail"]) == ("rejected", response.json()["error"])


@pytest.mark.parametrize(
    "payload",
    [
        line_event("+14155550199", START, new_reputation="CRITICAL"),
        message_event("+14155550199", BOB, START, text="STOP", chat_id="chat_other"),
    ],
    ids=["line-event", "inbound"],
)
def test_an_account_line_healthgate_does_not_send_from_is_answered_200_ignored(
    hg: Healthgate, post: Post, payload: dict[str, Any]
) -> None:
    # Given a queued message and a known state
    hg.enqueue(to=BOB, body="hi", line=LINE_A)
    before = stored(hg)

    # When an event about a line the policy does not declare arrives
    response = post(payload)

    # Then it is answered 200 (so the provider stops delivering it), recorded ignored
    # naming the line, and nothing else changed
    assert response.status_code == 200, response.text
    after = stored(hg)
    [event] = after.pop("events")
    before.pop("events")
    assert after == before
    assert event["outcome"] == "ignored"
    assert "+14155550199" in event["detail"]


def test_event_type_without_a_signal_is_recorded_ignored(hg: Healthgate, post: Post) -> None:
    payload = line_event(LINE_A, START, new_reputation="CRITICAL")
    payload["event_type"] = "chat.typing_indicator.started"

    response = post(payload)

    assert response.status_code == 200
    assert [(e["event_type"], e["outcome"]) for e in events(hg)] == [
        ("chat.typing_indicator.started", "ignored")
    ]
    assert hg.status()["lines"][0]["reputation"] == "HEALTHY"


def test_inbound_reply_is_stamped_with_the_time_the_recipient_sent_it(
    hg: Healthgate, post: Post, clock: FrozenDateTimeFactory
) -> None:
    sent = START - timedelta(minutes=3)

    post(message_event(LINE_A, BOB, sent, text="thanks!"))

    with hg.runtime.sessions() as session:
        [chat] = listing.chats(session, None, LINE_A, 10)
    assert (chat["provider_chat_id"], chat["last_inbound_at"]) == (CHAT_ID, sent.isoformat())


def test_inbound_reply_lifts_the_at_risk_throttle(hg: Healthgate, post: Post) -> None:
    # Given an AT_RISK chat whose second message is throttled
    post(message_event(LINE_A, BOB, START - timedelta(hours=1), text="hi", status="AT_RISK"))
    hg.enqueue(to=BOB, body="one", line=LINE_A)
    second = hg.enqueue(to=BOB, body="two", line=LINE_A)
    hg.drain()
    assert state(hg, second) == "throttled"

    # When Bob replies
    post(
        message_event(
            LINE_A, BOB, START, text="sure", status="AT_RISK", status_at=START - timedelta(hours=1)
        )
    )
    hg.drain()

    # Then the second message goes out
    assert state(hg, second) == "sent"


def test_health_from_before_an_opt_out_does_not_clear_it(hg: Healthgate, post: Post) -> None:
    # Given Bob's STOP, whose event still carried the chat's earlier HEALTHY status
    earlier = START - timedelta(hours=1)
    post(message_event(LINE_A, BOB, START, text="STOP", status="HEALTHY", status_at=earlier))

    # When a delivery receipt with that same earlier HEALTHY arrives afterwards
    response = post(chat_health_event(LINE_A, "HEALTHY", earlier))
    message_id = hg.enqueue(to=BOB, body="hi", line=LINE_A)

    # Then Bob stays opted out
    assert response.json()["outcome"] == "ignored"
    assert state(hg, message_id) == "dropped"


def test_a_late_stop_older_than_an_optin_is_kept_and_the_optin_stands(
    hg: Healthgate, post: Post
) -> None:
    # Given Bob's OPTIN at START was recorded
    post(message_event(LINE_A, BOB, START, text="OPTIN"))

    # When his earlier STOP arrives late
    response = post(message_event(LINE_A, BOB, START - timedelta(minutes=1), text="STOP"))
    message_id = hg.enqueue(to=BOB, body="hi", line=LINE_A)

    # Then the STOP is kept in the ledger, and the newer OPTIN stands
    assert response.json()["outcome"] == "applied"
    assert state(hg, message_id) == "queued"


def test_rejected_event_delivered_again_is_read_again_under_its_event_id(
    hg: Healthgate, post: Post
) -> None:
    payload = line_event(LINE_A, START, new_reputation="SICK", event_id="evt_bad")
    first = post(payload, webhook_id="msg_a")

    again = post(payload, webhook_id="msg_b")

    # A refusal changed nothing, so the redelivery is evaluated again (and refused again)
    assert (first.status_code, again.status_code) == (422, 422)
    assert [(e["id"], e["outcome"]) for e in events(hg)] == [("linq:evt_bad", "rejected")]


def test_oversized_body_is_413_and_not_stored(hg: Healthgate, post: Post) -> None:
    response = post(b"x" * 1_000_001)

    assert response.status_code == 413
    assert events(hg) == []


# PostgreSQL only: SQLite serializes writers at BEGIN, so the second delivery cannot race.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_concurrent_delivery_of_the_same_event_is_applied_once(hg: Healthgate) -> None:
    # Given a delivery of event evt_race whose transaction has written its record, not yet
    # committed, and a second delivery of the same event arriving meanwhile
    message_id = hg.enqueue(to=BOB, body="hi", line=LINE_A)
    body, headers = signed(
        message_event(LINE_A, BOB, START, text="STOP", event_id="evt_race"), START
    )
    inbox = LinqInbox(hg.runtime, SecretStr(SECRET))
    answers: list[Receipt] = []
    second = threading.Thread(target=lambda: answers.append(inbox.receive(body, headers)))
    with hg.runtime.sessions.begin() as first:
        first.add(
            WebhookEvent(
                id="linq:evt_race",
                source="linq",
                event_type="message.received",
                received_at=START,
                outcome="ignored",
                payload="{}",
            )
        )
        first.flush()
        second.start()
        wait_until(lambda: lock_waits(hg) > 0, 10, "the second delivery to wait on the record")
    # When the first commits
    second.join(timeout=10)

    # Then the second answers as a redelivery and applies nothing
    assert [(a.status_code, a.body["outcome"]) for a in answers] == [(200, "duplicate")]
    assert state(hg, message_id) == "queued"
    assert [e["outcome"] for e in events(hg)] == ["ignored"]


def lock_waits(hg: Healthgate) -> int:
    with hg.runtime.engine.connect() as conn:
        query = text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return int(conn.execute(query).scalar_one())
