"""The plain way to send with Celery, for comparison: one bare task per message, no gate.

``celery -A bench.baseline worker`` runs it; the broker comes from ``BENCH_BROKER_URL``.
"""

from __future__ import annotations

import os

from celery import Celery

from bench.provider import NullProvider
from scheduler.providers import Outbound

QUEUE = "bench-baseline"
TASK = "bench.send"


def create_app(broker: str) -> Celery:
    """A Celery app with Celery's defaults and one task that calls the null provider."""
    app = Celery("bench_baseline", broker=broker, set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
    )
    provider = NullProvider()

    @app.task(name=TASK, ignore_result=True, shared=False)
    def send(message_id: str, line: str, recipient: str, body: str) -> None:
        provider.send(Outbound(message_id, line, recipient, body, idempotency_key=message_id))

    return app


app = create_app(os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/7"))
