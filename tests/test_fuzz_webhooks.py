"""Bad webhooks on purpose, through the real ASGI app: always a 4xx, never a 5xx, no change.

Signed bodies that are not events (arbitrary bytes, arbitrary JSON, valid events with a
field replaced by a wrong type or a huge string) are refused 400/413/422 and change no
line, chat or message; unsigned or badly signed ones are refused 401 and change nothing,
not even the event log.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx2
import pydantic.v1  # noqa: F401  FastAPI imports it lazily, which fails once freezegun fakes date
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from scheduler.client import Healthgate
from scheduler.settings import Settings
from scheduler.store import listing
from scheduler.web import create_app
from tests.conftest import LINE_A, LINE_B, START, budget, examples
from tests.linq_events import (
    SECRET,
    chat_created,
    chat_health_event,
    line_event,
    message_event,
    signed,
)
from tests.web_client import BASE_URL

pytestmark = pytest.mark.timeout(budget(120))

BOB = "+14155550123"
REFUSED = {400, 413, 422}
FUZZ = settings(
    max_examples=examples(40),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
        st.sampled_from(["\x00", "x" * 300, "9" * 5_000, "+14155550123", "STOP", "OPTED_OUT"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@pytest.fixture
def client(settings: Settings, hg: Healthgate) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update={"linq_webhook_secret": SecretStr(SECRET)}))
    # A server error must come back as a 500 to be seen, not as the test's own exception.
    with TestClient(app, base_url=BASE_URL, raise_server_exceptions=False) as test_client:
        yield test_client


Post = Callable[[bytes, dict[str, str]], httpx2.Response]


@pytest.fixture
def post(client: TestClient) -> Post:
    return lambda body, headers: client.post("/webhooks/linq", content=body, headers=headers)


def snapshot(hg: Healthgate, with_events: bool = False) -> dict[str, Any]:
    """Lines, chats and messages (and the event log when asked) as the store has them."""
    with hg.runtime.sessions() as session:
        found = {
            "lines": hg.status()["lines"],
            "chats": listing.chats(session, None, None, 1000),
            "messages": listing.messages(session, None, 1000),
        }
        if with_events:
            found["events"] = listing.events(session, None, 1000, with_payload=True)
    return found


@pytest.fixture
def known(hg: Healthgate) -> Healthgate:
    """A store with something to lose: queued messages on a chat with a provider id."""
    hg.enqueue(to=BOB, body="hi", line=LINE_A, chat_id="chat_0001")
    hg.enqueue(to=BOB, body="later", line=LINE_A)
    hg.set_line_health(LINE_B, "AT_RISK")
    return hg


def events() -> st.SearchStrategy[dict[str, Any]]:
    """Valid events of every kind healthgate reads, built afresh (fresh event ids)."""
    return st.sampled_from(
        [
            lambda: message_event(LINE_A, BOB, START, text="STOP", status="OPTED_OUT"),
            lambda: message_event(LINE_A, BOB, START, text="thanks", status="AT_RISK"),
            lambda: chat_health_event(LINE_A, "CRITICAL", START),
            lambda: chat_created(LINE_A, BOB, "HEALTHY", START),
            lambda: line_event(LINE_A, START, new_reputation="CRITICAL", new_status="FLAGGED"),
        ]
    ).map(lambda build: build())


def leaves(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    items = document.items() if isinstance(document, dict) else enumerate(document)
    for key, value in items:
        found.append((*prefix, key))
        if isinstance(value, dict | list):
            found.extend(leaves(value, (*prefix, key)))
    return found


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one to three fields replaced by anything, or removed."""
    event = draw(events())
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        *parents, last = draw(st.sampled_from(leaves(event)))
        holder: Any = event
        for key in parents:
            holder = holder[key]
        if draw(st.booleans()) or not isinstance(holder, dict):
            holder[last] = draw(json_values)
        else:
            del holder[last]
    return event


def assert_refused_or_applied(
    hg: Healthgate, before: dict[str, Any], response: httpx2.Response
) -> None:
    """A 4xx naming the field, with nothing changed; or a 200 for what was still an event."""
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        return
    assert response.status_code in REFUSED, response.text
    assert "error" in response.json()
    assert snapshot(hg) == before


# Standard Webhooks signs text: a body that is not UTF-8 cannot carry a signature at all.
utf8_bytes = st.one_of(
    st.text(max_size=300).map(str.encode),
    st.binary(max_size=300).filter(lambda data: data.decode("utf-8", "ignore").encode() == data),
)


@FUZZ
@given(body=utf8_bytes)
def test_signed_bytes_that_are_not_an_event_are_refused_and_change_nothing(
    known: Healthgate, post: Post, body: bytes
) -> None:
    # Given a store, When any signed bytes arrive
    before = snapshot(known)
    response = post(*signed(body, START))

    # Then they are refused (or read, if they happen to be an event), never a 5xx
    assert_refused_or_applied(known, before, response)


@FUZZ
@given(document=json_values)
def test_signed_json_that_is_not_an_event_is_refused_and_changes_nothing(
    known: Healthgate, post: Post, document: Any
) -> None:
    before = snapshot(known)
    body, headers = signed(json.dumps(document).encode(), START)

    response = post(body, headers)

    assert response.status_code in REFUSED, response.text
    assert snapshot(known) == before


@FUZZ
@given(event=mutated_events())
def test_signed_events_with_wrong_types_or_huge_values_are_refused_and_change_nothing(
    known: Healthgate, post: Post, event: dict[str, Any]
) -> None:
    # Given a valid event with fields replaced by wrong types, huge strings or removed
    before = snapshot(known)

    # When it arrives signed
    response = post(*signed(event, START))

    # Then it is refused naming the field with nothing changed, or applied as an event
    assert_refused_or_applied(known, before, response)


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


@FUZZ
@given(
    event=events(),
    headers=st.fixed_dictionaries(
        {},
        optional={
            "webhook-id": header_text,
            "webhook-timestamp": st.one_of(
                header_text,
                st.integers(-(10**12), 10**12).map(str),
                st.sampled_from([str(int((START - timedelta(minutes=6)).timestamp()))]),
            ),
            "webhook-signature": st.one_of(header_text, header_text.map(lambda text: f"v1,{text}")),
        },
    ),
)
def test_unsigned_or_badly_signed_requests_are_401_and_change_nothing(
    known: Healthgate, post: Post, event: dict[str, Any], headers: dict[str, str]
) -> None:
    # Given a store, its event log included
    before = snapshot(known, with_events=True)

    # When a real event arrives with missing, forged or stale signature headers
    response = post(json.dumps(event).encode(), headers)

    # Then it is refused 401 and nothing is read or stored
    assert response.status_code == 401, response.text
    assert snapshot(known, with_events=True) == before


@FUZZ
@given(event=events(), cut=st.integers(min_value=0, max_value=40), extra=st.binary(max_size=4))
def test_a_body_changed_after_signing_is_401(
    known: Healthgate, post: Post, event: dict[str, Any], cut: int, extra: bytes
) -> None:
    body, headers = signed(event, START)
    changed = body[: len(body) - cut] + extra
    if changed == body:
        changed += b" "

    before = snapshot(known, with_events=True)
    response = post(changed, headers)

    assert response.status_code == 401, response.text
    assert snapshot(known, with_events=True) == before


def with_field(path: tuple[str, ...], value: str) -> dict[str, Any]:
    event = message_event(LINE_A, "+14155550124", START, text="STOP", chat_id="chat_new")
    holder: Any = event
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    return event


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("event_id",), "e" * 201),
        (("event_id",), "evt\x00"),
        (("event_type",), "t" * 65),
        (("event_type",), "message\x00"),
        (("data", "chat", "id"), "c" * 65),
        (("data", "chat", "id"), "chat\x00"),
    ],
    ids=["long-event-id", "nul-event-id", "long-type", "nul-type", "long-chat-id", "nul-chat-id"],
)
def test_ids_too_long_or_with_nul_are_422_naming_the_field(
    known: Healthgate, post: Post, path: tuple[str, ...], value: str
) -> None:
    # Given ids longer than the store keeps, or holding NUL (they used to fail the insert
    # on PostgreSQL with a 500)
    before = snapshot(known)

    # When such an event arrives signed
    response = post(*signed(with_field(path, value), START))

    # Then it is refused naming the field, and nothing changed
    assert response.status_code == 422, response.text
    assert response.json()["field"] == ".".join(path)
    assert snapshot(known) == before


@pytest.mark.parametrize("body", [b"\x00", b'{"event_id": "evt\\u0000x"}'], ids=["nul", "nul-id"])
def test_a_body_holding_nul_is_400_or_422_and_recorded(
    known: Healthgate, post: Post, body: bytes
) -> None:
    response = post(*signed(body, START))

    assert response.status_code in REFUSED, response.text
    with known.runtime.sessions() as session:
        [event] = listing.events(session, "rejected", 10)
    assert event["outcome"] == "rejected"


def test_a_webhook_id_longer_than_the_store_keeps_is_still_recorded(
    known: Healthgate, post: Post
) -> None:
    event = line_event(LINE_A, START, new_reputation="SICK")
    del event["event_id"]

    response = post(*signed(event, START, webhook_id="w" * 300))

    assert response.status_code == 422, response.text
    with known.runtime.sessions() as session:
        [stored] = listing.events(session, None, 10)
    assert stored["id"].startswith("linq:sha256:")


FAR = "9999-12-31T23:00:00-12:00"  # aware, but after the last moment UTC can hold


@pytest.mark.parametrize(
    ("event", "path"),
    [
        (
            message_event(LINE_A, BOB, START, text="hi", status="AT_RISK"),
            ("data", "chat", "health_status", "updated_at"),
        ),
        (line_event(LINE_A, START, new_reputation="CRITICAL"), ("data", "changed_at")),
        (message_event(LINE_A, BOB, START, text="hi"), ("data", "sent_at")),
        (line_event(LINE_A, START, new_reputation="CRITICAL"), ("created_at",)),
    ],
    ids=["health-updated-at", "changed-at", "sent-at", "created-at"],
)
def test_a_time_with_no_utc_equivalent_is_422_naming_the_field(
    known: Healthgate, post: Post, event: dict[str, Any], path: tuple[str, ...]
) -> None:
    # Given an event whose time is past what UTC can hold (it used to answer 500)
    holder: Any = event
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = FAR
    before = snapshot(known)

    # When it arrives signed
    response = post(*signed(event, START))

    # Then it is refused naming the field, and nothing changed
    assert response.status_code == 422, response.text
    assert response.json()["field"] == ".".join(path)
    assert snapshot(known) == before
