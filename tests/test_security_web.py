"""The web process facing the internet: tokens, Host names, bounded bodies, busy stores."""

from __future__ import annotations

import asyncio
import select
import socket
import sqlite3
import stat
import subprocess
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pydantic.v1  # noqa: F401  FastAPI imports it lazily, which fails once freezegun fakes date
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select as select_rows
from typer.testing import CliRunner

from policies.errors import InvalidInput
from scheduler import access, constants, runner
from scheduler.cli import app as cli_app
from scheduler.client import Healthgate
from scheduler.settings import Settings
from scheduler.store.models import WebhookEvent
from scheduler.web import create_app
from tests.conftest import LINE_A, POLICY, START
from tests.linq_events import OTHER_SECRET, SECRET, message_event, signed
from tests.test_e2e import environment, free_port, wait_until, web_ok
from tests.web_client import BASE_URL, TOKEN, reader, web_settings

BOB = "+14155550123"
THIRD_SECRET = "whsec_dGhpcmQtc2VjcmV0LW5vYm9keS1ncmFudGVkISEhIQ=="
#: Every route that reads the store or describes the API. The status page ``/`` is a
#: read too: 401 here, and a browser (``Accept: text/html``) is sent to ``/login`` (303).
READS = ["/lines", "/chats", "/messages", "/messages/msg_nope", "/events", "/status", "/"]
DOCS = ["/openapi.json"]
#: FastAPI's HTML viewers load their scripts from a CDN: healthgate serves neither.
VIEWERS = ["/docs", "/redoc"]


@pytest.fixture
def app(settings: Settings, hg: Healthgate) -> FastAPI:
    return create_app(web_settings(settings, web_docs=True))


@pytest.fixture
def anonymous(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url=BASE_URL) as client:
        yield client


def events(hg: Healthgate) -> list[tuple[str, str, str | None]]:
    with hg.runtime.sessions() as session:
        rows = session.scalars(select_rows(WebhookEvent).order_by(WebhookEvent.id))
        return [(row.id, row.outcome, row.detail) for row in rows]


# 1. Reads need the API token.


@pytest.mark.parametrize("path", READS + DOCS)
def test_every_read_needs_the_api_token(anonymous: TestClient, path: str) -> None:
    # When a read comes without a token, with a wrong one, and with the right one
    missing = anonymous.get(path)
    wrong = anonymous.get(path, headers={"Authorization": "Bearer not-the-token"})
    basic = anonymous.get(path, headers={"Authorization": f"Basic {TOKEN}"})
    right = anonymous.get(path, headers={"Authorization": f"Bearer {TOKEN}"})

    # Then only the right bearer token reads (an unknown message is a 404 behind it)
    for refused in (missing, wrong, basic):
        assert refused.status_code == 401, (path, refused.text)
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert refused.json()["field"] == "Authorization"
        assert TOKEN not in refused.text
    assert right.status_code == (404 if path == "/messages/msg_nope" else 200), right.text


def test_without_a_token_configured_reads_are_refused_naming_the_setting(
    settings: Settings, hg: Healthgate
) -> None:
    app = create_app(web_settings(settings, api_token=None))
    body, headers = signed(message_event(LINE_A, BOB, START, text="hello"), START)

    with TestClient(app, base_url=BASE_URL) as client:
        read = client.get("/chats", headers={"Authorization": "Bearer anything"})
        healthz = client.get("/healthz")
        webhook = client.post("/webhooks/linq", content=body, headers=headers)

    # Reads are refused, while the provider's signed webhooks and /healthz still answer
    assert read.status_code == 401
    assert "HEALTHGATE_API_TOKEN is not set" in read.json()["error"]
    assert (healthz.status_code, webhook.status_code) == (200, 200)


def test_docs_are_off_unless_asked_for(settings: Settings, hg: Healthgate) -> None:
    with reader(create_app(web_settings(settings))) as client:
        assert [client.get(path).status_code for path in DOCS] == [404]


def test_no_docs_viewer_is_served_even_with_docs_on(app: FastAPI) -> None:
    with reader(app) as client:
        assert [client.get(path).status_code for path in VIEWERS] == [404, 404]


@pytest.mark.parametrize(
    ("presented", "status"),
    [("metrics-token-1234", 200), (TOKEN, 200), ("not-it", 401), (None, 401)],
)
def test_the_metrics_guard_takes_its_own_token_or_the_api_token(
    tmp_path: Path, presented: str | None, status: int
) -> None:
    # Given a route behind the metrics guard, as /metrics will be
    settings = Settings(
        data_dir=tmp_path,
        api_token=SecretStr(TOKEN),
        metrics_token=SecretStr("metrics-token-1234"),
    )
    app = FastAPI(dependencies=[Depends(access.metrics_guard(settings))])
    app.add_exception_handler(access.Unauthorized, access.unauthorized)
    app.get("/metrics")(lambda: {"sent": 1})
    headers = {"Authorization": f"Bearer {presented}"} if presented else {}

    response = TestClient(app).get("/metrics", headers=headers)

    assert response.status_code == status


# 2. Only the allowed Host names are answered.


@pytest.mark.parametrize("path", ["/lines", "/healthz", "/webhooks/linq"])
def test_a_host_not_allowed_is_400(anonymous: TestClient, path: str) -> None:
    # A page of rebind.example whose name now resolves to this machine
    headers = {"Host": "rebind.example", "Authorization": f"Bearer {TOKEN}"}

    response = anonymous.request("POST" if "webhooks" in path else "GET", path, headers=headers)

    assert response.status_code == 400
    assert response.text == "Invalid host header"


def test_allowed_hosts_come_from_the_environment(
    settings: Settings, hg: Healthgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEALTHGATE_ALLOWED_HOSTS", "hg.example.com, *.hooks.example ::1")
    allowed = Settings().allowed_hosts
    app = create_app(web_settings(settings, allowed_hosts=allowed))

    with TestClient(app, base_url="https://hg.example.com") as client:
        public = client.get("/healthz")
        sub = client.get("/healthz", headers={"Host": "in.hooks.example"})
        ipv6 = client.get("/healthz", headers={"Host": "[::1]:8000"})
        loopback = client.get("/healthz", headers={"Host": "localhost"})

    assert allowed == ("hg.example.com", "*.hooks.example", "[::1]")
    assert [r.status_code for r in (public, sub, ipv6, loopback)] == [200, 200, 200, 400]


# 3. Beyond loopback, no start without a token.


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "hg.example.com"])
def test_web_process_refuses_a_public_address_without_a_token(
    tmp_path: Path, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[str] = []

    def supervise(processes: dict[str, list[str]], *_: object, **__: object) -> int:
        served.extend(processes)
        return 0

    monkeypatch.setattr("uvicorn.run", lambda app, **_: served.append(app))
    monkeypatch.setattr(runner, "supervise", supervise)
    monkeypatch.setenv("HEALTHGATE_WEB_HOST", host)
    monkeypatch.setenv("HEALTHGATE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("HEALTHGATE_API_TOKEN", raising=False)

    with pytest.raises(InvalidInput, match="HEALTHGATE_API_TOKEN") as refused:
        create_app(Settings(data_dir=tmp_path, web_host=host))
    web = CliRunner().invoke(cli_app, ["web"])
    run = CliRunner().invoke(cli_app, ["run"])

    assert host in str(refused.value)
    assert (web.exit_code, run.exit_code) == (2, 2)
    assert "HEALTHGATE_API_TOKEN" in web.output
    assert "HEALTHGATE_API_TOKEN" in run.output
    assert served == []


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_web_process_may_listen_on_loopback_without_a_token(tmp_path: Path, host: str) -> None:
    access.check_exposure(Settings(data_dir=tmp_path, web_host=host))


# 4. Webhook bodies are bounded while they are read.


def test_declared_content_length_over_the_limit_is_413_without_reading(app: FastAPI) -> None:
    # Given a request that declares 2 GB, and a receive channel that counts its reads
    reads: list[str] = []
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        reads.append("read")
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/webhooks/linq",
        "raw_path": b"/webhooks/linq",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"localhost"), (b"content-length", b"2000000000")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }

    # When it is served
    asyncio.run(app(scope, receive, send))

    # Then it is refused before a byte of the body is read
    assert sent[0]["status"] == 413
    assert reads == []


MB = 1024 * 1024
#: What a 100 MB upload may add to the web process at its peak: one limit's worth of
#: body (1 MB) and uvicorn's buffers, with room for the allocator; buffering the whole
#: body adds 100 MB or more.
GROWTH_BOUND = 30 * MB


def memory(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def upload_chunked(port: int, total: int) -> tuple[bytes, int]:
    """POST ``total`` bytes chunked (no Content-Length); stop once the server answers."""
    piece = b"x" * 65536
    framed = b"%x\r\n%s\r\n" % (len(piece), piece)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(
            b"POST /webhooks/linq HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        sent = 0
        while sent < total and not select.select([sock], [], [], 0)[0]:
            sock.sendall(framed)
            sent += len(piece)
        if sent >= total:
            sock.sendall(b"0\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return answer, sent


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_chunked_100_mb_upload_is_413_without_growing_the_web_process(tmp_path: Path) -> None:
    # Given the web process under uvicorn on a free port, warmed up
    policy = tmp_path / "healthgate.toml"
    policy.write_text(POLICY)
    port = free_port()
    settings = Settings(data_dir=tmp_path / "data", policy_file=policy, web_port=port)
    Healthgate(settings).migrate()
    env = environment(settings) | {
        "HEALTHGATE_LINQ_WEBHOOK_SECRET": SECRET,
        "HEALTHGATE_WEB_PORT": str(port),
    }
    web = subprocess.Popen(runner.web(settings), env=env, cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: web_ok(env), 30, "the web process to answer /healthz")
        upload_chunked(port, 2 * MB)
        Path(f"/proc/{web.pid}/clear_refs").write_text("5")  # VmHWM starts again from VmRSS
        before = memory(web.pid)

        # When 100 MB is posted chunked, with no Content-Length
        answer, sent = upload_chunked(port, 100 * MB)
        after = memory(web.pid)
        alive = web_ok(env)
    finally:
        web.terminate()
        web.communicate(timeout=30)

    # Then it is answered 413 long before the end, and the process never grew past the bound
    growth = after["VmHWM"] - before["VmRSS"]
    print(f"VmRSS {before['VmRSS'] / MB:.1f} MB before, peak {after['VmHWM'] / MB:.1f} MB")
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert sent < 100 * MB
    assert growth < GROWTH_BOUND, f"grew {growth / MB:.1f} MB"
    assert alive


# 5. A signed body too deeply nested to read is bad input, recorded as such.


def test_signed_deeply_nested_body_is_400_and_recorded_rejected(
    hg: Healthgate, anonymous: TestClient
) -> None:
    depth = 100_000
    body = b'{"event_type": "message.received", "data": ' + b"[" * depth + b"]" * depth + b"}"
    body, headers = signed(body, START, webhook_id="msg_deep")

    first = anonymous.post("/webhooks/linq", content=body, headers=headers)
    again = anonymous.post("/webhooks/linq", content=body, headers=headers)

    # Refused as bad input, every time (a refusal changes nothing, so it is read again)
    assert (first.status_code, again.status_code) == (400, 400)
    assert first.json()["field"] == "body"
    assert "nested too deeply" in first.json()["error"]
    [(key, outcome, detail)] = events(hg)
    assert (key, outcome) == ("linq:msg_deep", "rejected")
    assert "nested too deeply" in str(detail)


# 6. Several webhook secrets.


def test_every_configured_secret_verifies_and_no_other(settings: Settings, hg: Healthgate) -> None:
    # Given the old and the new secret during a rotation
    both = SecretStr(f"{SECRET} {OTHER_SECRET}")
    app = create_app(settings.model_copy(update={"linq_webhook_secret": both}))
    deliveries = [
        signed(message_event(LINE_A, BOB, START, text="hello"), START, secret=secret)
        for secret in (SECRET, OTHER_SECRET, THIRD_SECRET)
    ]

    with TestClient(app, base_url=BASE_URL) as client:
        answers = [
            client.post("/webhooks/linq", content=body, headers=headers)
            for body, headers in deliveries
        ]

    assert [a.status_code for a in answers] == [200, 200, 401]
    assert "webhook-signature" in answers[2].json()["error"]
    assert [outcome for _, outcome, _ in events(hg)] == ["applied", "applied"]


def test_a_bad_secret_among_several_is_named_by_its_place_not_its_value(
    settings: Settings,
) -> None:
    broken = SecretStr(f"{SECRET} whsec_not*base64")

    with pytest.raises(InvalidInput, match="secret 2 of 2") as refused:
        create_app(settings.model_copy(update={"linq_webhook_secret": broken}))

    assert "not*base64" not in str(refused.value)


# 7. A busy database: 503 with Retry-After, nothing kept, the redelivery read afresh.


@pytest.fixture
def locked_store(tmp_path: Path, policy_text: str) -> Settings:
    """SQLite settings whose writers give up on the write lock after 50 ms."""
    policy = tmp_path / "healthgate.toml"
    policy.write_text(policy_text)
    return Settings(
        data_dir=tmp_path / "data",
        policy_file=policy,
        broker_url="memory://",
        sqlite_busy_timeout_seconds=0.05,
    )


@pytest.fixture
def busy_hg(locked_store: Settings, clock: Any) -> Iterator[Healthgate]:
    client = Healthgate(locked_store)
    client.migrate()
    client.sync_lines()
    yield client
    client.close()


def hold_write_lock(settings: Settings) -> sqlite3.Connection:
    """Another writer, as a big enqueue is, holding SQLite's write lock until rolled back."""
    holder = sqlite3.connect(settings.data_dir / constants.SQLITE_FILE, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_webhook_while_the_write_lock_is_held_is_503_then_accepted(
    locked_store: Settings, busy_hg: Healthgate
) -> None:
    # Given a queued message, and another writer holding the lock
    message_id = busy_hg.enqueue(to=BOB, body="hi", line=LINE_A)
    body, headers = signed(message_event(LINE_A, BOB, START, text="STOP"), START)
    app = create_app(web_settings(locked_store))

    with TestClient(app, base_url=BASE_URL) as client:
        holder = hold_write_lock(locked_store)
        try:
            # When Bob's STOP arrives
            busy = client.post("/webhooks/linq", content=body, headers=headers)
        finally:
            holder.rollback()
            holder.close()
        # Then it is 503 with Retry-After and nothing is kept ...
        assert (busy.status_code, busy.headers.get("Retry-After")) == (503, "5")
        assert events(busy_hg) == []
        assert busy_hg.explain(message_id)["state"] == "queued"

        # ... so the provider's redelivery of the same delivery is applied, not a duplicate
        redelivered = client.post("/webhooks/linq", content=body, headers=headers)

    assert redelivered.status_code == 200, redelivered.text
    assert redelivered.json()["outcome"] == "applied"
    assert busy_hg.explain(message_id)["state"] == "dropped"


def test_healthz_is_ok_while_the_write_lock_is_held(
    locked_store: Settings, busy_hg: Healthgate
) -> None:
    with TestClient(create_app(locked_store), base_url=BASE_URL) as client:
        holder = hold_write_lock(locked_store)
        try:
            response = client.get("/healthz")
        finally:
            holder.rollback()
            holder.close()

    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/messages?state=", "state"),
        ("/messages?limit=", "limit"),
        ("/chats?health=", "health"),
        ("/events?outcome=", "outcome"),
    ],
)
def test_a_refused_parameter_is_shown_cut(settings: Settings, path: str, field: str) -> None:
    with reader(create_app(web_settings(settings))) as client:
        response = client.get(path + "A" * 5_000)

    assert response.status_code == 422
    assert response.json()["field"] == field
    assert len(response.text) < 400
    assert "… (5,000 characters)" in response.json()["error"]


@pytest.mark.parametrize("path", ["/lines", "/chats", "/messages", "/events"])
def test_reads_answer_while_the_write_lock_is_held(
    locked_store: Settings, busy_hg: Healthgate, path: str
) -> None:
    # Given a message, and another writer (a big enqueue, a purge) holding the lock
    message_id = busy_hg.enqueue(to=BOB, body="hi", line=LINE_A)
    with reader(create_app(web_settings(locked_store))) as client:
        holder = hold_write_lock(locked_store)
        try:
            # When a reader asks, Then it is answered: a read takes no write lock
            listed = client.get(path)
            explained = client.get(f"/messages/{message_id}")
            status = busy_hg.status()
        finally:
            holder.rollback()
            holder.close()

    assert listed.status_code == 200, listed.text
    assert explained.status_code == 200, explained.text
    assert status["lines"]


def test_webhook_with_the_database_unreachable_is_503_with_retry_after(
    tmp_path: Path, clock: Any
) -> None:
    policy = tmp_path / "healthgate.toml"
    policy.write_text(POLICY)
    settings = Settings(
        data_dir=tmp_path,
        policy_file=policy,
        database_url="postgresql://postgres@127.0.0.1:1/nowhere",
        linq_webhook_secret=SecretStr(SECRET),
    )
    body, headers = signed(message_event(LINE_A, BOB, START, text="STOP"), START)

    client = TestClient(create_app(settings), base_url=BASE_URL)
    response = client.post("/webhooks/linq", content=body, headers=headers)

    assert (response.status_code, response.headers.get("Retry-After")) == (503, "5")


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_GOODBUTNOTB64!!!",
        "whsec_GOODBUTNOTB64!!!SECRETVALUE",
        "   ",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw notbase64SECRETVAL%%",
    ],
)
def test_the_web_command_refuses_a_secret_no_delivery_could_verify_in_one_line(
    tmp_path: Path, secret: str
) -> None:
    # Given a webhook secret that is not strictly base64 (or blank)
    env = {
        "HEALTHGATE_DATA_DIR": str(tmp_path / "data"),
        "HEALTHGATE_POLICY_FILE": str(tmp_path / "healthgate.toml"),
        "HEALTHGATE_LINQ_WEBHOOK_SECRET": secret,
    }

    # When the web process is started, Then it stops with one line, exit 2, no secret shown
    result = CliRunner().invoke(cli_app, ["web"], env=env)
    assert result.exit_code == 2, result.output
    assert "HEALTHGATE_LINQ_WEBHOOK_SECRET" in result.output
    assert "Traceback" not in result.output
    assert "SECRETVAL" not in result.output


def test_init_writes_an_api_token_that_the_web_process_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a fresh folder with no HEALTHGATE_API_TOKEN
    monkeypatch.chdir(tmp_path)
    for name in ("API_TOKEN", "DATABASE_URL", "BROKER_URL", "DATA_DIR", "POLICY_FILE"):
        monkeypatch.delenv(f"HEALTHGATE_{name}", raising=False)

    # When healthgate is set up, twice
    first = CliRunner().invoke(cli_app, ["init"])
    again = CliRunner().invoke(cli_app, ["init"])

    # Then a random token is written once, the owner's only, and never printed
    token_file = tmp_path / ".healthgate" / constants.API_TOKEN_FILE
    token = token_file.read_text().strip()
    assert first.exit_code == 0, first.output
    assert len(token) >= 40
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert ".healthgate/api_token" in first.output
    assert token not in first.output
    assert "API token" not in again.output
    assert token_file.read_text().strip() == token

    # and the web process's reads take it, and no other
    settings = Settings(data_dir=tmp_path / ".healthgate", policy_file=tmp_path / "healthgate.toml")
    with TestClient(create_app(settings), base_url=BASE_URL) as client:
        assert client.get("/lines").status_code == 401
        wrong = client.get("/lines", headers={"Authorization": "Bearer " + token[:-1]})
        right = client.get("/lines", headers={"Authorization": f"Bearer {token}"})
    assert wrong.status_code == 401
    assert right.status_code == 200, right.text
    # while HEALTHGATE_API_TOKEN, when set, is the one
    chosen = settings.model_copy(update={"api_token": SecretStr("chosen-token-0123456789")})
    with TestClient(create_app(chosen), base_url=BASE_URL) as client:
        assert client.get("/lines", headers={"Authorization": f"Bearer {token}"}).status_code == 401
