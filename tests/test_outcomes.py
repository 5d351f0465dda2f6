"""The outbox of final states and its delivery to the application's callback."""

from __future__ import annotations

import json
import logging
import resource
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pydantic.v1  # noqa: F401  FastAPI imports it lazily, which fails once freezegun fakes date
import pytest
from freezegun.api import FrozenDateTimeFactory
from pydantic import ValidationError
from sqlalchemy import select, update
from standardwebhooks import Webhook

from scheduler import constants
from scheduler.client import Healthgate
from scheduler.outcomes import CallbackFailed, deliver
from scheduler.outcomes.webhook import WebhookCallback
from scheduler.runtime import Runtime, utcnow
from scheduler.settings import Settings, shown_url
from scheduler.store.models import Outcome
from scheduler.web import create_app
from tests.conftest import START
from tests.outcome_world import FINAL, finish_one_of_each, stored_outcomes
from tests.test_cli import Run, cli, enqueue  # noqa: F401
from tests.web_client import reader, web_settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Recording:
    """The application's side: takes every outcome, or fails while ``down``."""

    target = "test callback"

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.down = False
        self.tries = 0

    def deliver(self, outcome: dict[str, Any], now: datetime) -> None:
        self.tries += 1
        if self.down:
            raise CallbackFailed("connection refused")
        self.got.append(outcome)

    def close(self) -> None:
        pass


def failing() -> Recording:
    """A callback that is down."""
    callback = Recording()
    callback.down = True
    return callback


def by_id(got: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Outcomes in the outbox's order (delivery goes by due time first)."""
    return sorted(got, key=lambda outcome: int(outcome["id"].removeprefix("out_")))


def rows(runtime: Runtime) -> list[Outcome]:
    with runtime.sessions() as session:
        return list(session.scalars(select(Outcome).order_by(Outcome.id)))


def test_each_final_state_puts_one_outcome_in_the_outbox_as_stored(hg: Healthgate) -> None:
    ids = finish_one_of_each(hg, START)

    outbox = rows(hg.runtime)

    assert sorted(row.state for row in outbox) == sorted(FINAL)
    assert {row.message_id for row in outbox} == set(ids.values())
    stored = {o["message_id"]: o for o in stored_outcomes(hg)}
    for row in outbox:
        message = stored[row.message_id]
        assert (row.state, row.code, row.reason, row.at.isoformat()) == (
            message["state"],
            message["code"],
            message["reason"],
            message["at"],
        )
        assert row.next_attempt_at == row.at
        assert (row.attempts, row.delivered_at) == (0, None)


def test_waiting_and_moving_messages_put_nothing_in_the_outbox(
    hg: Healthgate, clock: FrozenDateTimeFactory
) -> None:
    hg.enqueue(to="+14155550140", body="later", send_at=START + timedelta(hours=1))
    hg.enqueue(to="+14155550141", body="now")
    hg.drain()  # sent: one outcome

    assert [row.state for row in rows(hg.runtime)] == ["sent"]


def test_delivery_hands_each_outcome_once_as_stored(hg: Healthgate) -> None:
    finish_one_of_each(hg, START)
    callback = Recording()
    now = START + timedelta(hours=1)

    first = deliver(hg.runtime, callback, now)
    again = deliver(hg.runtime, callback, now)

    assert by_id(callback.got) == stored_outcomes(hg)
    assert first == {"delivered": len(FINAL)}
    assert again == {}
    assert all(row.delivered_at == now for row in rows(hg.runtime))
    assert hg.status()["outcomes"]["undelivered"] == 0


def one_sent(hg: Healthgate) -> str:
    message_id = hg.enqueue(to="+14155550142", body="hello", idempotency_key="order-7")
    hg.drain()
    return message_id


def test_a_failing_callback_is_retried_with_doubling_delays(
    hg: Healthgate, clock: FrozenDateTimeFactory
) -> None:
    message_id = one_sent(hg)
    callback = failing()
    now = START

    for delay in (5, 10, 20, 40, 80):
        assert deliver(hg.runtime, callback, now) == {"failed": 1}
        # Not tried again before its time.
        assert deliver(hg.runtime, callback, now + timedelta(seconds=delay - 1)) == {}
        (row,) = rows(hg.runtime)
        assert row.next_attempt_at == now + timedelta(seconds=delay)
        now = row.next_attempt_at

    assert callback.tries == 5
    status = hg.status()["outcomes"]
    assert (status["undelivered"], status["retrying"]) == (1, 1)
    assert status["last_error"] == {
        "message_id": message_id,
        "error": "CallbackFailed: connection refused",
    }
    assert hg.explain(message_id)["outcomes"][0]["attempts"] == 5

    callback.down = False
    assert deliver(hg.runtime, callback, now) == {"delivered": 1}
    assert callback.got == stored_outcomes(hg)
    assert callback.got[0]["key"] == "order-7"


def test_a_run_stops_at_its_first_failure(hg: Healthgate) -> None:
    finish_one_of_each(hg, START)
    callback = failing()

    deliver(hg.runtime, callback, START + timedelta(hours=1))

    assert callback.tries == 1
    assert sorted(row.attempts for row in rows(hg.runtime)) == [0] * (len(FINAL) - 1) + [1]
    assert all(row.lease_expires_at is None for row in rows(hg.runtime))


def test_the_delay_between_attempts_stops_growing_at_an_hour(
    hg: Healthgate, clock: FrozenDateTimeFactory
) -> None:
    one_sent(hg)
    callback = failing()
    now = START
    for _ in range(15):
        deliver(hg.runtime, callback, now)
        (row,) = rows(hg.runtime)
        delay, now = row.next_attempt_at - now, row.next_attempt_at
    assert row.attempts == 15
    assert delay == timedelta(hours=1)


def test_an_outcome_failing_for_three_days_is_given_up_and_shown(
    hg: Healthgate, clock: FrozenDateTimeFactory
) -> None:
    one_sent(hg)
    callback = failing()
    deliver(hg.runtime, callback, START)
    late = START + timedelta(seconds=constants.OUTCOME_GIVE_UP_SECONDS, hours=1)

    assert deliver(hg.runtime, callback, late) == {"abandoned": 1}

    (row,) = rows(hg.runtime)
    assert row.abandoned_at == late
    clock.move_to(late)
    status = hg.status()["outcomes"]
    assert (status["undelivered"], status["abandoned_24h"]) == (0, 1)
    assert status["last_error"]["error"] == "CallbackFailed: connection refused"


def test_a_claimed_outcome_is_not_handed_out_twice_until_its_lease_ends(hg: Healthgate) -> None:
    finish_one_of_each(hg, START)
    from scheduler.store import outcomes

    lease = timedelta(seconds=constants.OUTCOME_LEASE_SECONDS)
    now = START + timedelta(hours=1)
    with hg.runtime.sessions.begin() as session:
        taken = outcomes.claim(session, now, 3, lease)
    other = Recording()

    deliver(hg.runtime, other, now)
    assert {o["id"] for o in other.got}.isdisjoint({f"out_{t.id}" for t in taken.due})
    assert len(other.got) == len(FINAL) - 3

    # The first delivery run died: after its lease the rest go out.
    deliver(hg.runtime, other, now + lease)
    assert by_id(other.got) == stored_outcomes(hg)

    # ...and should it come back late, what it records changes nothing.
    with hg.runtime.sessions.begin() as session:
        connection = session.connection()
        outcomes.failed(connection, taken, taken.due[0], "late", now + lease)
        outcomes.delivered(connection, taken, [t.id for t in taken.due], now + 2 * lease)
    assert all(
        row.delivered_at == now + lease
        for row in rows(hg.runtime)
        if row.id in {t.id for t in taken.due}
    )
    assert all(row.last_error is None for row in rows(hg.runtime))


def test_without_a_callback_anywhere_outcomes_are_not_kept(hg: Healthgate) -> None:
    finish_one_of_each(hg, START)

    assert deliver(hg.runtime, None, START + timedelta(hours=1)) == {"discarded": len(FINAL)}
    assert rows(hg.runtime) == []


def test_a_worker_without_a_callback_leaves_outcomes_to_one_that_has_it(
    hg: Healthgate, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scheduler.outcomes

    monkeypatch.setattr(scheduler.outcomes, "_warned", set())  # said once a process
    finish_one_of_each(hg, START)
    listening = Recording()
    listening.down = True
    deliver(hg.runtime, listening, START + timedelta(hours=1))  # one failed, noted as listening

    with caplog.at_level(logging.WARNING, logger="scheduler.outcomes"):
        assert deliver(hg.runtime, None, START + timedelta(hours=2)) == {}
    assert len(rows(hg.runtime)) == len(FINAL)
    assert "test callback" in caplog.text
    assert hg.status()["outcomes"]["listening"] == ["test callback"]
    # The purge keeps them too, told or not, while a worker listens.
    assert hg.purge(timedelta(hours=1), now=START + timedelta(hours=3)).outcomes == 0

    # A day after the last worker with a callback went, nobody is waiting for them.
    late = START + timedelta(hours=1, seconds=constants.OUTCOME_LISTENER_STALE_SECONDS + 1)
    assert deliver(hg.runtime, None, late) == {"discarded": len(FINAL)}


def test_purge_forgets_delivered_outcomes_after_retention(hg: Healthgate) -> None:
    finish_one_of_each(hg, START)
    deliver(hg.runtime, Recording(), START + timedelta(hours=1))

    assert hg.purge(timedelta(days=1), now=START + timedelta(hours=2)).outcomes == 0
    assert hg.purge(timedelta(days=1), now=START + timedelta(days=2)).outcomes == len(FINAL)
    assert rows(hg.runtime) == []


def test_one_run_delivers_claim_after_claim_while_any_are_due(hg: Healthgate) -> None:
    finish_one_of_each(hg, START)
    callback = Recording()

    assert deliver(hg.runtime, callback, START + timedelta(hours=1), limit=2) == {
        "delivered": len(FINAL)
    }


def test_outcomes_of_one_message_are_told_in_the_order_they_happened(
    hg: Healthgate, clock: FrozenDateTimeFactory
) -> None:
    # A send handed to a person, then settled by the provider's late answer.
    message_id = one_sent(hg)
    with hg.runtime.sessions.begin() as session:
        session.execute(update(Outcome).values(state="needs_review", code="send_unconfirmed"))
        from scheduler.store import outcomes

        outcomes.write(
            session.connection(),
            [outcomes.Settled(message_id, "sent", "sent", "accepted late", START)],
        )
    callback = failing()
    deliver(hg.runtime, callback, START)  # the first fails: the second must wait for it
    callback.down = False

    assert deliver(hg.runtime, callback, START + timedelta(seconds=1)) == {}
    deliver(hg.runtime, callback, START + timedelta(seconds=5))
    assert [o["state"] for o in callback.got] == ["needs_review", "sent"]


def test_an_outcome_id_is_never_given_twice_even_after_a_purge(hg: Healthgate) -> None:
    one_sent(hg)
    deliver(hg.runtime, Recording(), START)
    (first,) = rows(hg.runtime)
    assert hg.purge(timedelta(seconds=0), now=START + timedelta(hours=1)).outcomes == 1

    hg.enqueue(to="+14155550143", body="again")
    hg.drain()

    (second,) = rows(hg.runtime)
    assert second.id > first.id


def test_give_up_counts_from_failures_not_from_an_outage(hg: Healthgate) -> None:
    # No worker ran for four days: the outcome is tried, not given up untried.
    one_sent(hg)
    callback = Recording()
    late = START + timedelta(days=4)

    assert deliver(hg.runtime, callback, late) == {"delivered": 1}


# Webhooks out, signed per Standard Webhooks, to a real HTTP server.


class Receiver(ThreadingHTTPServer):
    """Answers each POST with the next of ``answers`` (then 204), keeping what came."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers: list[int] = []
        self.got: list[tuple[dict[str, str], bytes]] = []
        #: When set, the first POST is kept waiting for it (``holding`` says it came).
        self.hold: threading.Event | None = None
        self.holding = threading.Event()
        #: How to answer: plainly, a byte at a time (``trickle``), or with a body too
        #: big to read (``huge``); ``stop`` ends either.
        self.manner = "plain"
        self.stop = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/healthgate?token=abc"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.got.append((dict(self.headers), body))
        if self.server.hold is not None and not self.server.holding.is_set():
            self.server.holding.set()
            self.server.hold.wait()
        status = self.server.answers.pop(0) if self.server.answers else 204
        if self.server.manner == "trickle":
            # The status line a byte at a time, each within any read timeout.
            for byte in b"HTTP/1.1 200 OK\r\n":
                if self.server.stop.wait(0.2):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            return
        self.send_response(status)
        if self.server.manner == "huge":
            # A gigabyte announced, a megabyte sent, the rest never: nothing reads it.
            self.send_header("content-length", str(10**9))
            self.end_headers()
            self.wfile.write(b"x" * 2**20)
            self.server.stop.wait(30)
            return
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()


def test_webhook_out_is_signed_and_verifies_with_the_secret(
    settings: Settings, receiver: Receiver
) -> None:
    # Real time: the receiver checks the signature's timestamp against its clock, so
    # everything finishes within seconds of it.
    client = Healthgate(settings.model_copy(update={"reconcile_after_seconds": 1.0}))
    client.sync_lines()
    try:
        start = utcnow()
        finish_one_of_each(client, start)
        now = start + timedelta(seconds=10)
        receiver.answers = [500]
        callback = WebhookCallback(receiver.url, SECRET)

        assert deliver(client.runtime, callback, now) == {"failed": 1}
        assert deliver(client.runtime, callback, now + timedelta(seconds=5)) == {
            "delivered": len(FINAL)
        }
        callback.close()

        verifier = Webhook(SECRET)
        bodies = [verifier.verify(body, headers) for headers, body in receiver.got]
        assert by_id([b["data"] for b in bodies[1:]]) == stored_outcomes(client)
        assert all(b["type"] == b["data"]["type"] for b in bodies)
        # The retry of the refused delivery carries the same webhook-id.
        refused = receiver.got[0][0]["webhook-id"]
        assert [h["webhook-id"] for h, _ in receiver.got[1:]].count(refused) == 1
        tampered = receiver.got[1][1].replace(b"message.", b"massage.")
        with pytest.raises(Exception, match="signature"):
            verifier.verify(tampered, receiver.got[1][0])
        assert "500" in rows(client.runtime)[0].last_error
    finally:
        client.close()


def test_a_webhook_answering_a_byte_at_a_time_fails_at_the_deadline(
    settings: Settings, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scheduler.outcomes import webhook

    monkeypatch.setattr(webhook, "_DEADLINE", 1.0)
    # The real clock (a frozen one never reaches a deadline).
    hg = Healthgate(settings)
    hg.sync_lines()
    hg.enqueue(to="+14155550142", body="hello")
    hg.drain()
    receiver.manner = "trickle"
    callback = WebhookCallback(receiver.url, SECRET)
    started = time.monotonic()
    try:
        assert deliver(hg.runtime, callback, utcnow()) == {"failed": 1}
        # Each byte came within any read timeout; the whole call was cut at the deadline.
        assert time.monotonic() - started < 3.0
        assert "no answer within 1 s" in (rows(hg.runtime)[0].last_error or "")
    finally:
        callback.close()
        hg.close()


def test_a_webhook_answer_body_is_never_read(hg: Healthgate, receiver: Receiver) -> None:
    one_sent(hg)
    receiver.manner = "huge"
    callback = WebhookCallback(receiver.url, SECRET)
    try:
        assert deliver(hg.runtime, callback, START) == {"delivered": 1}
    finally:
        callback.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert peak_mb < 900  # a gigabyte read would be past it


def test_the_webhook_target_shows_no_path_or_query() -> None:
    assert shown_url("https://hooks.example.com/T0/B0/secret?token=x") == (
        "https://hooks.example.com/…"
    )
    assert shown_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        ({"outcome_url": "ftp://example.com/x", "outcome_secret": SECRET}, "OUTCOME_URL"),
        ({"outcome_url": "https://example.com/x"}, "OUTCOME_SECRET"),
        ({"outcome_url": "https://example.com/x", "outcome_secret": "whsec_c2hvcnQ="}, "SECRET"),
        ({"outcome_task": "shop.outcome", "outcome_url": "https://example.com/x"}, "both set"),
        ({"outcome_task": "  "}, "OUTCOME_TASK is empty"),
        ({"outcome_task": "shop.outcome", "outcome_queue": "healthgate"}, "OUTCOME_QUEUE"),
        (
            {"outcome_url": "https://example.com/x", "outcome_secret": "whsec_" + "A" * 100},
            "OUTCOME_SECRET",
        ),
    ],
)
def test_callback_settings_are_refused_naming_the_setting(
    environment: dict[str, str], named: str
) -> None:
    with pytest.raises(ValidationError, match=named) as refused:
        Settings(**environment)
    assert "c2hvcnQ" not in str(refused.value).split("input_value")[0]


def test_status_and_explain_show_where_an_outcome_stands(hg: Healthgate) -> None:
    ids = finish_one_of_each(hg, START)
    assert hg.status()["outcomes"]["undelivered"] == len(FINAL)
    assert hg.status()["outcomes"]["oldest_undelivered"] is not None

    deliver(hg.runtime, Recording(), START + timedelta(minutes=1))

    shown = hg.explain(ids["sent"])["outcomes"]
    assert shown == [
        {
            "state": "sent",
            "at": shown[0]["at"],
            "attempts": 0,
            "delivered_at": (START + timedelta(minutes=1)).isoformat(),
            "abandoned_at": None,
            "next_attempt_at": None,
            "last_error": None,
        }
    ]
    assert json.dumps(hg.status()["outcomes"])


# What an operator sees: the CLI's status and explain, the status page.


def test_cli_status_and_explain_show_undelivered_outcomes(
    cli: Run,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEALTHGATE_OUTCOME_TASK", "shop.message_outcome")
    message_id = enqueue(cli, "+14155550123")
    assert cli("drain")[0] == 0

    code, shown = cli("status")
    assert code == 0, shown
    assert (
        "outcomes to task shop.message_outcome (queue celery): 1 undelivered (oldest finished "
        "2026-11-22T09:00:00+00:00)" in " ".join(shown.split())
    )
    code, shown = cli("explain", message_id)
    assert "outcome sent: not told yet, next try at 2026-11-22T09:00:00+00:00" in shown


def test_cli_refuses_a_bad_callback_setting_in_one_line_without_the_secret(
    cli: Run,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEALTHGATE_OUTCOME_URL", "https://app.example.com/hooks")
    monkeypatch.setenv("HEALTHGATE_OUTCOME_SECRET", "whsec_dG9vc2hvcnQ=")

    code, shown = cli("status")

    assert code == 2
    assert shown.strip().splitlines() == [
        "error: HEALTHGATE_OUTCOME_SECRET is not a webhook secret: whsec_ and the base64 "
        "of 24 to 64 random bytes"
    ]
    assert "dG9vc2hvcnQ" not in shown


def test_status_page_shows_the_callback_and_its_last_error_escaped(
    settings: Settings, hg: Healthgate
) -> None:
    one_sent(hg)
    failing = Recording()
    failing.deliver = lambda outcome, now: (_ for _ in ()).throw(  # type: ignore[method-assign]
        CallbackFailed("<script>alert(1)</script> answered 502")
    )
    deliver(hg.runtime, failing, START)
    configured = web_settings(settings).model_copy(
        update={"outcome_url": "https://app.example.com/hooks/x?token=secret"}
    )

    with reader(create_app(configured)) as client:
        page = client.get("/", headers={"Accept": "text/html"}).text

    section = page[page.index('<section id="outcomes">') :]
    section = section[: section.index("</section>")]
    assert "webhook https://app.example.com/…" in section
    assert "token=secret" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; answered 502" in section
    assert "<script>alert" not in page


def test_without_a_worker_listening_purge_forgets_outcomes_nobody_took(
    hg: Healthgate,
) -> None:
    # (No worker's delivery ran: only the command line was used.)
    finish_one_of_each(hg, START)

    assert hg.purge(timedelta(days=1), now=START + timedelta(days=2)).outcomes == len(FINAL)
    assert rows(hg.runtime) == []


def test_a_webhook_url_shows_no_path_in_repr_errors_or_http_logs() -> None:
    from scheduler.settings import settings_problem
    from tasks.logs import quiet

    url = "https://hooks.example.com/services/T0/B0/XOXSECRET?sig=abc"
    assert "XOXSECRET" not in repr(Settings(outcome_url=url, outcome_secret=SECRET))
    with pytest.raises(ValidationError) as refused:
        Settings(outcome_url="ftp://hooks.example.com/XOXSECRET", outcome_secret=SECRET)
    assert "XOXSECRET" not in settings_problem(refused.value)
    names = ("httpx", "httpcore", "celery.worker.strategy", "celery.app.trace", "alembic")
    levels = {name: logging.getLogger(name).level for name in names}
    beat_filters = list(logging.getLogger("celery.beat").filters)
    try:
        quiet(logging.INFO)
        assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        logging.getLogger("celery.beat").filters[:] = beat_filters
