"""healthgate on the application's own Celery: enqueue by task name, and install."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from sqlalchemy.exc import OperationalError

from policies.errors import HealthgateError
from scheduler import constants
from scheduler.client import Healthgate
from scheduler.runtime import Runtime
from scheduler.settings import Settings
from tasks import install, intake
from tasks.install import TASK_NAMES
from tests.celery_app_example import make_app
from tests.conftest import LINE_A

# Celery's Redis result backend calls redis-py's deprecated ``setex`` (Celery 5.5).
pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")

TO = "+14155550123"
#: Far ahead of any clock this suite runs under: no test reads the time.
SEND_AT = "2099-01-05T09:00:00+00:00"
EXPIRES_AT = "2099-01-06T09:00:00+01:00"


@pytest.fixture
def sender(settings: Settings, broker: str) -> Iterator[Celery]:
    """A separate app that knows healthgate only by task name, with a worker running
    the application's app that installed healthgate."""
    shop = make_app(broker, backend=broker)
    install(shop, settings)
    # A worker's start sets up logging for the whole process: put it back afterwards.
    beat = logging.getLogger("celery.beat")
    filters = list(beat.filters)
    with start_worker(shop, pool="solo", perform_ping_check=False, queues=["healthgate"]):
        yield Celery("sender", broker=broker, backend=broker, set_as_current=False)
    beat.filters[:] = filters


def sent(sender: Celery, name: str, **kwargs: Any) -> Any:
    result = sender.send_task(name, kwargs=kwargs, queue=constants.DEFAULT_QUEUE)
    answer = result.get(timeout=20)
    assert result.state == "SUCCESS"  # answered, not retried
    return answer


def stored(settings: Settings) -> list[dict[str, Any]]:
    client = Healthgate(settings)
    try:
        return client.messages()
    finally:
        client.close()


def test_enqueue_by_name_stores_the_message_once_per_key(
    sender: Celery, settings: Settings
) -> None:
    # Given a message as JSON, times in ISO 8601 with an offset
    fields = {
        "to": TO,
        "body": "Your order shipped",
        "line": LINE_A,
        "idempotency_key": "order-1",
        "send_at": SEND_AT,
        "expires_at": EXPIRES_AT,
    }
    # When it is sent twice by task name
    first = sent(sender, constants.ENQUEUE_TASK, **fields)
    again = sent(sender, constants.ENQUEUE_TASK, **fields)
    # Then one message is stored, and both calls return its id
    assert first == again == {"id": first["id"]}
    rows = stored(settings)
    assert [(r["id"], r["idempotency_key"]) for r in rows] == [(first["id"], "order-1")]


def test_enqueue_many_by_name_returns_ids_in_order(sender: Celery, settings: Settings) -> None:
    messages = [{"to": TO, "body": f"Note {n}", "idempotency_key": f"n-{n}"} for n in range(3)]
    answer = sent(sender, constants.ENQUEUE_MANY_TASK, messages=messages)
    assert len(answer["ids"]) == 3
    assert {r["id"] for r in stored(settings)} == set(answer["ids"])


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"to": TO, "body": "hi", "send_at": "2099-01-05T09:00:00"}, "send_at"),
        ({"to": TO, "body": "hi", "expires_at": 1234}, "expires_at"),
        ({"to": "12", "body": "hi"}, "to"),
        ({"to": TO, "body": "hi", "colour": "red"}, "messages[0].colour"),
    ],
)
def test_bad_input_is_answered_and_stores_nothing(
    sender: Celery, settings: Settings, fields: dict[str, Any], field: str
) -> None:
    answer = sent(sender, constants.ENQUEUE_TASK, **fields)
    assert answer["field"] == field
    assert field in answer["error"]
    assert stored(settings) == []


def test_bad_message_in_many_stores_none(sender: Celery, settings: Settings) -> None:
    messages = [{"to": TO, "body": "fine"}, {"to": TO, "body": "x", "send_at": "tomorrow"}]
    answer = sent(sender, constants.ENQUEUE_MANY_TASK, messages=messages)
    assert answer["field"] == "messages[1].send_at"
    assert stored(settings) == []


def test_refusal_logs_one_warning_with_values_cut(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = Celery("refusals", broker="memory://", set_as_current=False)
    client = Healthgate(settings)
    intake.register(app, lambda: client.runtime, settings)
    with caplog.at_level(logging.WARNING, logger="tasks.intake"):
        result = app.tasks[constants.ENQUEUE_TASK].apply(kwargs={"to": "9" * 5000, "body": "x"})
    client.close()
    assert result.get()["field"] == "to"
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert len(record.getMessage()) < 300
    assert "5,000 characters" in record.getMessage()


def test_database_outage_is_retried_with_backoff(settings: Settings) -> None:
    calls = []

    def down() -> Runtime:
        calls.append(1)
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("database down"))

    app = Celery("outage", broker="memory://", set_as_current=False)
    intake.register(app, down, settings)
    task = app.tasks[constants.ENQUEUE_TASK]
    assert (task.retry_backoff, task.acks_late, task.reject_on_worker_lost) == (True, True, True)
    result = task.apply(kwargs={"to": TO, "body": "hi"})
    assert isinstance(result.result, OperationalError)
    assert len(calls) == constants.ENQUEUE_MAX_RETRIES + 1


def route(app: Celery, name: str) -> str:
    queue: str = app.amqp.router.route({}, name)["queue"].name
    return queue


def test_install_sets_options_on_healthgate_tasks_only(settings: Settings) -> None:
    # Given a shop's app with a task of its own, on a broker healthgate shares
    app = make_app("redis://127.0.0.1:6379/0")
    # When healthgate is installed on it
    install(app, settings)
    # Then healthgate's tasks are acknowledged late, handed back, on healthgate's queue
    for name in TASK_NAMES:
        task = app.tasks[name]
        assert (task.acks_late, task.reject_on_worker_lost) == (True, True), name
        assert route(app, name) == constants.DEFAULT_QUEUE
    # And the shop's task keeps Celery's defaults
    own = app.tasks["shop.send_receipt"]
    assert (own.acks_late, own.reject_on_worker_lost) == (False, None)
    assert route(app, "shop.send_receipt") == "celery"
    assert app.conf.task_acks_late is False
    # And beat runs healthgate's entries on its queue
    beat = app.conf.beat_schedule
    assert {e["task"] for e in beat.values()} >= {
        constants.TICK_TASK,
        constants.POLL_TASK,
        constants.PURGE_TASK,
    }
    assert all(e["options"]["queue"] == constants.DEFAULT_QUEUE for e in beat.values())


def test_install_keeps_the_apps_own_routes(settings: Settings) -> None:
    app = make_app("redis://127.0.0.1:6379/0")
    app.conf.task_routes = {"shop.*": {"queue": "shop"}}
    install(app, settings)
    assert route(app, "shop.send_receipt") == "shop"
    assert route(app, constants.DISPATCH_TASK) == constants.DEFAULT_QUEUE


@pytest.mark.parametrize(
    ("setting", "value"), [("task_always_eager", True), ("accept_content", ["pickle"])]
)
def test_install_refuses_what_it_cannot_run(settings: Settings, setting: str, value: Any) -> None:
    app = make_app("redis://127.0.0.1:6379/0")
    app.conf[setting] = value
    with pytest.raises(HealthgateError, match=setting):
        install(app, settings)
    assert constants.TICK_TASK not in app.tasks
