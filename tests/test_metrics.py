"""``GET /metrics``: what it counts matches what the store holds, summed over processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pydantic.v1  # noqa: F401  FastAPI imports it lazily, which fails once freezegun fakes date
import pytest
from fastapi.testclient import TestClient
from freezegun.api import FrozenDateTimeFactory
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from policies.codes import Code
from policies.outcome import Failure
from policies.statuses import Action
from scheduler import metrics, runner
from scheduler.client import Healthgate
from scheduler.providers import Outbound, SendFailed, Sent
from scheduler.settings import Settings
from scheduler.store import transitions
from scheduler.store.models import WAITING_STATES, Chat, DecisionRecord, Line, Message
from scheduler.web import create_app
from tests.conftest import LINE_A, LINE_B, START
from tests.linq_events import message_event, signed
from tests.web_client import BASE_URL, TOKEN, reader, web_settings

BOB = "+14155550123"
CAROL = "+14155550124"
#: Every send to this recipient fails at the provider.
ERIN = "+14155550125"
FINISHED = {"sent", "dropped", "expired", "failed"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient) -> Samples:
    """Every sample of ``/metrics``, by name and labels."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def of(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The samples of ``name`` keyed by the values of ``labels``."""
    found: dict[tuple[str, ...], float] = {}
    for (sample, pairs), value in samples.items():
        if sample == name:
            found[tuple(dict(pairs)[label] for label in labels)] = value
    return found


def delta(
    after: dict[tuple[str, ...], float], before: dict[tuple[str, ...], float]
) -> dict[tuple[str, ...], float]:
    """What was counted between two scrapes (counters are the process's, not the test's)."""
    changed = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return {k: v for k, v in changed.items() if v}


class FailingFor:
    """The log provider, but every send to ERIN fails as a 503 would."""

    deduplicates = True

    def __init__(self, inner: object) -> None:
        self.inner = inner

    def send(self, message: Outbound) -> Sent:
        if message.recipient == ERIN:
            raise SendFailed(Failure.TRANSIENT, "HTTP 503")
        sent: Sent = self.inner.send(message)  # type: ignore[attr-defined]
        return sent

    def close(self) -> None:
        pass


@pytest.fixture
def client(settings: Settings, hg: Healthgate) -> Iterator[TestClient]:
    with reader(create_app(web_settings(settings))) as test_client:
        yield test_client


def stored_decisions(hg: Healthgate) -> dict[tuple[str, ...], float]:
    """Decisions in the store by action, code and line: each record and its repeats."""
    with hg.runtime.sessions() as session:
        rows = session.execute(
            select(
                DecisionRecord.action,
                DecisionRecord.code,
                func.coalesce(DecisionRecord.line, ""),
                func.count() + func.sum(DecisionRecord.repeats),
            ).group_by(DecisionRecord.action, DecisionRecord.code, DecisionRecord.line)
        ).all()
    return {(a, c, line): float(n) for a, c, line, n in rows}


def traffic(hg: Healthgate, client: TestClient, clock: FrozenDateTimeFactory) -> None:
    """Sends, throttles, a refused send, an opt-out by webhook and the drops it causes."""
    log = hg.runtime.providers.get("log")
    hg.runtime.providers._clients["log"] = FailingFor(log)  # type: ignore[assignment]
    # Seven to one recipient: five go in the minute (its cap), two are throttled.
    for i in range(7):
        hg.enqueue(to=BOB, body=f"hello {i}", line=LINE_A)
    hg.enqueue(to=ERIN, body="this one fails", line=LINE_B)
    hg.enqueue(to=CAROL, body="later", line=LINE_A, send_at=START + timedelta(hours=2))
    hg.enqueue(to=CAROL, body="new recipient, routed")
    hg.drain()
    clock.tick(timedelta(seconds=5))
    hg.drain()  # the throttled ones are not due yet: nothing to do
    clock.tick(timedelta(seconds=20))
    hg.drain()  # one of them goes, one is throttled again
    # CAROL writes STOP: what waits for her is dropped, and a later enqueue too.
    body, headers = signed(message_event(LINE_A, CAROL, START, text="STOP"), START)
    assert client.post("/webhooks/linq", content=body, headers=headers).status_code == 200
    assert client.post("/webhooks/linq", content=body, headers=headers).status_code == 200
    assert client.post("/webhooks/linq", content=b"{}", headers={}).status_code == 401
    hg.enqueue(to=CAROL, body="after STOP", line=LINE_A)
    hg.enqueue(to=BOB, body="due, not drained", line=LINE_B)
    clock.tick(timedelta(seconds=90))


def test_metrics_need_a_token(client: TestClient) -> None:
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    anonymous = TestClient(client.app, base_url=BASE_URL)
    response = anonymous.get("/metrics")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_the_metrics_token_opens_metrics_only(settings: Settings, hg: Healthgate) -> None:
    app = create_app(web_settings(settings, metrics_token=SecretStr("scraper-token-1")))
    with TestClient(app, base_url=BASE_URL) as scraper:
        opened = {"Authorization": "Bearer scraper-token-1"}
        assert scraper.get("/metrics", headers=opened).status_code == 200
        assert scraper.get("/lines", headers=opened).status_code == 401
        api = {"Authorization": f"Bearer {TOKEN}"}
        assert scraper.get("/metrics", headers=api).status_code == 200


def test_counters_and_levels_match_the_store(
    hg: Healthgate, client: TestClient, clock: FrozenDateTimeFactory
) -> None:
    before = scrape(client)

    traffic(hg, client, clock)
    after = scrape(client)

    counted = delta(
        of(after, "healthgate_decisions_total", "action", "code", "line"),
        of(before, "healthgate_decisions_total", "action", "code", "line"),
    )
    assert counted == stored_decisions(hg)
    # What the traffic was meant to show is there.
    assert counted[("THROTTLE", Code.CAP_SENDS_PER_RECIPIENT_PER_MINUTE, LINE_A)] >= 2
    drops = {k for k in counted if k[0] == "DROP"}
    assert drops, counted  # the queued message and the enqueue after STOP
    with hg.runtime.sessions() as session:
        messages = session.scalars(select(Message)).all()
        numbers = {line.id: line.number for line in session.scalars(select(Line))}
        chats = session.scalars(select(Chat)).all()
        lines = session.execute(select(Line.reputation, Line.status)).all()
    sent = [m for m in messages if m.state == "sent"]
    sent_by_line: dict[tuple[str, ...], float] = {}
    for m in sent:
        key = (numbers[m.line_id or 0], "log")
        sent_by_line[key] = sent_by_line.get(key, 0) + 1
    assert (
        delta(
            of(after, "healthgate_sends_total", "line", "provider"),
            of(before, "healthgate_sends_total", "line", "provider"),
        )
        == sent_by_line
    )
    assert delta(
        of(after, "healthgate_provider_errors_total", "line", "provider", "failure"),
        of(before, "healthgate_provider_errors_total", "line", "provider", "failure"),
    ) == {(LINE_B, "log", "TRANSIENT"): 1}
    assert delta(
        of(after, "healthgate_webhooks_total", "source", "outcome"),
        of(before, "healthgate_webhooks_total", "source", "outcome"),
    ) == {("linq", "applied"): 1, ("linq", "duplicate"): 1, ("linq", "unverified"): 1}
    # The histogram: one observation per sent message, of its sent_at - created_at.
    latency = delta(
        of(after, "healthgate_send_latency_seconds_count"),
        of(before, "healthgate_send_latency_seconds_count"),
    )
    assert latency == {(): len(sent)}
    total = delta(
        of(after, "healthgate_send_latency_seconds_sum"),
        of(before, "healthgate_send_latency_seconds_sum"),
    )
    expected = sum((m.sent_at - m.created_at).total_seconds() for m in sent)  # type: ignore[operator]
    assert total.get((), 0.0) == pytest.approx(expected)
    # The levels: read from the store at the scrape, compared with every row here.
    queue: dict[tuple[str, ...], float] = {}
    for m in messages:
        if m.state not in FINISHED:
            key = (m.state, numbers.get(m.line_id or 0, ""))
            queue[key] = queue.get(key, 0) + 1
    assert of(after, "healthgate_queue_messages", "state", "line") == queue
    unhealthy: dict[tuple[str, ...], float] = {}
    for c in chats:
        bucket = "OPTED_OUT" if c.opted_out_at is not None else c.health
        if bucket != "HEALTHY":
            unhealthy[(bucket, numbers[c.line_id])] = (
                unhealthy.get((bucket, numbers[c.line_id]), 0) + 1
            )
    assert of(after, "healthgate_unhealthy_chats", "health", "line") == unhealthy
    assert unhealthy  # CAROL's opt-out
    assert of(after, "healthgate_lines", "reputation", "status") == {
        (r, s): float(sum(1 for x in lines if tuple(x) == (r, s))) for r, s in set(lines)
    }
    now = START + timedelta(seconds=115)
    waiting = {s.value for s in WAITING_STATES}
    due = [m.not_before for m in messages if m.state in waiting and m.not_before <= now]  # type: ignore[operator]
    assert due
    assert of(after, "healthgate_oldest_due_age_seconds") == {
        (): (now - min(due)).total_seconds()  # type: ignore[type-var]
    }


def test_decisions_rolled_back_are_not_counted(hg: Healthgate, client: TestClient) -> None:
    message_id = hg.enqueue(to=BOB, body="hello", line=LINE_A)
    key = ("DEFER", Code.LINE_CRITICAL.value, LINE_A)

    def record(session: object) -> None:
        row = transitions.record(
            message_id, Action.DEFER, Code.LINE_CRITICAL, "x", START, line=LINE_A
        )
        transitions.write_decisions(session.connection(), [row])  # type: ignore[attr-defined]

    def rolled_back() -> None:
        with hg.runtime.sessions.begin() as session:
            record(session)
            raise RuntimeError("rolled back")

    def savepoint_rolled_back(session: Session) -> None:
        with session.begin_nested():
            record(session)
            raise RuntimeError("savepoint rolled back")

    before = of(scrape(client), "healthgate_decisions_total", "action", "code", "line")
    with pytest.raises(RuntimeError):
        rolled_back()
    with hg.runtime.sessions.begin() as session:
        record(session)  # kept
        with pytest.raises(RuntimeError):
            savepoint_rolled_back(session)
        with session.begin_nested():
            record(session)  # kept with the transaction
    after = of(scrape(client), "healthgate_decisions_total", "action", "code", "line")

    assert delta(after, before) == {key: 2}
    assert stored_decisions(hg)[key] == 2


WORKER = textwrap.dedent(
    """
    import sys
    from scheduler.client import Healthgate
    hg = Healthgate()
    hg.sync_lines()
    hg.enqueue(to=sys.argv[1], body="from a worker", line=sys.argv[2])
    hg.drain()
    hg.close()
    """
)


def test_counts_of_several_processes_add_up(
    settings: Settings, hg: Healthgate, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = metrics.prepare(settings.data_dir / "metrics")
    env = {
        **os.environ,
        metrics.MULTIPROC_ENV: str(folder),
        "HEALTHGATE_DATA_DIR": str(settings.data_dir),
        "HEALTHGATE_POLICY_FILE": str(settings.policy_file),
        "HEALTHGATE_DATABASE_URL": settings.database,
        "HEALTHGATE_BROKER_URL": "memory://",
    }
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, recipient, LINE_A], env=env)
        for recipient in (BOB, CAROL)
    ]
    assert [w.wait(timeout=60) for w in workers] == [0, 0]
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(folder))

    samples = scrape(client)

    assert of(samples, "healthgate_sends_total", "line", "provider") == {(LINE_A, "log"): 2}
    assert of(samples, "healthgate_send_latency_seconds_count") == {(): 2}
    assert of(samples, "healthgate_decisions_total", "action", "code", "line") == stored_decisions(
        hg
    )


def test_run_empties_the_folder_and_hands_it_to_every_process(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    folder = settings.data_dir / "metrics"
    folder.mkdir(parents=True, mode=0o755)
    (folder / "counter_123.db").write_bytes(b"old counts")
    (folder / "notes.txt").write_text("not ours")

    env = runner.environment(settings)

    assert Path(env[metrics.MULTIPROC_ENV]) == folder.resolve()
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert folder.stat().st_mode & 0o777 == 0o700


def test_a_worker_child_that_exits_leaves_no_live_gauge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    (tmp_path / "gauge_livesum_4242.db").write_bytes(b"")
    (tmp_path / "counter_4242.db").write_bytes(b"")

    metrics.process_exited(4242)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_4242.db"]


def test_outcome_deliveries_are_counted_by_result(client: TestClient, hg: Healthgate) -> None:
    from scheduler.outcomes import deliver
    from tests.test_outcomes import Recording

    hg.enqueue(to="+14155550150", body="one")
    hg.enqueue(to="+14155550151", body="two")
    hg.drain(START)
    before = of(scrape(client), "healthgate_outcome_deliveries_total", "result")
    callback = Recording()
    callback.down = True
    deliver(hg.runtime, callback, START)

    waiting = scrape(client)
    assert waiting[("healthgate_outcomes_undelivered", ())] == 2.0
    assert waiting[("healthgate_oldest_outcome_due_age_seconds", ())] == 0.0
    callback.down = False
    deliver(hg.runtime, callback, START + timedelta(minutes=1))

    after = of(scrape(client), "healthgate_outcome_deliveries_total", "result")
    assert delta(after, before) == {("failed",): 1.0, ("delivered",): 2.0}
    assert scrape(client)[("healthgate_outcomes_undelivered", ())] == 0.0
