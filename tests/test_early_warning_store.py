"""healthgate's own estimate in the store and in dispatch, on every store, with the
clock frozen: the signals counted, shadow mode writing down what it would change, and
enforce mode slowing a line before the provider says anything."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pydantic.v1  # noqa: F401  FastAPI imports it lazily, which fails once freezegun fakes date
import pytest
from fastapi.testclient import TestClient
from freezegun.api import FrozenDateTimeFactory
from sqlalchemy import select
from typer.testing import CliRunner

from policies.outcome import Failure
from scheduler.cli import app
from scheduler.client import Healthgate
from scheduler.dispatch.estimates import load_estimates
from scheduler.providers import SendFailed
from scheduler.settings import Settings
from scheduler.store.early_signals import chat_signals, line_signals
from scheduler.store.models import Chat, Line
from scheduler.web import create_app
from tests.conftest import LINE_A, START
from tests.test_dispatch import Refusing, use
from tests.web_client import BASE_URL, TOKEN, web_settings

Sends = Callable[[], list[dict[str, str]]]
BOB, CAROL, DAN, EVE, FAY = (f"+1415555012{i}" for i in range(3, 8))
FIVE = (BOB, CAROL, DAN, EVE, FAY)
ONE_LINE = f"""
[[lines]]
number = "{LINE_A}"
provider = "log"

[caps]
new_conversations_per_day = 10
"""


def with_mode(mode: str, **thresholds: object) -> str:
    extra = "".join(f"{key} = {value}\n" for key, value in thresholds.items())
    return f'{ONE_LINE}\n[early_warning]\nmode = "{mode}"\n{extra}'


def state(hg: Healthgate, message_id: str) -> str:
    return str(hg.explain(message_id)["state"])


def last(hg: Healthgate, message_id: str) -> dict[str, str]:
    decisions = [d for d in hg.explain(message_id)["decisions"] if d["action"] != "SENT"]
    decision: dict[str, str] = decisions[-1]
    return decision


@pytest.fixture
def policy_text(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", with_mode("shadow")))


def test_the_signals_are_counted_from_what_the_store_keeps(
    hg: Healthgate, clock: FrozenDateTimeFactory
) -> None:
    # Given five conversations started three hours ago, one answered, one opted out,
    # one the provider holds AT_RISK
    for recipient in FIVE:
        hg.enqueue(to=recipient, body="hello", line=LINE_A)
    hg.drain()
    clock.tick(timedelta(hours=3))
    hg.record_inbound(LINE_A, BOB, "yes please")
    hg.record_inbound(LINE_A, CAROL, "STOP")
    hg.set_chat_health(LINE_A, DAN, "AT_RISK")
    # and, a minute later, two more sends to Bob and one to Eve of one body
    clock.tick(timedelta(minutes=1))
    for recipient in (BOB, BOB, EVE):
        hg.enqueue(to=recipient, body="news", line=LINE_A)
    hg.drain()
    now = START + timedelta(hours=3, minutes=1)

    # When the signals are read
    runtime = hg.runtime
    with runtime.sessions.begin() as session:
        line = session.scalars(select(Line).where(Line.number == LINE_A)).one()
        lines = line_signals(session, [line], runtime.policy, now)[line.id]
        chats = {c.recipient: c for c in session.scalars(select(Chat))}
        by_id = {c.id: c for c in chats.values()}
        per_chat = chat_signals(session, by_id, runtime.policy, now)

    # Then the line counts five chats, five old enough to answer, one answered, five
    # new, one opted out, one AT_RISK; this hour two recipients, three sends, one body
    # to two of them
    assert (
        lines.chats,
        lines.answerable,
        lines.replied,
        lines.new_chats,
        lines.opted_out,
        lines.unhealthy,
        lines.new_conversations_day,
        lines.new_conversations_cap,
        lines.recipients_hour,
        lines.sends_hour,
        lines.rejections_hour,
        lines.same_body_hour,
    ) == (5, 5, 1, 5, 1, 1, 5, 10, 2, 3, 0, 2)
    # And Bob's chat has two sends unanswered of three, one reply; Eve's two unanswered
    bob, eve = per_chat[chats[BOB].id], per_chat[chats[EVE].id]
    assert (bob.unanswered, bob.sends, bob.replies) == (2, 3, 1)
    assert (eve.unanswered, eve.sends, eve.replies, eve.last_reply_at) == (2, 2, 0, None)
    assert eve.first_sent_at == START


def test_the_provider_refusals_of_the_last_hour_are_counted(
    hg: Healthgate, clock: FrozenDateTimeFactory
) -> None:
    use(hg, Refusing(SendFailed(Failure.RATE_LIMITED, "HTTP 429", timedelta(minutes=1))))
    hg.enqueue(to=BOB, body="one", line=LINE_A)
    hg.enqueue(to=CAROL, body="two", line=LINE_A)
    hg.drain()
    runtime = hg.runtime
    with runtime.sessions.begin() as session:
        line = session.scalars(select(Line).where(Line.number == LINE_A)).one()
        now = START + timedelta(minutes=30)
        assert line_signals(session, [line], runtime.policy, now)[line.id].rejections_hour == 2
        later = START + timedelta(minutes=61)
        assert line_signals(session, [line], runtime.policy, later)[line.id].rejections_hour == 0


def silent_streak(hg: Healthgate, clock: FrozenDateTimeFactory, count: int) -> list[str]:
    """``count`` messages to Bob, an hour apart, none answered."""
    ids = []
    for _ in range(count):
        ids.append(hg.enqueue(to=BOB, body=f"note {len(ids)}", line=LINE_A))
        hg.drain()
        clock.tick(timedelta(hours=1))
    return ids


@pytest.mark.parametrize(
    "policy_text",
    [with_mode("off", chat_unanswered_at_risk=2), with_mode("shadow", chat_unanswered_at_risk=2)],
    indirect=True,
    ids=["off", "shadow"],
)
def test_shadow_mode_writes_down_what_it_would_change_and_sends_the_same(
    hg: Healthgate, clock: FrozenDateTimeFactory, sends: Sends, policy_text: str
) -> None:
    # Given Bob left two messages unanswered (the estimate's AT_RISK streak is 2)
    ids = silent_streak(hg, clock, 3)

    # Then every message went, in either mode
    assert [state(hg, i) for i in ids] == ["sent"] * 3
    assert [s["message_id"] for s in sends()] == ids
    # And in shadow mode the third one's decision says the estimate would have held it
    reason = last(hg, ids[2])["reason"]
    if "shadow" in policy_text:
        assert reason == (
            "chat and line are fit to send; early warning (shadow) would THROTTLE "
            "(chat_at_risk): chat estimated AT_RISK (unanswered streak >= 2 over 168 h), "
            "provider says HEALTHY"
        )
        assert "early warning" not in last(hg, ids[1])["reason"]
    else:
        assert reason == "chat and line are fit to send"


@pytest.mark.parametrize(
    "policy_text",
    [with_mode("enforce", min_chats=5, reply_wait_hours=1)],
    indirect=True,
)
def test_enforce_slows_a_line_before_the_provider_says_anything(
    hg: Healthgate, clock: FrozenDateTimeFactory, sends: Sends
) -> None:
    # Given five conversations started two hours ago that nobody answered, and no word
    # from the provider (the line is HEALTHY as far as it says)
    for recipient in FIVE:
        hg.enqueue(to=recipient, body=f"hello {recipient}", line=LINE_A)
    hg.drain()
    clock.tick(timedelta(hours=2))
    assert hg.status()["lines"][0]["reputation"] == "HEALTHY"

    # When a sixth conversation is to start
    sixth = hg.enqueue(to="+14155550199", body="hello there", line=LINE_A)
    hg.drain()

    # Then the line runs at the AT_RISK pace (10 new conversations a day halved: the
    # five of the day fill it), and the decision names both statuses
    assert state(hg, sixth) == "throttled"
    decision = last(hg, sixth)
    assert decision["code"] == "cap_new_conversations_per_day"
    assert decision["reason"] == (
        f"line {LINE_A} reached new_conversations_per_day=5 (AT_RISK pace); early "
        "warning: line estimated AT_RISK (reply rate < 0.05 over 24 h), provider says "
        "HEALTHY"
    )
    assert len(sends()) == 5

    # And once two recipients answer, the estimate recovers and the line is as before:
    # a seventh conversation waits only for the day's cap of ten
    hg.record_inbound(LINE_A, BOB, "sure")
    hg.record_inbound(LINE_A, CAROL, "ok")
    clock.tick(timedelta(minutes=1))  # a worker reads its lines' signals once a minute
    seventh = hg.enqueue(to="+14155550198", body="hi again", line=LINE_A)
    hg.drain()
    assert state(hg, seventh) == "sent"


@pytest.mark.parametrize(
    "policy_text",
    [with_mode("shadow", min_chats=5, reply_wait_hours=1)],
    indirect=True,
)
def test_status_explain_and_the_page_show_the_estimate_beside_the_provider(
    hg: Healthgate,
    clock: FrozenDateTimeFactory,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given five conversations two hours old, none answered: the estimate says AT_RISK,
    # the provider nothing
    ids = [hg.enqueue(to=r, body=f"hello {r}", line=LINE_A) for r in FIVE]
    hg.drain()
    clock.tick(timedelta(hours=2))
    reason = "reply rate 0 < 0.05 over 24 h"

    # Then status (the API's JSON) shows both
    (line,) = hg.status()["lines"]
    assert (line["reputation"], line["health_estimate"]["status"]) == ("HEALTHY", "AT_RISK")
    assert [r["text"] for r in line["health_estimate"]["reasons"]] == [reason]
    assert hg.status()["early_warning"] == "shadow"
    # And explain shows the line's and the chat's, each as the provider and the estimate
    health = hg.explain(ids[0])["health"]
    assert health["line"]["provider"] == "HEALTHY"
    assert health["line"]["estimate"]["status"] == "AT_RISK"
    assert (health["chat"]["provider"], health["chat"]["estimate"]["status"]) == (
        "HEALTHY",
        "HEALTHY",
    )

    # And so do the CLI's status and explain
    for name, value in (
        ("DATABASE_URL", settings.database_url),
        ("POLICY_FILE", str(settings.policy_file)),
        ("DATA_DIR", str(settings.data_dir)),
        ("BROKER_URL", "memory://"),
    ):
        monkeypatch.setenv(f"HEALTHGATE_{name}", value)
    runner = CliRunner()
    shown = runner.invoke(app, ["status"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "estimate (shadow)" in shown.output
    assert f"{LINE_A}: estimate AT_RISK: {reason}" in shown.output
    explained = runner.invoke(app, ["explain", ids[0]], env={"COLUMNS": "200"})
    assert explained.exit_code == 0, explained.output
    assert (
        f"line: provider HEALTHY, healthgate's estimate AT_RISK ({reason}) [early warning shadow]"
        in explained.output
    )

    # And the status page
    web = create_app(web_settings(settings))
    with TestClient(web, base_url=BASE_URL, follow_redirects=False) as browser:
        browser.post("/login", data={"token": TOKEN})
        page = browser.get("/", params={"message": ids[0]}).text
    assert "estimate AT_RISK <small>(shadow)</small>" in page
    assert f'title="{reason.replace("<", "&lt;")}"' in page
    assert f"provider HEALTHY · estimate AT_RISK ({reason.replace('<', '&lt;')})" in page


class Store:
    """What a worker's estimates are kept by (its engine, in dispatch)."""


@pytest.mark.parametrize(
    "policy_text",
    [with_mode("enforce", min_chats=5, reply_wait_hours=1)],
    indirect=True,
)
def test_a_worker_reads_its_lines_signals_again_once_a_refresh_old(
    hg: Healthgate, clock: FrozenDateTimeFactory
) -> None:
    # Given a line whose five conversations of two hours ago are unanswered
    for recipient in FIVE:
        hg.enqueue(to=recipient, body=f"hello {recipient}", line=LINE_A)
    hg.drain()
    clock.tick(timedelta(hours=2))
    now = START + timedelta(hours=2)
    runtime, store = hg.runtime, Store()

    def line_status(at: datetime) -> str:
        with runtime.sessions.begin() as session:
            lines = list(session.scalars(select(Line)))
            found = load_estimates(session, lines, {}, runtime.policy, at, store)
            assert found is not None
            return found.line(lines[0].id).status.value

    assert line_status(now) == "AT_RISK"
    # When two recipients answer
    hg.record_inbound(LINE_A, BOB, "sure")
    hg.record_inbound(LINE_A, CAROL, "ok")

    # Then the reading is kept for refresh_seconds (60), and read again after
    assert line_status(now + timedelta(seconds=59)) == "AT_RISK"
    assert line_status(now + timedelta(seconds=60)) == "HEALTHY"
    # And a moment before the reading (another worker's clock) reads again
    assert line_status(now - timedelta(hours=1)) == "HEALTHY"
