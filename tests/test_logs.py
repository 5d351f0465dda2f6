"""Quiet, legible logs: a task logs at INFO only when it did something, Celery's lines for
every task are left out, and `healthgate run` prefixes each process's lines."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from freezegun.api import FrozenDateTimeFactory

from scheduler import constants, runner
from scheduler.client import Healthgate
from scheduler.settings import Settings
from tasks.application import create_app
from tasks.logs import quiet, summary
from tests.conftest import LINE_A

QUIETED = ("celery.app.trace", "celery.worker.strategy", "alembic")


def tick_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("tasks.")]


def test_a_tick_with_nothing_to_do_logs_nothing(
    hg: Healthgate, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # Given no message due
    app = create_app(settings)
    app.conf.task_always_eager = True

    # When beat's tick runs
    with caplog.at_level(logging.INFO):
        app.tasks[constants.TICK_TASK].apply()

    # Then it logs nothing at INFO
    assert tick_lines(caplog) == []


def test_a_tick_that_claims_logs_what_it_did(
    hg: Healthgate,
    settings: Settings,
    clock: FrozenDateTimeFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given one message due
    app = create_app(settings)
    app.conf.task_always_eager = True
    hg.enqueue(to="+14155550123", body="hi", line=LINE_A)

    # When beat's tick runs, and runs again a moment later
    with caplog.at_level(logging.INFO):
        app.tasks[constants.TICK_TASK].apply()
        clock.tick(2)
        app.tasks[constants.TICK_TASK].apply()

    # Then the first tick and its dispatch say what they did, in a line each; the second
    # tick, with nothing left to do, says nothing
    assert tick_lines(caplog) == ["dispatch: send 1, sent 1", "tick: claimed 1"]


def test_summary_names_the_counts_that_are_not_zero() -> None:
    assert summary({"sent": 3, "needs_review": 0, "RESENT": 1}) == "resent 1, sent 3"
    assert summary({"claimed": 0}) == ""


@pytest.fixture
def loggers() -> Iterator[None]:
    """Celery's loggers as they were, after the test changed them."""
    levels = {name: logging.getLogger(name).level for name in QUIETED}
    beat = logging.getLogger("celery.beat")
    filters = list(beat.filters)
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    beat.filters = filters


def beat_sending() -> logging.LogRecord:
    return logging.LogRecord(
        "celery.beat",
        logging.INFO,
        __file__,
        1,
        "Scheduler: Sending due task %s (%s)",
        ("healthgate-tick", "healthgate.tick"),
        None,
    )


@pytest.mark.usefixtures("loggers")
def test_celerys_lines_for_every_task_are_left_out_at_info() -> None:
    # When the worker or beat sets up its logging at INFO
    quiet(loglevel=logging.INFO)

    # Then Celery's per-task lines and beat's "sending" lines are left out, errors kept
    for name in QUIETED:
        assert not logging.getLogger(name).isEnabledFor(logging.INFO)
        assert logging.getLogger(name).isEnabledFor(logging.ERROR)
    assert not logging.getLogger("celery.beat").filter(beat_sending())


@pytest.mark.usefixtures("loggers")
def test_debug_keeps_every_line() -> None:
    logging.getLogger("celery.app.trace").setLevel(logging.NOTSET)

    quiet(loglevel="DEBUG")

    assert logging.getLogger("celery.app.trace").level == logging.NOTSET
    assert logging.getLogger("celery.beat").filter(beat_sending())


@pytest.mark.parametrize(
    ("name", "line", "expected"),
    [
        ("web", "INFO: started\n", "web    | INFO: started\n"),
        ("worker", "ready\r\n", "worker | ready\n"),
        ("beat", "", "beat   | \n"),
    ],
)
def test_a_line_is_prefixed_with_its_process_name_padded(
    name: str, line: str, expected: str
) -> None:
    assert runner.prefixed(name, 6, line) == expected


def test_run_prefixes_every_line_of_each_process(tmp_path: Path) -> None:
    # Given two processes: one writes to stdout and waits for the other, which writes to
    # stderr and keeps running until stopped
    ready = tmp_path / "ready"
    first = (
        "import pathlib, time\n"
        "print('from a')\n"
        f"path = pathlib.Path({str(ready)!r})\n"
        "deadline = time.monotonic() + 30\n"
        "while not path.exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
    )
    second = (
        "import pathlib, sys, time\n"
        "print('from bb', file=sys.stderr, flush=True)\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
    )
    output = io.StringIO()

    # When they are supervised until the first exits
    code = runner.supervise(
        {"a": [sys.executable, "-c", first], "bb": [sys.executable, "-c", second]},
        output=output,
    )

    # Then each line came out with its process's name, the bars aligned
    assert code == 1
    assert sorted(output.getvalue().splitlines()) == ["a  | from a", "bb | from bb"]
