"""`healthgate poll`, `status` and `explain` against a local fake 360dialog over HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from scheduler.cli import app

LINE = "+14155550101"
BOB = "+14155550123"
KEY = "key-of-the-line"
BLOCKED = {
    "health_status": {
        "can_send_message": "BLOCKED",
        "entities": [
            {
                "entity_type": "WABA",
                "id": "102290129340398",
                "can_send_message": "BLOCKED",
                "errors": [
                    {
                        "error_code": 141002,
                        "error_description": "Templates must be approved.",
                        "possible_solution": "Appeal the review decision.",
                    }
                ],
            }
        ],
    }
}
Run = Callable[..., tuple[int, str]]


class Fake360(BaseHTTPRequestHandler):
    """Answers ``GET /health_status`` with ``answer``; keeps each request's API key."""

    answer: ClassVar[dict[str, Any]] = BLOCKED
    keys: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        Fake360.keys.append(self.headers.get("D360-API-KEY"))
        body = json.dumps(self.answer).encode()
        self.send_response(200 if self.path == "/health_status" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads what it needs from ``keys``."""


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Fake360)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Fake360.keys = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: str) -> Run:
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "BROKER_URL", "REDIS_URL", "DATA_DIR", "POLICY_FILE"):
        monkeypatch.delenv(f"HEALTHGATE_{name}", raising=False)
    monkeypatch.setenv("HEALTHGATE_D360_BASE_URL", server)
    monkeypatch.setenv("HEALTHGATE_D360_KEY_SUPPORT", KEY)
    (tmp_path / "healthgate.toml").write_text(
        f'[[lines]]\nnumber = "{LINE}"\nprovider = "360dialog"\n'
        'api_key_env = "HEALTHGATE_D360_KEY_SUPPORT"\n'
    )
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, list(args))
        return result.exit_code, result.output

    assert run("init")[0] == 0
    return run


def test_poll_applies_the_blocked_answer_and_status_shows_why(cli: Run) -> None:
    code, output = cli("poll")
    assert (code, output.strip()) == (0, "polled: changed 1")

    code, output = cli("status")

    assert code == 0
    assert "CRITICAL" in output
    assert (
        "WABA 102290129340398: BLOCKED: error 141002: Templates must be approved. "
        "(possible solution: Appeal the review decision.)"
    ) in output
    assert Fake360.keys == [KEY]


def test_explain_shows_the_line_detail_of_a_message_the_line_holds(cli: Run) -> None:
    cli("poll")
    _, message_id = cli("enqueue", "--to", BOB, "--body", "hi", "--line", LINE)
    cli("drain")

    code, output = cli("explain", message_id.strip())

    assert code == 0
    assert "held by its line: reputation CRITICAL" in output
    assert "error 141002" in output


def test_status_json_carries_the_detail(cli: Run) -> None:
    cli("poll")

    code, output = cli("status", "--json")

    assert code == 0
    (line,) = json.loads(output)["lines"]
    assert line["detail"]["entities"][0]["errors"][0]["error_code"] == 141002
    assert line["reputation_updated_at"] is not None
