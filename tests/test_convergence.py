"""Signals converge: any set of signals, delivered in any order (and some twice), leaves
the same state and the same gate decisions.

Each example draws signals for two recipients on two lines: inbound texts (keywords in
every form, and ordinary replies) under the three opt-out modes, chat health reports,
line reputation and status events, all through signed webhooks, and health set by hand.
It delivers them in three orders to fresh stores and compares what each store derived
and what the gate then decides for a new message on every chat.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from freezegun import freeze_time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from sqlalchemy import select

from policies.errors import InvalidInput
from scheduler.client import Healthgate
from scheduler.settings import Settings
from scheduler.signals.webhooks.inbox import LinqInbox
from scheduler.store.models import Chat, Line, OptOut
from tests.conftest import LINE_A, LINE_B, POLICY, START, TABLES, budget, examples
from tests.linq_events import SECRET, chat_created, chat_health_event, line_event, signed
from tests.linq_events import message_event as inbound_event

pytestmark = pytest.mark.timeout(budget(300))

RECIPIENTS = ("+14155550123", "+14155550124")
LINES = (LINE_A, LINE_B)
#: Every form a keyword comes in, and ordinary replies.
TEXTS = ("STOP", " STOP ", "stop", "OPT OUT", "opt-out", "OPTIN", " optin", "thanks!", "")
#: When the signals are delivered: a day after START, with the clock frozen.
NOW = START + timedelta(days=1)


def chat_id(line: str, to: str) -> str:
    return f"chat_{line[-3:]}_{to[-3:]}"


@dataclass(frozen=True)
class Signal:
    """One signal: a webhook body (posted as is, so a duplicate has the same event id),
    or health set by hand."""

    webhook: dict[str, Any] | None = None
    by_hand: tuple[str, str, str, int] | None = None


ago = st.integers(min_value=0, max_value=120)


@st.composite
def signals(draw: st.DrawFn, number: int) -> Signal:
    line, to = draw(st.sampled_from(LINES)), draw(st.sampled_from(RECIPIENTS))
    at = NOW - timedelta(minutes=draw(ago))
    event_id = f"evt_{number}"
    kind = draw(st.sampled_from(("inbound", "inbound", "chat", "line", "by_hand")))
    if kind == "inbound":
        text = draw(st.sampled_from(TEXTS))
        return Signal(inbound_event(line, to, at, text=text, chat_id=chat_id(line, to),
                                    event_id=event_id))  # fmt: skip
    if kind == "chat":
        status = draw(st.sampled_from(("HEALTHY", "AT_RISK", "CRITICAL", "OPTED_OUT")))
        return Signal(chat_health_event(line, status, at, chat_id=chat_id(line, to),
                                        event_id=event_id))  # fmt: skip
    if kind == "line":
        reputation = draw(st.sampled_from((None, "HEALTHY", "AT_RISK", "CRITICAL")))
        statuses = (None, "ACTIVE", "FLAGGED") if reputation else ("ACTIVE", "FLAGGED")
        status = draw(st.sampled_from(statuses))
        fields = {"new_reputation": reputation} if reputation else {}
        if status:
            fields["new_status"] = status
        return Signal(line_event(line, at, event_id=event_id, **fields))
    status = draw(st.sampled_from(("HEALTHY", "AT_RISK", "CRITICAL")))
    return Signal(by_hand=(line, to, status, draw(ago)))


@st.composite
def signal_sets(draw: st.DrawFn) -> list[Signal]:
    drawn = [draw(signals(n)) for n in range(draw(st.integers(min_value=1, max_value=8)))]
    # Providers deliver at least once: some signals come twice.
    again = draw(st.lists(st.sampled_from(drawn), max_size=2)) if drawn else []
    return drawn + [s for s in again if s.webhook is not None]


class Stores:
    """A fresh store per delivery: SQLite from a template, or PostgreSQL truncated."""

    def __init__(self, folder: Path, template: Path | None, postgres: str | None) -> None:
        self.folder, self.template, self.postgres = folder, template, postgres
        self.count = 0

    def fresh(self) -> str:
        if self.postgres is not None:
            engine = sqlalchemy.create_engine(self.postgres)
            with engine.begin() as conn:
                conn.exec_driver_sql(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
            engine.dispose()
            return self.postgres
        assert self.template is not None
        self.count += 1
        path = self.folder / f"store-{self.count}.db"
        shutil.copy(self.template, path)
        return f"sqlite:///{path}"


def deliver(stores: Stores, mode: str, ordered: list[Signal]) -> dict[str, Any]:
    """Deliver ``ordered`` to a fresh store; what it derived and what the gate decides."""
    policy = stores.folder / f"healthgate-{mode}.toml"
    policy.write_text(POLICY + f'\n[opt_out]\nmode = "{mode}"\n')
    settings = Settings(
        data_dir=stores.folder / "data",
        policy_file=policy,
        database_url=stores.fresh(),
        broker_url="memory://",
    )
    with freeze_time(NOW):
        hg = Healthgate(settings)
        try:
            hg.sync_lines()
            inbox = LinqInbox(hg.runtime, SecretStr(SECRET))
            # The chats exist, known by Linq's ids, before any of the signals.
            for line in LINES:
                for to in RECIPIENTS:
                    created = chat_created(line, to, "HEALTHY", START, chat_id=chat_id(line, to))
                    post(inbox, created)
            for signal in ordered:
                if signal.webhook is not None:
                    post(inbox, signal.webhook)
            # A person acts on what is known when they act: after the provider's signals.
            for signal in ordered:
                if signal.by_hand is not None:
                    line, to, status, minutes = signal.by_hand
                    refused = set_by_hand(hg, line, to, status, NOW - timedelta(minutes=minutes))
                    assert refused is None or "only an opt-in clears it" in refused
            return snapshot(hg)
        finally:
            hg.close()


def set_by_hand(hg: Healthgate, line: str, to: str, status: str, at: datetime) -> str | None:
    """Why setting the chat's health was refused, or None when it was taken."""
    try:
        hg.set_chat_health(line, to, status, updated_at=at)
    except InvalidInput as refused:
        return str(refused)
    return None


def post(inbox: LinqInbox, payload: dict[str, Any]) -> None:
    body, headers = signed(payload, NOW)
    receipt = inbox.receive(body, headers)
    assert receipt.status_code == 200, receipt.body


def snapshot(hg: Healthgate) -> dict[str, Any]:
    with hg.runtime.sessions() as session:
        numbers = {line.id: line.number for line in session.scalars(select(Line))}
        chats = {
            (numbers[c.line_id], c.recipient): (
                c.health,
                c.opted_out_at,
                c.reported_health,
                c.critical_at,
                c.healthy_at,
                c.last_inbound_at,
            )
            for c in session.scalars(select(Chat))
        }
        lines = {
            line.number: (line.reputation, line.status, line.reported_reputation)
            for line in session.scalars(select(Line))
        }
        opted_out = {o.recipient: o.opted_out_at for o in session.scalars(select(OptOut))}
    # What the gate does with a new message on every chat, once every signal is in.
    probes = {
        (line, to): hg.enqueue(to=to, body=f"probe {line} {to}", line=line)
        for line in LINES
        for to in RECIPIENTS
    }
    hg.drain()
    gate = {}
    for chat, message_id in probes.items():
        explained = hg.explain(message_id)
        gate[chat] = (explained["state"], explained["decisions"][-1]["code"])
    return {"chats": chats, "lines": lines, "opted_out": opted_out, "gate": gate}


def converge(stores: Stores, count: int) -> None:
    @settings(
        max_examples=examples(count),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        drawn=signal_sets(),
        mode=st.sampled_from(("exact", "linq", "strict")),
        data=st.data(),
    )
    def run(drawn: list[Signal], mode: str, data: st.DataObject) -> None:
        orders = [drawn, *(data.draw(st.permutations(drawn)) for _ in range(2))]
        first, *others = [deliver(stores, mode, list(order)) for order in orders]
        for other in others:
            assert other == first

    run()


@pytest.fixture
def sqlite_stores(tmp_path: Path, sqlite_template: Path) -> Stores:
    return Stores(tmp_path, sqlite_template, None)


def test_any_order_of_signals_gives_the_same_state_and_decisions_on_sqlite(
    sqlite_stores: Stores,
) -> None:
    converge(sqlite_stores, 40)


def test_any_order_of_signals_gives_the_same_state_and_decisions_on_postgresql(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url: str = request.getfixturevalue("postgres_database")
    converge(Stores(tmp_path, None, url), 15)
