"""Providers' HTTP side for tests: scripted answers, every request recorded.

Passed to the real clients (the Linq SDK, httpx for 360dialog) as an
``httpx.MockTransport``, so requests and answers go through the real client code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from policies.config import load_policy
from scheduler.client import Healthgate
from scheduler.providers import Provider
from scheduler.providers.dialog360 import Dialog360Provider, env_keys
from scheduler.providers.linq import LinqProvider
from scheduler.runtime import Runtime
from scheduler.settings import Settings
from tests.conftest import LINE_A, LINE_B

LINQ_URL = "http://linq.test"
D360_URL = "http://d360.test"
D360_KEY_ENV = "HEALTHGATE_D360_KEY_B"
D360_KEY = "key-of-line-b"

#: Line A on Linq, line B a WhatsApp number on 360dialog.
PROVIDER_POLICY = f"""
[[lines]]
number = "{LINE_A}"
provider = "linq"

[[lines]]
number = "{LINE_B}"
provider = "360dialog"
api_key_env = "{D360_KEY_ENV}"
"""

Answer = Callable[[httpx.Request], httpx.Response]


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Answer:
    """A fixed answer (built afresh for each request)."""
    return lambda request: httpx.Response(status, json=body, headers=headers)


def fails(error: type[httpx.TransportError], text: str = "refused") -> Answer:
    """A network failure: the request never got an answer."""

    def raise_(request: httpx.Request) -> httpx.Response:
        raise error(text, request=request)

    return raise_


def linq_ok(request: httpx.Request) -> httpx.Response:
    """Linq accepting a send: a new chat, or a message into an existing one."""
    n = len(request.content)
    if request.url.path == "/v3/phone_numbers":
        return httpx.Response(200, json={"phone_numbers": []})
    if request.url.path == "/v3/chats":
        return httpx.Response(200, json={"chat": {"id": f"chat-{n}", "message": {"id": f"lm-{n}"}}})
    chat_id = request.url.path.split("/")[3]
    return httpx.Response(200, json={"chat_id": chat_id, "message": {"id": f"lm-{n}"}})


def d360_ok(request: httpx.Request) -> httpx.Response:
    """360dialog accepting a send, as the Cloud API answers it; every entity AVAILABLE."""
    if request.url.path == "/health_status":
        entities = [{"entity_type": "PHONE_NUMBER", "id": "1", "can_send_message": "AVAILABLE"}]
        return httpx.Response(
            200, json={"health_status": {"can_send_message": "AVAILABLE", "entities": entities}}
        )
    to = json.loads(request.content)["to"]
    return httpx.Response(
        200,
        json={
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": "wamid.1"}],
        },
    )


class FakeProvider:
    """Answers from ``script`` in order, then ``default``; keeps every request."""

    def __init__(self, default: Answer) -> None:
        self.default = default
        self.script: list[Answer] = []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        respond = self.script.pop(0) if self.script else self.default
        return respond(request)

    def then(self, *answers: Answer) -> FakeProvider:
        self.script.extend(answers)
        return self

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) if r.content else None for r in self.requests]

    def header(self, name: str) -> list[str | None]:
        return [r.headers.get(name) for r in self.requests]


def fake_client(settings: Settings, linq: FakeProvider, d360: FakeProvider) -> Healthgate:
    """A client whose Linq and 360dialog providers are the real ones over the fakes."""
    policy = load_policy(settings.policy_file)
    keys = env_keys(lambda: policy, {D360_KEY_ENV: D360_KEY})
    providers: dict[str, Provider] = {
        "linq": LinqProvider("linq-key", LINQ_URL, http_client=linq.client()),
        "360dialog": Dialog360Provider(D360_URL, keys, http_client=d360.client()),
    }
    client = Healthgate(runtime=Runtime.build(settings, providers))
    client.sync_lines()
    return client
