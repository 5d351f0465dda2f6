"""What healthgate counts for Prometheus, and where worker processes leave their counts.

The counters and the histogram below are process-wide, as ``prometheus_client`` wants
them. With ``PROMETHEUS_MULTIPROC_DIR`` set before the process starts, each process
(every Celery prefork child included) writes its counts to its own files in that folder,
and the web process's ``/metrics`` adds them up (``prometheus_client.multiprocess``).
``healthgate run`` sets it for every process it starts, to ``<data dir>/metrics``.

Labels are kept to bounded sets: actions, reason codes and outcomes are enums, and a
line is one of the numbers the policy declares. Never a recipient or a message id.
"""

from __future__ import annotations

import os
from collections import Counter as Tally
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.multiprocess import mark_process_dead
from sqlalchemy import Connection, Engine, event

from scheduler.files import private_dir
from scheduler.settings import Settings

#: The variable ``prometheus_client`` reads, once, when it is imported.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The folder under the data dir that ``healthgate run`` uses when none is set.
METRICS_DIR = "metrics"

#: Enqueue-to-send, from seconds (a message sent at once) to days (held for health).
LATENCY_BUCKETS = (
    *(1.0, 5.0, 15.0, 30.0, 60.0),
    *(300.0, 900.0, 1800.0, 3600.0),
    *(3 * 3600.0, 6 * 3600.0, 12 * 3600.0, 86400.0),
    *(2 * 86400.0, 3 * 86400.0, 7 * 86400.0),
)

DECISIONS = Counter(
    "healthgate_decisions_total",
    "Decisions recorded on messages (repeats of a hold included), by action, reason code "
    "and line (empty when none was chosen yet).",
    ["action", "code", "line"],
)
SENDS = Counter(
    "healthgate_sends_total",
    "Sends the provider accepted, by line and provider.",
    ["line", "provider"],
)
PROVIDER_ERRORS = Counter(
    "healthgate_provider_errors_total",
    "Sends the provider refused or failed, by line, provider and kind of failure.",
    ["line", "provider", "failure"],
)
WEBHOOKS = Counter(
    "healthgate_webhooks_total",
    "Webhook deliveries by source and outcome (applied, ignored, rejected, duplicate, "
    "unverified, unavailable).",
    ["source", "outcome"],
)
OUTCOME_DELIVERIES = Counter(
    "healthgate_outcome_deliveries_total",
    "Outcomes handed to the application's callback, by result (delivered, failed, abandoned).",
    ["result"],
)
SEND_LATENCY = Histogram(
    "healthgate_send_latency_seconds",
    "From enqueue to the provider's acceptance, in seconds.",
    buckets=LATENCY_BUCKETS,
)


def directory(settings: Settings) -> Path:
    """Where the processes of ``healthgate run`` leave their counts: the variable's
    folder when it is set, ``<data dir>/metrics`` otherwise."""
    given = os.environ.get(MULTIPROC_ENV)
    return Path(given) if given else settings.data_dir / METRICS_DIR


def prepare(path: Path) -> Path:
    """``path`` as an owner-only folder without the counts of an earlier run.

    Only ``prometheus_client``'s own files (``*.db``) are removed: the folder may be one
    the operator named, holding other things.
    """
    private_dir(path)
    for old in path.glob("*.db"):
        old.unlink(missing_ok=True)
    return path


def process_exited(pid: int) -> None:
    """Tell the multiprocess files that ``pid`` is gone (Celery's child shutdown)."""
    if os.environ.get(MULTIPROC_ENV):
        mark_process_dead(pid)  # type: ignore[no-untyped-call]


# Decisions are counted when the transaction that stores them commits: a rolled-back
# transaction (or savepoint) stored nothing, so it counts nothing. The counts wait in
# the connection's ``info``, one layer per open savepoint.
_PENDING = "healthgate_pending_decisions"


def count_decisions(
    connection: Connection, decisions: Iterable[tuple[str, str, str | None]]
) -> None:
    """Count ``(action, code, line)`` decisions once ``connection``'s transaction commits."""
    layers: list[Tally[tuple[str, str, str]]] = connection.info.setdefault(_PENDING, [Tally()])
    layers[-1].update((str(a), str(c), line or "") for a, c, line in decisions)


def watch(engine: Engine) -> None:
    """Count ``engine``'s pending decisions at each commit; forget them at a rollback."""
    event.listen(engine, "begin", _forget)
    event.listen(engine, "rollback", _forget)
    event.listen(engine, "commit", _commit)
    event.listen(engine, "savepoint", _savepoint)
    event.listen(engine, "release_savepoint", _release)
    event.listen(engine, "rollback_savepoint", _rollback_savepoint)


def _forget(connection: Connection) -> None:
    connection.info.pop(_PENDING, None)


def _commit(connection: Connection) -> None:
    for layer in connection.info.pop(_PENDING, ()):
        for (action, code, line), n in layer.items():
            DECISIONS.labels(action=action, code=code, line=line).inc(n)


def _savepoint(connection: Connection, _name: str) -> None:
    connection.info.setdefault(_PENDING, [Tally()]).append(Tally())


def _release(connection: Connection, _name: str, _context: Any) -> None:
    layers = connection.info.get(_PENDING)
    if layers and len(layers) > 1:
        top = layers.pop()
        layers[-1].update(top)


def _rollback_savepoint(connection: Connection, _name: str, _context: Any) -> None:
    layers = connection.info.get(_PENDING)
    if layers and len(layers) > 1:
        layers.pop()
