"""The embedded default provider: one JSON line per send in a local file."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from scheduler.providers.base import Outbound, Sent


class LogProvider:
    """Appends each send to a JSON-lines file; safe for several processes at once.

    The body is left out on purpose: the log is for counting and auditing sends,
    and message content is personal data.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def send(self, message: Outbound) -> Sent:
        record = {
            "at": datetime.now(UTC).isoformat(),
            "message_id": message.message_id,
            "line": message.line,
            "recipient": message.recipient,
            "idempotency_key": message.idempotency_key,
        }
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        # One write() on an O_APPEND descriptor: lines from concurrent workers never interleave.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return Sent(provider_message_id=f"log-{message.message_id}")

    def close(self) -> None:
        """Nothing is held open between sends."""


def read_send_log(path: Path) -> list[dict[str, str]]:
    """Every record of a send log, oldest first (for tests, audits and the CLI)."""
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
