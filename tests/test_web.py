"""The web process: health check, read-only JSON, the events command, and a real uvicorn."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pydantic.v1  # noqa: F401  FastAPI imports it lazily, which fails once freezegun fakes date
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from policies.errors import InvalidInput
from scheduler import runner
from scheduler.cli import app as cli_app
from scheduler.client import Healthgate
from scheduler.settings import Settings
from scheduler.web import create_app
from tests.conftest import LINE_A, LINE_B, POLICY, START
from tests.linq_events import SECRET, line_event, message_event, signed
from tests.test_e2e import environment, free_port, wait_until, web_ok
from tests.web_client import BASE_URL, TOKEN, reader, web_settings

BOB = "+14155550123"
CAROL = "+14155550124"


@pytest.fixture
def client(settings: Settings, hg: Healthgate) -> Iterator[TestClient]:
    with reader(create_app(web_settings(settings, web_docs=True))) as test_client:
        yield test_client


def post_signed(client: TestClient, payload: dict[str, object]) -> int:
    body, headers = signed(payload, START)
    return client.post("/webhooks/linq", content=body, headers=headers).status_code


def test_healthz_is_ok_when_the_database_answers(client: TestClient) -> None:
    response = client.get("/healthz")

    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_healthz_is_503_when_the_database_does_not_answer(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql://postgres@127.0.0.1:1/nowhere")

    response = TestClient(create_app(settings), base_url=BASE_URL).get("/healthz")

    assert response.status_code == 503
    assert response.json()["status"] == "down"


def test_lines_show_reputation_from_webhooks(client: TestClient) -> None:
    post_signed(client, line_event(LINE_A, START, new_reputation="CRITICAL"))

    lines = client.get("/lines").json()

    assert [(line["number"], line["reputation"]) for line in lines] == [
        (LINE_A, "CRITICAL"),
        (LINE_B, "HEALTHY"),
    ]


def test_chats_filter_by_health(hg: Healthgate, client: TestClient) -> None:
    hg.set_chat_health(LINE_A, BOB, "CRITICAL")
    post_signed(client, message_event(LINE_A, CAROL, START, text="STOP"))

    opted_out = client.get("/chats", params={"health": "OPTED_OUT"}).json()
    critical = client.get("/chats", params={"health": "CRITICAL"}).json()

    assert [(c["recipient"], c["health"]) for c in opted_out] == [(CAROL, "OPTED_OUT")]
    assert [(c["recipient"], c["health"]) for c in critical] == [(BOB, "CRITICAL")]


def test_unknown_health_filter_is_422_naming_the_parameter(client: TestClient) -> None:
    response = client.get("/chats", params={"health": "SICK"})

    assert response.status_code == 422
    assert response.json()["field"] == "health"
    assert response.json()["error"].startswith("health='SICK': ")


def test_messages_filter_by_state_with_a_limit(hg: Healthgate, client: TestClient) -> None:
    hg.set_chat_health(LINE_A, BOB, "OPTED_OUT")
    queued = [hg.enqueue(to=CAROL, body=f"m{i}", line=LINE_A) for i in range(3)]
    hg.enqueue(to=BOB, body="dropped at enqueue", line=LINE_A)

    listed = client.get("/messages", params={"state": "queued", "limit": 2}).json()

    assert [m["id"] for m in listed] == queued[::-1][:2]
    assert all("body" not in m for m in listed)


def test_message_shows_every_decision(hg: Healthgate, client: TestClient) -> None:
    message_id = hg.enqueue(to=BOB, body="hi", line=LINE_A)
    post_signed(client, message_event(LINE_A, BOB, START, text="STOP"))

    data = client.get(f"/messages/{message_id}").json()

    assert data["state"] == "dropped"
    assert [d["code"] for d in data["decisions"]][-1] == "chat_opted_out"


def test_unknown_message_is_404_naming_the_id(client: TestClient) -> None:
    response = client.get("/messages/msg_nope")

    assert response.status_code == 404
    assert response.json()["field"] == "id"


def test_events_lists_rejected_ones_with_the_reason(client: TestClient) -> None:
    post_signed(client, line_event(LINE_A, START, new_reputation="OPTED_OUT"))
    post_signed(client, line_event(LINE_B, START, new_reputation="AT_RISK"))

    rejected = client.get("/events", params={"outcome": "rejected"}).json()

    assert [e["outcome"] for e in rejected] == ["rejected"]
    assert "data.new_reputation='OPTED_OUT'" in rejected[0]["detail"]


def test_openapi_schema_documents_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    assert {"/webhooks/linq", "/healthz", "/lines", "/chats", "/messages"} <= set(paths)


def test_events_command_shows_rejected_events(
    settings: Settings, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given one rejected and one applied event
    post_signed(client, line_event(LINE_A, START, new_status="PAUSED"))
    post_signed(client, line_event(LINE_B, START, new_reputation="AT_RISK"))
    monkeypatch.setenv("HEALTHGATE_DATABASE_URL", str(settings.database_url))
    monkeypatch.setenv("HEALTHGATE_POLICY_FILE", str(settings.policy_file))
    monkeypatch.setenv("HEALTHGATE_DATA_DIR", str(settings.data_dir))

    # When a person asks for the rejected ones
    result = CliRunner().invoke(cli_app, ["events", "--outcome", "rejected", "--json"])

    # Then they see that one, why, and what came
    assert result.exit_code == 0, result.output
    [event] = json.loads(result.output)
    assert "data.new_status='PAUSED'" in event["detail"]
    assert json.loads(event["payload"])["data"]["new_status"] == "PAUSED"


def test_run_starts_the_web_process_beside_worker_and_beat(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, web_host="0.0.0.0", web_port=8123)

    processes = runner.commands(settings, concurrency=1)

    assert set(processes) == {"worker", "beat", "web"}
    assert processes["web"][-6:] == [
        "--factory",
        "scheduler.web:create_app",
        "--host",
        "0.0.0.0",
        "--port",
        "8123",
    ]


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_uvicorn_drops_the_queue_on_a_signed_stop_over_http(tmp_path: Path) -> None:
    # Given the embedded default with one queued message, and the web process on a free port
    policy = tmp_path / "healthgate.toml"
    policy.write_text(POLICY)
    port = free_port()
    settings = Settings(data_dir=tmp_path / "data", policy_file=policy, web_port=port)
    hg = Healthgate(settings)
    hg.migrate()
    message_id = hg.enqueue(to=BOB, body="hi", line=LINE_A)
    env = environment(settings) | {
        "HEALTHGATE_LINQ_WEBHOOK_SECRET": SECRET,
        "HEALTHGATE_WEB_PORT": str(port),
    }
    web = subprocess.Popen(
        runner.web(settings), env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: web_ok(env), 30, "the web process to answer /healthz")

        # When Linq posts Bob's STOP, signed, over HTTP
        now = datetime.now(UTC)
        body, headers = signed(message_event(LINE_A, BOB, now, text="STOP"), now)
        url = f"http://127.0.0.1:{port}/webhooks/linq"
        response = httpx.post(url, content=body, headers=headers, timeout=10)
    finally:
        web.terminate()
        _, log = web.communicate(timeout=30)

    # Then the queued message was dropped, and the process shut down cleanly (uvicorn
    # re-raises the SIGTERM it handled once its shutdown is complete)
    assert response.status_code == 200, response.text
    assert hg.explain(message_id)["state"] == "dropped"
    hg.close()
    assert "Application shutdown complete" in log
    assert web.returncode in (0, -signal.SIGTERM)


def test_web_command_serves_the_factory_on_the_configured_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: list[tuple[str, dict[str, object]]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **options: served.append((app, options)))
    monkeypatch.setenv("HEALTHGATE_WEB_HOST", "0.0.0.0")
    monkeypatch.setenv("HEALTHGATE_WEB_PORT", "8765")
    monkeypatch.setenv("HEALTHGATE_API_TOKEN", TOKEN)

    result = CliRunner().invoke(cli_app, ["web"])

    assert result.exit_code == 0, result.output
    assert served == [
        ("scheduler.web:create_app", {"factory": True, "host": "0.0.0.0", "port": 8765})
    ]


def test_invalid_webhook_secret_stops_the_app_naming_the_setting(settings: Settings) -> None:
    broken = settings.model_copy(update={"linq_webhook_secret": SecretStr("whsec_")})

    with pytest.raises(InvalidInput, match="HEALTHGATE_LINQ_WEBHOOK_SECRET"):
        create_app(broken)
