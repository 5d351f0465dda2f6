"""The providers' answers to a send are final: real clients over a fake HTTP side,
through the real dispatch path, on every store."""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from freezegun.api import FrozenDateTimeFactory

from policies.config import load_policy, parse_policy
from policies.errors import PolicyFileError
from policies.outcome import Failure
from scheduler.client import Healthgate
from scheduler.providers import Outbound, SendFailed
from scheduler.providers.dialog360 import Dialog360Provider, env_keys
from tests.conftest import LINE_A, LINE_B, START
from tests.fakes import (
    D360_KEY,
    D360_URL,
    PROVIDER_POLICY,
    Answer,
    FakeProvider,
    answer,
    d360_ok,
    fails,
)

BOB = "+14155550123"
LINQ, D360 = LINE_A, LINE_B


@pytest.fixture
def policy_text() -> str:
    return PROVIDER_POLICY


@pytest.fixture
def hg(provider_client: Healthgate) -> Healthgate:
    return provider_client


def state(hg: Healthgate, message_id: str) -> str:
    return str(hg.explain(message_id)["state"])


def last(hg: Healthgate, message_id: str) -> dict[str, str]:
    decision: dict[str, str] = hg.explain(message_id)["decisions"][-1]
    return decision


def line(hg: Healthgate, number: str) -> dict[str, str]:
    found: dict[str, str] = next(x for x in hg.status()["lines"] if x["number"] == number)
    return found


# Linq, through the official SDK


def test_linq_new_chat_carries_the_message_id_as_idempotency_key(
    hg: Healthgate, linq: FakeProvider
) -> None:
    message_id = hg.enqueue(to=BOB, body="hi", line=LINQ)

    hg.drain()

    assert state(hg, message_id) == "sent"
    (request,) = linq.requests
    body = linq.bodies()[0]
    assert (request.method, request.url.path) == ("POST", "/v3/chats")
    assert request.headers["Idempotency-Key"] == message_id
    assert (body["from"], body["to"], body["message"]["idempotency_key"]) == (
        LINQ,
        [BOB],
        message_id,
    )


def test_linq_later_message_goes_into_the_chat_it_opened(
    hg: Healthgate, linq: FakeProvider
) -> None:
    hg.enqueue(to=BOB, body="first", line=LINQ)
    hg.drain()

    hg.enqueue(to=BOB, body="second", line=LINQ)
    hg.drain()

    chat_id = f"chat-{len(linq.requests[0].content)}"
    assert linq.requests[1].url.path == f"/v3/chats/{chat_id}/messages"


def test_linq_403_2024_opts_the_chat_out_and_drops_its_queue(
    hg: Healthgate, linq: FakeProvider, clock: FrozenDateTimeFactory
) -> None:
    linq.then(answer(403, {"error": {"code": 2024, "message": "recipient opted out"}}))
    first = hg.enqueue(to=BOB, body="one", line=LINQ)
    later = hg.enqueue(to=BOB, body="two", line=LINQ, send_at=START + timedelta(hours=1))

    hg.drain()
    clock.tick(timedelta(hours=1))
    hg.drain()

    assert (state(hg, first), state(hg, later)) == ("dropped", "dropped")
    assert last(hg, first)["code"] == "provider_opted_out"
    assert hg.status()["chats"] == {"OPTED_OUT": 1}
    assert len(linq.requests) == 1


def test_linq_403_2027_flags_the_line_and_holds_the_message(
    hg: Healthgate, linq: FakeProvider
) -> None:
    linq.then(answer(403, {"error": {"code": 2027, "message": "line cannot send"}}))
    message_id = hg.enqueue(to=BOB, body="one", line=LINQ)

    hg.drain()
    hg.drain()

    assert state(hg, message_id) == "deferred"
    assert last(hg, message_id)["code"] == "line_flagged"
    assert line(hg, LINQ)["status"] == "FLAGGED"
    assert len(linq.requests) == 1


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({"error": {"code": 1007}}, {"Retry-After": "120"}),
        ({"error": {"code": 1007, "retry_after": 120}}, None),
    ],
    ids=["header", "body"],
)
def test_linq_429_waits_for_the_retry_hint(
    hg: Healthgate,
    linq: FakeProvider,
    clock: FrozenDateTimeFactory,
    body: dict[str, object],
    headers: dict[str, str] | None,
) -> None:
    linq.then(answer(429, body, headers))
    message_id = hg.enqueue(to=BOB, body="busy", line=LINQ)

    hg.drain()
    assert state(hg, message_id) == "throttled"
    assert last(hg, message_id)["code"] == "provider_rate_limited"
    assert last(hg, message_id)["not_before"] == (START + timedelta(seconds=120)).isoformat()
    clock.tick(timedelta(seconds=119))
    hg.drain()
    assert len(linq.requests) == 1
    clock.tick(timedelta(seconds=1))
    hg.drain()

    assert state(hg, message_id) == "sent"
    assert len(linq.requests) == 2


def test_linq_500_then_success_sends_once_with_the_same_key(
    hg: Healthgate, linq: FakeProvider, clock: FrozenDateTimeFactory
) -> None:
    linq.then(answer(500, {"error": {"code": 5000}}))
    message_id = hg.enqueue(to=BOB, body="flaky", line=LINQ)

    hg.drain()
    assert last(hg, message_id)["code"] == "provider_unavailable"
    clock.tick(timedelta(seconds=30))
    hg.drain()

    assert state(hg, message_id) == "sent"
    assert linq.header("Idempotency-Key") == [message_id, message_id]
    assert [b["message"]["idempotency_key"] for b in linq.bodies()] == [message_id] * 2


def test_linq_connection_error_is_retried_with_the_same_key(
    hg: Healthgate, linq: FakeProvider, clock: FrozenDateTimeFactory
) -> None:
    linq.then(fails(httpx.ConnectError))
    message_id = hg.enqueue(to=BOB, body="offline", line=LINQ)

    hg.drain()
    assert state(hg, message_id) == "throttled"
    assert "connection error" in last(hg, message_id)["reason"]
    clock.tick(timedelta(seconds=30))
    hg.drain()

    assert state(hg, message_id) == "sent"
    assert linq.header("Idempotency-Key") == [message_id, message_id]


# 360dialog, over httpx


def test_d360_send_posts_the_cloud_api_body_with_the_line_key(
    hg: Healthgate, d360: FakeProvider
) -> None:
    message_id = hg.enqueue(to=BOB, body="hola", line=D360)

    hg.drain()

    assert state(hg, message_id) == "sent"
    assert "wamid.1" in last(hg, message_id)["reason"]
    (request,) = d360.requests
    assert (request.method, str(request.url)) == ("POST", f"{D360_URL}/messages")
    assert request.headers["D360-API-KEY"] == D360_KEY
    assert d360.bodies() == [
        {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": BOB.removeprefix("+"),
            "type": "text",
            "text": {"body": "hola"},
            "biz_opaque_callback_data": message_id,
        }
    ]


def test_d360_spam_rate_limit_flags_the_line_and_holds_the_message(
    hg: Healthgate, d360: FakeProvider
) -> None:
    d360.then(answer(400, {"error": {"code": 131048, "message": "Spam rate limit hit"}}))
    message_id = hg.enqueue(to=BOB, body="promo", line=D360)

    hg.drain()
    hg.drain()

    assert state(hg, message_id) == "deferred"
    assert line(hg, D360)["status"] == "FLAGGED"
    assert len(d360.requests) == 1


def test_d360_marketing_opt_out_drops_the_recipient(hg: Healthgate, d360: FakeProvider) -> None:
    d360.then(answer(400, {"error": {"code": 131050}}))
    message_id = hg.enqueue(to=BOB, body="promo", line=D360)

    hg.drain()

    assert state(hg, message_id) == "dropped"
    assert hg.status()["chats"] == {"OPTED_OUT": 1}


def test_d360_undeliverable_fails_the_message(hg: Healthgate, d360: FakeProvider) -> None:
    d360.then(answer(400, {"error": {"code": 131026, "message": "Message undeliverable"}}))
    message_id = hg.enqueue(to=BOB, body="x", line=D360)

    hg.drain()

    assert state(hg, message_id) == "failed"
    assert last(hg, message_id)["code"] == "provider_rejected"


def test_d360_429_waits_for_retry_after(hg: Healthgate, d360: FakeProvider) -> None:
    d360.then(answer(429, {"error": {"code": 130429}}, {"Retry-After": "600"}))
    message_id = hg.enqueue(to=BOB, body="busy", line=D360)

    hg.drain()

    assert state(hg, message_id) == "throttled"
    assert last(hg, message_id)["not_before"] == (START + timedelta(minutes=10)).isoformat()


@pytest.mark.parametrize(
    "first",
    [answer(503), fails(httpx.ConnectError), fails(httpx.ReadTimeout, "timed out")],
    ids=["503", "connection error", "timeout"],
)
def test_d360_transient_failure_then_success_keeps_the_callback_id(
    hg: Healthgate, d360: FakeProvider, clock: FrozenDateTimeFactory, first: Answer
) -> None:
    d360.then(first)
    message_id = hg.enqueue(to=BOB, body="retry me", line=D360)

    hg.drain()
    assert last(hg, message_id)["code"] == "provider_unavailable"
    clock.tick(timedelta(seconds=30))
    hg.drain()

    assert state(hg, message_id) == "sent"
    assert [b["biz_opaque_callback_data"] for b in d360.bodies()] == [message_id] * 2


# 360dialog answers, one table


def outbound() -> Outbound:
    return Outbound("m1", D360, BOB, "hi", idempotency_key="m1")


@pytest.mark.parametrize(
    ("status", "body", "headers", "failure", "hint"),
    [
        (400, {"error": {"code": 131048}}, None, Failure.LINE_BLOCKED, None),
        (400, {"error": {"code": 368}}, None, Failure.LINE_BLOCKED, None),
        (400, {"error": {"code": 131031}}, None, Failure.LINE_BLOCKED, None),
        (401, {"meta": {"developer_message": "Invalid api_key"}}, None, Failure.LINE_BLOCKED, None),
        (400, {"error": {"code": 131050}}, None, Failure.RECIPIENT_OPTED_OUT, None),
        (400, {"error": {"code": 131026}}, None, Failure.REJECTED, None),
        (400, {"error": {"code": 131047}}, None, Failure.REJECTED, None),
        (400, {"error": {"code": 100}}, None, Failure.REJECTED, None),
        (404, None, None, Failure.REJECTED, None),
        (429, {"error": {"code": 130429}}, {"Retry-After": "60"}, Failure.RATE_LIMITED, 60),
        (400, {"error": {"code": 131056}}, None, Failure.RATE_LIMITED, None),
        (429, None, {"Retry-After": "Sun, 22 Nov 2026 09:05:00 GMT"}, Failure.RATE_LIMITED, 300),
        (500, None, None, Failure.TRANSIENT, None),
        (503, {"error": {"code": 131016}}, None, Failure.TRANSIENT, None),
    ],
)
def test_d360_answer_means(
    clock: FrozenDateTimeFactory,
    status: int,
    body: object,
    headers: dict[str, str] | None,
    failure: Failure,
    hint: int | None,
) -> None:
    fake = FakeProvider(answer(status, body, headers))
    provider = Dialog360Provider(D360_URL, lambda line: "k", http_client=fake.client())

    with pytest.raises(SendFailed) as caught:
        provider.send(outbound())

    assert caught.value.failure is failure
    assert caught.value.retry_after == (timedelta(seconds=hint) if hint is not None else None)


def test_d360_line_without_its_key_in_the_environment_holds_without_calling() -> None:
    fake = FakeProvider(d360_ok)
    policy = parse_policy(tomllib.loads(PROVIDER_POLICY), "healthgate.toml")
    provider = Dialog360Provider(D360_URL, env_keys(lambda: policy, {}), http_client=fake.client())

    with pytest.raises(SendFailed) as caught:
        provider.send(outbound())

    assert caught.value.failure is Failure.LINE_BLOCKED
    assert "HEALTHGATE_D360_KEY_B" in caught.value.detail
    assert fake.requests == []


# The provider's answer also covers the rest of the batch


CAROL = "+14155550124"


def test_linq_opt_out_answer_stops_the_recipient_s_other_sends_in_the_batch(
    hg: Healthgate, linq: FakeProvider
) -> None:
    linq.then(answer(403, {"error": {"code": 2024}}))
    ids = [hg.enqueue(to=BOB, body=f"m{i}", line=LINQ) for i in range(3)]

    hg.drain()

    assert [state(hg, m) for m in ids] == ["dropped"] * 3
    assert len(linq.requests) == 1


def test_linq_line_block_answer_stops_the_line_s_other_sends_in_the_batch(
    hg: Healthgate, linq: FakeProvider
) -> None:
    linq.then(answer(403, {"error": {"code": 2027}}))
    ids = [hg.enqueue(to=to, body="x", line=LINQ) for to in (BOB, CAROL)]
    other_line = hg.enqueue(to=BOB, body="whatsapp", line=D360)

    hg.drain()

    assert [state(hg, m) for m in ids] == ["deferred"] * 2
    assert state(hg, other_line) == "sent"
    assert len(linq.requests) == 1


def test_provider_crash_retries_instead_of_leaving_the_message_sending(
    hg: Healthgate, linq: FakeProvider, clock: FrozenDateTimeFactory
) -> None:
    linq.then(answer(200, {"unexpected": True}))
    message_id = hg.enqueue(to=BOB, body="odd answer", line=LINQ)

    hg.drain()
    assert state(hg, message_id) == "throttled"
    clock.tick(timedelta(seconds=30))
    hg.drain()

    assert state(hg, message_id) == "sent"
    assert linq.header("Idempotency-Key") == [message_id, message_id]


# The policy file names each 360dialog line's key variable


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (
            'provider = "360dialog"',
            "a 360dialog line needs the environment variable of its API key",
        ),
        (
            'provider = "linq"\napi_key_env = "HEALTHGATE_D360_KEY_A"',
            "only 360dialog lines take an API key variable",
        ),
        (
            'provider = "360dialog"\napi_key_env = "sk-live 123"',
            "is not an environment variable name (put the key in the environment)",
        ),
    ],
)
def test_api_key_env_problem_names_the_file_and_key(
    tmp_path: Path, entry: str, problem: str
) -> None:
    path = tmp_path / "healthgate.toml"
    path.write_text(f'[[lines]]\nnumber = "{D360}"\n{entry}\n')

    with pytest.raises(PolicyFileError) as caught:
        load_policy(path)

    assert (caught.value.path, caught.value.key, caught.value.problem) == (
        str(path),
        "lines[0].api_key_env",
        problem,
    )
    assert "sk-live" not in str(caught.value)


def test_api_key_env_names_the_variable_of_a_360dialog_line() -> None:
    policy = parse_policy(tomllib.loads(PROVIDER_POLICY), "healthgate.toml")

    config = policy.line_config(D360)

    assert config is not None
    assert config.api_key_env == "HEALTHGATE_D360_KEY_B"


@pytest.mark.parametrize("body", [None, {"messages": []}, {"messages": ["x"]}, "ok"])
def test_d360_accepted_send_with_an_odd_body_is_still_sent(body: object) -> None:
    fake = FakeProvider(answer(200, body))
    provider = Dialog360Provider(D360_URL, lambda line: "k", http_client=fake.client())

    sent = provider.send(outbound())

    assert sent.provider_message_id is None
