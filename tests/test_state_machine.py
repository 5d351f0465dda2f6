"""A real client driven by random steps: never twice, never after STOP, nothing lost.

A ``RuleBasedStateMachine`` enqueues, changes health, records inbound messages, moves
the frozen clock and drains, on a real store with the ``log`` provider; after every step
the provider's own send log and the store are checked against a model of what was said.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy
from freezegun import freeze_time
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select

from scheduler.client import Healthgate
from scheduler.providers.log import read_send_log
from scheduler.runtime import utcnow
from scheduler.settings import Settings
from scheduler.store.models import FINAL_STATES, Message, MessageState
from tests.conftest import HYPOTHESIS_PROFILE, LINE_A, LINE_B, POLICY, START, TABLES, examples

pytestmark = pytest.mark.timeout(120)

RECIPIENTS = ("+14155550123", "+14155550124", "+14155550125")
LINES = (LINE_A, LINE_B)
KEYS = ("order-1", "order-2", "order-3")
# A failing run of 30 steps on a real store takes minutes to shrink: it is reported as
# found (each step is printed), and shrunk only under the thorough profile.
PHASES = (
    tuple(Phase)
    if HYPOTHESIS_PROFILE == "thorough"
    else (Phase.explicit, Phase.reuse, Phase.generate)
)
FINAL = {state.value for state in FINAL_STATES}
KNOWN = {state.value for state in MessageState}

# Small caps, so throttles, reroutes and the AT_RISK rules happen within a few steps.
MACHINE_POLICY = (
    POLICY
    + """
[caps]
sends_per_minute = 3
new_conversations_per_day = 4
distinct_recipients_per_hour = 2
sends_per_day = 12
sends_per_recipient_per_minute = 2

[chat]
critical_max_hold_hours = 2

[line]
at_risk_takes_new_recipients = true
recovery_ramp_hours = 1

[content]
same_body_max_recipients_per_hour = 2
"""
)


class Store:
    """Where one machine keeps its state: a fresh database per run."""

    def __init__(self, template: Path | None, postgres_url: str | None) -> None:
        self.template = template
        self.postgres_url = postgres_url

    def fresh(self, folder: Path) -> str:
        if self.postgres_url is None:
            assert self.template is not None
            path = folder / "healthgate.db"
            shutil.copy(self.template, path)
            return f"sqlite:///{path}"
        engine = sqlalchemy.create_engine(self.postgres_url)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
        engine.dispose()
        return self.postgres_url


class SendPipeline(RuleBasedStateMachine):
    """Random traffic against one client; the model says what may and may not go out."""

    store: Store

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="healthgate-machine-"))
        self.clock = freeze_time(START)
        self.frozen = self.clock.start()
        policy = self.folder / "healthgate.toml"
        policy.write_text(MACHINE_POLICY)
        self.settings = Settings(
            data_dir=self.folder / "data",
            policy_file=policy,
            database_url=self.store.fresh(self.folder),
            broker_url="memory://",
        )
        self.hg = Healthgate(self.settings)
        self.hg.sync_lines()
        self.ids: set[str] = set()
        self.by_key: dict[str, str] = {}
        self.final: dict[str, str] = {}
        self.seen_sends = 0
        #: Each message's send_at and expires_at: it may go out only between them.
        self.window: dict[str, tuple[datetime | None, datetime | None]] = {}
        # The model: opt-outs per chat (line, recipient) and per recipient (account
        # scope), and which lines are paused.
        self.opted_chats: set[tuple[str, str]] = set()
        self.opted_recipients: set[str] = set()
        self.paused: dict[str, set[str]] = {line: set() for line in LINES}

    def teardown(self) -> None:
        self.hg.close()
        self.clock.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- the steps --------------------------------------------------------------

    @initialize()
    def nothing_sent_yet(self) -> None:
        assert read_send_log(self.settings.send_log_path) == []

    @rule(
        to=st.sampled_from(RECIPIENTS),
        line=st.sampled_from((None, *LINES)),
        key=st.one_of(st.none(), st.sampled_from(KEYS)),
        body=st.sampled_from(("Your code is 1234", "Your code is 98", "See you at 5")),
        expires_in=st.one_of(st.none(), st.integers(min_value=1, max_value=4 * 3600)),
        send_in=st.one_of(st.none(), st.integers(min_value=0, max_value=3600)),
    )
    def enqueue(
        self,
        to: str,
        line: str | None,
        key: str | None,
        body: str,
        expires_in: int | None,
        send_in: int | None,
    ) -> None:
        now = utcnow()
        send_at = None if send_in is None else now + timedelta(seconds=send_in)
        expires_at = None
        if expires_in is not None:
            expires_at = (send_at or now) + timedelta(seconds=expires_in)
        message_id = self.hg.enqueue(
            to=to,
            body=body,
            line=line,
            idempotency_key=key,
            send_at=send_at,
            expires_at=expires_at,
        )
        if key is not None:
            # The same key always gives back the first message, never a second one.
            assert self.by_key.setdefault(key, message_id) == message_id
        self.ids.add(message_id)
        self.window.setdefault(message_id, (send_at, expires_at))

    @rule(line=st.sampled_from(LINES), to=st.sampled_from(RECIPIENTS))
    def stop(self, line: str, to: str) -> None:
        self.hg.record_inbound(line, to, "STOP")
        self.opted_chats.add((line, to))
        self.opted_recipients.add(to)

    @rule(line=st.sampled_from(LINES), to=st.sampled_from(RECIPIENTS))
    def opt_in(self, line: str, to: str) -> None:
        self.hg.record_inbound(line, to, "OPTIN")
        if (line, to) in self.opted_chats or to in self.opted_recipients:
            self.opted_chats.discard((line, to))
            self.opted_recipients.discard(to)

    @rule(line=st.sampled_from(LINES), to=st.sampled_from(RECIPIENTS))
    def reply(self, line: str, to: str) -> None:
        # An ordinary reply never clears an opt-out under the default (exact) mode.
        self.hg.record_inbound(line, to, "thanks, see you then")

    @rule(
        line=st.sampled_from(LINES),
        to=st.sampled_from(RECIPIENTS),
        health=st.sampled_from(("HEALTHY", "AT_RISK", "CRITICAL", "OPTED_OUT")),
    )
    def chat_health(self, line: str, to: str, health: str) -> None:
        self.hg.set_chat_health(line, to, health)
        if health == "OPTED_OUT":
            self.opted_chats.add((line, to))
            self.opted_recipients.add(to)
        elif (line, to) in self.opted_chats:
            # Any other status set on an opted-out chat is an opt-in.
            self.opted_chats.discard((line, to))
            self.opted_recipients.discard(to)

    @rule(
        line=st.sampled_from(LINES),
        status=st.sampled_from(("HEALTHY", "AT_RISK", "CRITICAL", "ACTIVE", "FLAGGED")),
    )
    def line_health(self, line: str, status: str) -> None:
        self.hg.set_line_health(line, status)
        paused = self.paused[line]
        if status in ("CRITICAL", "FLAGGED"):
            paused.add(status)
        elif status in ("HEALTHY", "AT_RISK"):
            paused.discard("CRITICAL")
        else:
            paused.discard("FLAGGED")

    @rule(seconds=st.sampled_from((1, 20, 61, 600, 3601, 7201, 86_401)))
    def tick(self, seconds: int) -> None:
        self.frozen.tick(timedelta(seconds=seconds))

    @rule()
    def drain(self) -> None:
        self.hg.drain()
        # Every send of this drain happened now, under the health the model holds now.
        sends = read_send_log(self.settings.send_log_path)
        for record in sends[self.seen_sends :]:
            line, to = record["line"], record["recipient"]
            assert not self.paused[line], f"sent on {line} while {self.paused[line]}: {record}"
            assert (line, to) not in self.opted_chats, f"sent after the chat's STOP: {record}"
            assert to not in self.opted_recipients, f"sent after the recipient's STOP: {record}"
            send_at, expires_at = self.window[record["message_id"]]
            at = datetime.fromisoformat(record["at"])
            assert send_at is None or at >= send_at, f"sent before send_at: {record}"
            assert expires_at is None or at < expires_at, f"sent after expires_at: {record}"
        self.seen_sends = len(sends)

    @precondition(lambda self: bool(self.ids))
    @rule(data=st.data())
    def explain(self, data: st.DataObject) -> None:
        message_id = data.draw(st.sampled_from(sorted(self.ids)))
        assert self.hg.explain(message_id)["decisions"]

    # -- what must hold after every step ----------------------------------------

    @invariant()
    def each_message_is_sent_at_most_once(self) -> None:
        sends = read_send_log(self.settings.send_log_path)
        twice = [m for m, n in Counter(r["message_id"] for r in sends).items() if n > 1]
        assert twice == []
        assert all(r["idempotency_key"] == r["message_id"] for r in sends)

    @invariant()
    def nothing_is_lost_and_final_states_stay_final(self) -> None:
        with self.hg.runtime.sessions() as session:
            rows = session.execute(select(Message.id, Message.state, Message.last_code)).all()
        states = {message_id: (state, code) for message_id, state, code in rows}
        assert self.ids <= set(states)
        for message_id, (state, code) in states.items():
            assert state in KNOWN
            assert code, f"{message_id} is {state} without a reason"
            if message_id in self.final:
                assert state == self.final[message_id], f"{message_id} left its final state"
            elif state in FINAL:
                self.final[message_id] = state

    @invariant()
    def the_send_log_and_the_sent_messages_agree(self) -> None:
        logged = {r["message_id"] for r in read_send_log(self.settings.send_log_path)}
        with self.hg.runtime.sessions() as session:
            sent = set(session.scalars(select(Message.id).where(Message.state == "sent")))
        assert logged == sent


def run(store: Store, count: int) -> None:
    machine = type("Pipeline", (SendPipeline,), {"store": store})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples(count),
            stateful_step_count=30,
            deadline=None,
            phases=PHASES,
        ),
    )


def test_random_traffic_never_sends_twice_after_stop_on_a_paused_line_or_out_of_time(
    sqlite_template: Path,
) -> None:
    run(Store(sqlite_template, None), 40)


def test_random_traffic_keeps_its_promises_on_postgresql(
    request: pytest.FixtureRequest,
) -> None:
    url: str = request.getfixturevalue("postgres_database")
    run(Store(None, url), 5)
