"""A separate Celery application told of every outcome by its own task, through the
broker; and a worker killed between a final state and its callback."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from sqlalchemy import update
from standardwebhooks import Webhook

from scheduler import constants
from scheduler.client import Healthgate
from scheduler.outcomes import deliver
from scheduler.outcomes.webhook import WebhookCallback
from scheduler.runtime import utcnow
from scheduler.settings import Settings
from scheduler.store.models import Outcome
from tasks import install
from tests import notifications_app
from tests.celery_app_example import make_app
from tests.outcome_world import FINAL, finish_one_of_each, stored_outcomes
from tests.test_outcomes import SECRET, Receiver, by_id, receiver  # noqa: F401

pytestmark = [
    pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning"),
    # Workers and processes on the production store; the outbox itself is shown on both
    # stores by tests/test_outcomes.py.
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
]

#: Long enough for a busy machine; every wait ends as soon as what it waits for happens.
PATIENCE = 60.0
ROOT = Path(__file__).parent.parent
#: When every message of ``finish_one_of_each`` has finished, passed in as the time.
LATER = timedelta(seconds=10)


@pytest.fixture
def notifications(broker: str) -> Iterator[Celery]:
    """The separate application, its callback's worker running in a process of its own;
    the test sends with the same app, by task name only."""
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "tests.notifications_app", "worker",
            "-Q", notifications_app.QUEUE, "--pool=solo", "--without-heartbeat",
            "--without-gossip", "--without-mingle", "--loglevel=WARNING",
        ],
        env={**os.environ, "NOTIFICATIONS_BROKER": broker},
        cwd=ROOT,
    )  # fmt: skip
    app = Celery("notifications", broker=broker, backend=broker, set_as_current=False)
    try:
        yield app
    finally:
        worker.terminate()
        worker.wait(timeout=PATIENCE)


def told(broker: str, count: int, nudge: Callable[[], None]) -> list[dict[str, Any]]:
    """What the application's callback was given, once it has ``count`` outcomes;
    ``nudge`` (beat's tick) is called while it waits."""
    client = redis.Redis.from_url(broker)
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + PATIENCE
    while len(got) < count and time.monotonic() < deadline:
        nudge()
        # Waits for the next outcome, a second at most, then nudges again.
        if item := client.blpop([notifications_app.TOLD], timeout=1):
            got.append(json.loads(item[1]))
            got.extend(json.loads(x) for x in client.lpop(notifications_app.TOLD, 100) or [])
    assert len(got) >= count, f"{len(got)} of {count} outcomes came"
    return got


@pytest.fixture
def healthgate_worker(settings: Settings, broker: str) -> Iterator[Settings]:
    """healthgate installed in a shop's Celery app, its worker on healthgate's queue,
    told to call the application's callback task."""
    configured = settings.model_copy(
        update={
            "outcome_task": notifications_app.CALLBACK,
            "outcome_queue": notifications_app.QUEUE,
            "reconcile_after_seconds": 1.0,
        }
    )
    shop = make_app(broker, backend=broker)
    install(shop, configured)
    beat = logging.getLogger("celery.beat")
    filters = list(beat.filters)
    with start_worker(shop, pool="solo", perform_ping_check=False, queues=["healthgate"]):
        yield configured
    beat.filters[:] = filters


def test_the_application_is_told_every_outcome_as_stored(
    healthgate_worker: Settings, notifications: Celery, broker: str
) -> None:
    settings = healthgate_worker
    hg = Healthgate(settings)
    hg.sync_lines()
    try:
        # One message of each final state, and one sent through the broker by name,
        # twice with one key, beside one refused.
        finish_one_of_each(hg, utcnow())
        fields = {"to": "+14155550177", "body": "Order 7 shipped", "idempotency_key": "order-7"}
        first = notifications.send_task(constants.ENQUEUE_TASK, kwargs=fields, queue="healthgate")
        again = notifications.send_task(constants.ENQUEUE_TASK, kwargs=fields, queue="healthgate")
        refused = notifications.send_task(
            constants.ENQUEUE_TASK, kwargs={"to": "12", "body": "x"}, queue="healthgate"
        )
        assert first.get(timeout=PATIENCE) == again.get(timeout=PATIENCE)
        assert refused.get(timeout=PATIENCE)["field"] == "to"

        def tick() -> None:
            for name in (constants.TICK_TASK, constants.OUTCOMES_TASK):
                notifications.send_task(name, queue="healthgate")

        got = told(broker, len(FINAL) + 1, tick)

        # Every outcome came, each exactly as the message stores it; none for the
        # repeat or the refusal.
        assert by_id(got) == stored_outcomes(hg)
        assert sorted(o["state"] for o in got) == sorted([*FINAL, "sent"])
        assert [o["key"] for o in got].count("order-7") == 1

        # A delivery task that published and died before it recorded so: the outcome
        # goes again, with the same id, and the application drops the repeat by it.
        with hg.runtime.sessions.begin() as session:
            session.execute(update(Outcome).where(Outcome.id == 1).values(delivered_at=None))
        repeated = told(broker, 1, tick)
        assert repeated == by_id(got)[:1]
    finally:
        hg.close()


def test_a_broker_that_refuses_the_call_keeps_the_outcome_for_later(settings: Settings) -> None:
    from tasks.outcomes import TaskCallback

    hg = Healthgate(settings.model_copy(update={"reconcile_after_seconds": 1.0}))
    hg.sync_lines()
    try:
        finish_one_of_each(hg, utcnow())
        now = utcnow()
        down = Celery("down", broker="redis://127.0.0.1:9/0", set_as_current=False)
        down.conf.broker_connection_timeout = 1
        callback = TaskCallback(down, notifications_app.CALLBACK, notifications_app.QUEUE)

        counts = deliver(hg.runtime, callback, now + LATER)

        assert counts == {"failed": 1}
        assert hg.status()["outcomes"]["undelivered"] == len(FINAL)
        assert "Error" in hg.status()["outcomes"]["last_error"]["error"]
    finally:
        hg.close()


# A worker killed between the final state and the callback.

_DELIVERING = """
import sys
from datetime import datetime, timedelta

from scheduler.client import Healthgate
from scheduler.outcomes import deliver
from scheduler.outcomes.webhook import WebhookCallback
from scheduler.runtime import utcnow
from scheduler.settings import Settings

settings = Settings()
hg = Healthgate(settings)
if sys.argv[1] == "finish":
    from tests.outcome_world import finish_one_of_each

    hg.sync_lines()
    finish_one_of_each(hg, utcnow())
    print("finished", flush=True)
    sys.stdin.readline()  # killed here, before any delivery
else:
    callback = WebhookCallback(settings.outcome_url, settings.outcome_secret.get_secret_value())
    deliver(hg.runtime, callback, datetime.fromisoformat(sys.argv[2]))
    print("delivered", flush=True)
"""


def worker(settings: Settings, *args: str) -> subprocess.Popen[str]:
    environment = {
        **os.environ,
        "HEALTHGATE_DATABASE_URL": settings.database,
        "HEALTHGATE_DATA_DIR": str(settings.data_dir),
        "HEALTHGATE_POLICY_FILE": str(settings.policy_file),
        "HEALTHGATE_RECONCILE_AFTER_SECONDS": "1",
        "HEALTHGATE_OUTCOME_URL": settings.outcome_url or "",
        "HEALTHGATE_OUTCOME_SECRET": SECRET,
    }
    return subprocess.Popen(
        [sys.executable, "-c", _DELIVERING, *args],
        env=environment,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_outcomes_survive_a_worker_killed_after_the_final_state(
    settings: Settings,
    receiver: Receiver,  # noqa: F811
) -> None:
    configured = settings.model_copy(update={"outcome_url": receiver.url})
    # Given a worker that finished six messages and was killed before any callback
    finishing = worker(configured, "finish")
    assert finishing.stdout is not None
    assert finishing.stdout.readline().strip() == "finished"
    finishing.send_signal(signal.SIGKILL)
    finishing.wait()
    assert receiver.got == []

    # When the next worker's delivery runs
    # (Time passed in: a second on, when everything finished is due.)
    delivering = worker(configured, "deliver", (utcnow() + LATER).isoformat())
    out, _ = delivering.communicate(timeout=PATIENCE)
    assert out.strip() == "delivered"

    # Then the application got every outcome, as stored
    hg = Healthgate(configured)
    try:
        bodies = [verified(headers, body) for headers, body in receiver.got]
        assert by_id([b["data"] for b in bodies]) == stored_outcomes(hg)
    finally:
        hg.close()


def test_an_outcome_whose_worker_died_during_the_callback_is_delivered_again(
    settings: Settings,
    receiver: Receiver,  # noqa: F811
) -> None:
    hg = Healthgate(settings.model_copy(update={"reconcile_after_seconds": 1.0}))
    hg.sync_lines()
    try:
        finish_one_of_each(hg, utcnow())
        configured = settings.model_copy(update={"outcome_url": receiver.url})
        # Given a worker killed while the application was taking the first outcome
        receiver.hold = threading.Event()
        delivering = worker(configured, "deliver", (utcnow() + LATER).isoformat())
        assert receiver.holding.wait(PATIENCE)
        delivering.send_signal(signal.SIGKILL)
        delivering.wait()
        receiver.hold.set()
        assert len(receiver.got) == 1

        # When its lease has run out and the next delivery runs
        now = utcnow() + LATER + timedelta(seconds=constants.OUTCOME_LEASE_SECONDS)
        callback = WebhookCallback(receiver.url, SECRET)
        with_lease_over = deliver(hg.runtime, callback, now)
        callback.close()

        # Then every outcome came, the interrupted one twice with one id
        assert with_lease_over == {"delivered": len(FINAL)}
        ids = [headers["webhook-id"] for headers, _ in receiver.got]
        assert ids.count(ids[0]) == 2
        assert len(set(ids)) == len(FINAL)
    finally:
        hg.close()


def verified(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """A webhook's body, once its signature is checked with the application's secret."""
    body_: dict[str, Any] = Webhook(SECRET).verify(body, headers)
    return body_
