"""The embedded default provider: one JSON line per send in a local file."""

from __future__ import annotations

import fcntl
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from scheduler.files import PRIVATE_DIR, PRIVATE_FILE, tighten_if_present
from scheduler.providers.base import Outbound, Sent


class LogProvider:
    """Appends each send to a JSON-lines file; safe for several processes at once.

    Like a provider with idempotency keys, it sends a key it has seen once only: a send
    whose key is in the log already returns the earlier answer and appends nothing. The
    check and the append happen under an exclusive lock on the file, so two processes
    resending one key never both write it.

    The body is left out on purpose: the log is for counting and auditing sends,
    and message content is personal data. The recipients are in it, so it is its
    owner's only (0600).
    """

    deduplicates = True

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        tighten_if_present(path)
        #: Keys read from the log so far, and how far into the file they were read.
        self._keys: set[str] = set()
        self._read_to = 0

    def send(self, message: Outbound) -> Sent:
        sent = Sent(provider_message_id=f"log-{message.message_id}")
        record = {
            "at": datetime.now(UTC).isoformat(),
            "message_id": message.message_id,
            "line": message.line,
            "recipient": message.recipient,
            "idempotency_key": message.idempotency_key,
        }
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
        try:
            # Released by the kernel when the process dies, so a crash never wedges it.
            fcntl.flock(fd, fcntl.LOCK_EX)
            if message.idempotency_key in self._seen(fd):
                return sent
            # One write() on an O_APPEND descriptor: lines never interleave.
            os.write(fd, line)
        finally:
            os.close(fd)
        return sent

    def _seen(self, fd: int) -> set[str]:
        """The keys in the log, reading only what was appended since the last call."""
        size = os.fstat(fd).st_size
        if size < self._read_to:  # the log was truncated or replaced: read it again
            self._keys.clear()
            self._read_to = 0
        if size > self._read_to:
            chunk = os.pread(fd, size - self._read_to, self._read_to)
            complete = chunk[: chunk.rfind(b"\n") + 1]
            for raw in complete.splitlines():
                if raw.strip():
                    self._keys.add(json.loads(raw)["idempotency_key"])
            self._read_to += len(complete)
        return self._keys

    def close(self) -> None:
        """Nothing is held open between sends."""


def read_send_log(path: Path) -> list[dict[str, str]]:
    """Every record of a send log, oldest first (for tests, audits and the CLI)."""
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
