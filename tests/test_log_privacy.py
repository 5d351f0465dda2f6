"""No message body and no recipient number in the logs at INFO and above.

Drains (with the providers' refusals and failures), webhooks, polling and the CLI run
with every logger captured at INFO; neither a body nor a recipient may appear in any
record, its arguments or its traceback. Lines are ours and may be named.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pydantic.v1  # noqa: F401  FastAPI imports it lazily, which fails once freezegun fakes date
import pytest
from fastapi.testclient import TestClient
from freezegun import freeze_time
from pydantic import SecretStr
from typer.testing import CliRunner

from scheduler.cli import app
from scheduler.client import Healthgate
from scheduler.settings import Settings
from scheduler.web import create_app
from tests.conftest import LINE_A, LINE_B, START, budget
from tests.fakes import PROVIDER_POLICY, FakeProvider, answer, fails, linq_ok
from tests.linq_events import SECRET, line_event, message_event, signed
from tests.test_polling import phone
from tests.web_client import BASE_URL

pytestmark = pytest.mark.timeout(budget(60))

RECIPIENTS = ("+14155550123", "+14155550124", "+14155550125", "+14155550126")
BODIES = ("Parcel 7781 for Ms Quinlan", "Dr Okafor moved your visit", "Balance on acct 55213")


def leaked(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every record at INFO or above that names a body or a recipient (in any form)."""
    secrets = [*BODIES, *RECIPIENTS, *(number.removeprefix("+1") for number in RECIPIENTS)]
    found = []
    for record in caplog.records:
        if record.levelno < logging.INFO:
            continue
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        found += [f"{record.name}: {text}" for secret in secrets if secret in text]
    return found


@pytest.fixture
def policy_text() -> str:
    return PROVIDER_POLICY


@pytest.fixture
def hg(provider_client: Healthgate) -> Healthgate:
    return provider_client


def test_a_drain_with_refusals_and_failures_logs_no_body_or_recipient(
    hg: Healthgate, linq: FakeProvider, d360: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    # Given messages on both providers, and providers that accept, refuse, fail and crash
    caplog.set_level(logging.INFO)
    for to, body in zip(RECIPIENTS, BODIES, strict=False):
        hg.enqueue(to=to, body=body, line=LINE_A)
        hg.enqueue(to=to, body=body, line=LINE_B)
    linq.then(
        linq_ok,
        answer(200, None),  # an answer the SDK cannot read: the provider call crashes
        answer(403, {"error": {"code": 2024}}),
        fails(httpx.ConnectError),
    )
    d360.then(
        answer(400, {"error": {"code": 131050, "message": "stopped marketing messages"}}),
        answer(500, {"error": {"code": 1, "message": "internal"}}),
    )

    # When they are drained
    report = hg.drain()

    # Then every outcome happened, and no record names a body or a recipient
    assert {"SENT", "DROP", "THROTTLE"} <= set(report.counts), report.counts
    assert leaked(caplog) == []


def test_webhooks_log_no_body_or_recipient(
    settings: Settings, hg: Healthgate, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the web app and a queued message
    caplog.set_level(logging.INFO)
    hg.enqueue(to=RECIPIENTS[0], body=BODIES[0], line=LINE_A)
    web = create_app(settings.model_copy(update={"linq_webhook_secret": SecretStr(SECRET)}))
    deliveries = [
        message_event(LINE_A, RECIPIENTS[0], START, text=BODIES[1], status="AT_RISK"),
        message_event(LINE_A, RECIPIENTS[1], START, text="STOP"),
        message_event(LINE_A, RECIPIENTS[2], START, text=BODIES[2], status="SICK"),
        line_event(LINE_A, START, new_reputation="AT_RISK"),
    ]

    # When signed, unsigned and bad deliveries arrive
    with TestClient(web, base_url=BASE_URL) as client:
        for payload in deliveries:
            client.post("/webhooks/linq", content=b"", headers={})
            body, headers = signed(payload, START)
            assert client.post("/webhooks/linq", content=body, headers=headers).status_code < 500
            client.post("/webhooks/linq", content=body, headers=headers)  # a redelivery

    # Then no record names a body or a recipient
    assert leaked(caplog) == []


def test_polling_logs_no_recipient(
    hg: Healthgate, linq: FakeProvider, d360: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    hg.enqueue(to=RECIPIENTS[0], body=BODIES[0], line=LINE_A)
    linq.then(answer(200, {"phone_numbers": [phone(LINE_A, reputation="OPTED_OUT")]}))
    d360.then(answer(503, {}))

    report = hg.poll()

    assert report.errors
    assert leaked(caplog) == []


def test_the_cli_logs_no_body_or_recipient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a fresh directory on the embedded default
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "BROKER_URL", "REDIS_URL", "DATA_DIR", "POLICY_FILE"):
        monkeypatch.delenv(f"HEALTHGATE_{name}", raising=False)
    caplog.set_level(logging.INFO)
    runner = CliRunner()
    to = RECIPIENTS[0]

    # When a user enqueues, drains, records inbound messages and inspects
    with freeze_time(datetime(2026, 11, 22, 9, 0, tzinfo=UTC)):
        assert runner.invoke(app, ["init"]).exit_code == 0
        message_id = runner.invoke(app, ["enqueue", "--to", to, "--body", BODIES[0]]).output
        for args in (
            ["enqueue", "--to", RECIPIENTS[1], "--body", BODIES[1], "--line", "+14155550199"],
            ["drain"],
            ["inbound", LINE_A, to, BODIES[2]],
            ["inbound", LINE_A, to, "STOP"],
            ["health", "chat", LINE_A, RECIPIENTS[1], "CRITICAL"],
            ["explain", message_id.strip(), "--json"],
            ["status", "--json"],
        ):
            runner.invoke(app, args)

    # Then the message went out, and no record names a body or a recipient
    sends = (tmp_path / ".healthgate" / "sends.jsonl").read_text().splitlines()
    assert [json.loads(line)["recipient"] for line in sends] == [to]
    assert leaked(caplog) == []
