"""A real client driven by random steps: never twice, never after STOP, nothing lost.

A ``RuleBasedStateMachine`` enqueues, changes health, records inbound messages (some of
them late, dated before what arrived earlier), moves the frozen clock and drains, on a
real store with the ``log`` provider. After every step the store's derived state is
compared with ``Model``, a small model of SPEC sections 2 and 3 written here and sharing
no code with healthgate, and every send in the provider's own log is checked against it.
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

from policies.errors import IdempotencyConflict, InvalidInput
from scheduler.client import Healthgate
from scheduler.intake.messages import NewMessage
from scheduler.providers.log import read_send_log
from scheduler.runtime import utcnow
from scheduler.settings import Settings
from scheduler.store.models import (
    FINAL_STATES,
    Chat,
    DecisionRecord,
    Line,
    Message,
    MessageState,
    OptOut,
    Outcome,
)
from tests.conftest import (
    HYPOTHESIS_PROFILE,
    LINE_A,
    LINE_B,
    POLICY,
    START,
    TABLES,
    budget,
    examples,
)

pytestmark = pytest.mark.timeout(budget(120))

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


#: How late a signal may arrive: it is dated this many seconds before it is delivered.
LATE = st.sampled_from((0, 0, 0, 30, 600, 3600))


class Model:
    """SPEC sections 2 and 3, as facts with times: what the gate must see.

    - An opt-out covers the recipient on every line (account scope); only an opt-in
      later in event time clears it (in the default mode an ordinary reply does not);
      at one instant the opt-out wins.
    - A CRITICAL chat or line is paused until a *later* HEALTHY; AT_RISK in between does
      not end it; at one instant the worse report wins.
    - A FLAGGED line is paused until a later ACTIVE.
    - A person may not set the health of a chat whose recipient is opted out.
    """

    def __init__(self) -> None:
        self.consent: dict[str, list[tuple[datetime, bool]]] = {}
        self.chat_reports: dict[tuple[str, str], list[tuple[datetime, str]]] = {}
        self.line_reports: dict[str, list[tuple[datetime, str]]] = {}
        self.line_status: dict[str, list[tuple[datetime, str]]] = {}

    def said(self, to: str, at: datetime, opted_out: bool) -> None:
        self.consent.setdefault(to, []).append((at, opted_out))

    def opted_out(self, to: str) -> bool:
        facts = self.consent.get(to, [])
        # Latest by time; at one instant True (opted out) sorts last.
        return bool(facts) and max(facts)[1]

    @staticmethod
    def _paused(reports: list[tuple[datetime, str]]) -> bool:
        critical = [at for at, status in reports if status == "CRITICAL"]
        healthy = [at for at, status in reports if status == "HEALTHY"]
        return bool(critical) and (not healthy or max(healthy) <= max(critical))

    @staticmethod
    def _latest(reports: list[tuple[datetime, str]], severity: dict[str, int]) -> str | None:
        if not reports:
            return None
        return max(reports, key=lambda r: (r[0], severity[r[1]]))[1]

    def chat_health(self, line: str, to: str) -> str:
        reports = self.chat_reports.get((line, to), [])
        if self._paused(reports):
            return "CRITICAL"
        return self._latest(reports, {"HEALTHY": 0, "AT_RISK": 1, "CRITICAL": 2}) or "HEALTHY"

    def line_reputation(self, line: str) -> str:
        reports = self.line_reports.get(line, [])
        if self._paused(reports):
            return "CRITICAL"
        return self._latest(reports, {"HEALTHY": 0, "AT_RISK": 1, "CRITICAL": 2}) or "HEALTHY"

    def line_runtime(self, line: str) -> str:
        return self._latest(self.line_status.get(line, []), {"ACTIVE": 0, "FLAGGED": 2}) or "ACTIVE"

    def line_paused(self, line: str) -> bool:
        return self.line_reputation(line) == "CRITICAL" or self.line_runtime(line) == "FLAGGED"


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
        #: What each key was first given with: (to, body, line, send_at).
        self.content: dict[str, tuple[str, str, str | None, datetime | None]] = {}
        self.final: dict[str, str] = {}
        self.seen_sends = 0
        #: Each message's send_at and expires_at: it may go out only between them.
        self.window: dict[str, tuple[datetime | None, datetime | None]] = {}
        self.model = Model()
        self.max_hold = timedelta(hours=2)  # the policy's critical_max_hold_hours

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
        message = NewMessage(to, body, line, None, key, send_at, expires_at)
        first = self.content.get(key) if key is not None else None
        if first is not None and not _same_request(first, (to, body, line, send_at)):
            # A key reused for other content is refused, and nothing is stored.
            with pytest.raises(IdempotencyConflict):
                self.hg.enqueue_many([message])
            return
        message_id = self.hg.enqueue_many([message])[0]
        if key is not None:
            # The same key and content always give back the first message, never a
            # second one.
            assert self.by_key.setdefault(key, message_id) == message_id
            self.content.setdefault(key, (to, body, line, send_at))
        self.ids.add(message_id)
        self.window.setdefault(message_id, (send_at, expires_at))

    @rule(line=st.sampled_from(LINES), to=st.sampled_from(RECIPIENTS), late=LATE)
    def stop(self, line: str, to: str, late: int) -> None:
        at = utcnow() - timedelta(seconds=late)
        self.hg.record_inbound(line, to, "STOP", at=at)
        self.model.said(to, at, opted_out=True)

    @rule(line=st.sampled_from(LINES), to=st.sampled_from(RECIPIENTS), late=LATE)
    def opt_in(self, line: str, to: str, late: int) -> None:
        at = utcnow() - timedelta(seconds=late)
        self.hg.record_inbound(line, to, "OPTIN", at=at)
        self.model.said(to, at, opted_out=False)

    @rule(line=st.sampled_from(LINES), to=st.sampled_from(RECIPIENTS), late=LATE)
    def reply(self, line: str, to: str, late: int) -> None:
        # An ordinary reply never clears an opt-out under the default (exact) mode.
        at = utcnow() - timedelta(seconds=late)
        self.hg.record_inbound(line, to, "thanks, see you then", at=at)

    @rule(
        line=st.sampled_from(LINES),
        to=st.sampled_from(RECIPIENTS),
        health=st.sampled_from(("HEALTHY", "AT_RISK", "CRITICAL", "OPTED_OUT")),
        late=LATE,
    )
    def chat_health(self, line: str, to: str, health: str, late: int) -> None:
        at = utcnow() - timedelta(seconds=late)
        if health != "OPTED_OUT" and self.model.opted_out(to):
            # Only an opt-in clears an opt-out: a person setting health is refused.
            with pytest.raises(InvalidInput, match="only an opt-in clears it"):
                self.hg.set_chat_health(line, to, health, updated_at=at)
            return
        self.hg.set_chat_health(line, to, health, updated_at=at)
        if health == "OPTED_OUT":
            self.model.said(to, at, opted_out=True)
        else:
            self.model.chat_reports.setdefault((line, to), []).append((at, health))

    @rule(
        line=st.sampled_from(LINES),
        status=st.sampled_from(("HEALTHY", "AT_RISK", "CRITICAL", "ACTIVE", "FLAGGED")),
        late=LATE,
    )
    def line_health(self, line: str, status: str, late: int) -> None:
        at = utcnow() - timedelta(seconds=late)
        self.hg.set_line_health(line, status, updated_at=at)
        if status in ("ACTIVE", "FLAGGED"):
            self.model.line_status.setdefault(line, []).append((at, status))
        else:
            self.model.line_reports.setdefault(line, []).append((at, status))

    @rule(seconds=st.sampled_from((1, 20, 61, 600, 3601, 7201, 86_401)))
    def tick(self, seconds: int) -> None:
        self.frozen.tick(timedelta(seconds=seconds))

    @rule()
    def drain(self) -> None:
        self.hg.drain()
        # Every send of this drain happened now, under the health the model holds now.
        sends = read_send_log(self.settings.send_log_path)
        model = self.model
        for record in sends[self.seen_sends :]:
            line, to = record["line"], record["recipient"]
            assert not model.line_paused(line), f"sent on a paused line: {record}"
            assert model.chat_health(line, to) != "CRITICAL", f"sent to a paused chat: {record}"
            assert not model.opted_out(to), f"sent after the recipient's STOP: {record}"
            send_at, expires_at = self.window[record["message_id"]]
            at = datetime.fromisoformat(record["at"])
            assert send_at is None or at >= send_at, f"sent before send_at: {record}"
            assert expires_at is None or at < expires_at, f"sent after expires_at: {record}"
            held = self.first_hold(record["message_id"])
            assert held is None or at < held + self.max_hold, f"sent past the max hold: {record}"
        self.seen_sends = len(sends)

    def first_hold(self, message_id: str) -> datetime | None:
        """When a health hold (a DEFER other than waiting for a line) first held it."""
        with self.hg.runtime.sessions() as session:
            return session.scalar(
                select(DecisionRecord.at)
                .where(
                    DecisionRecord.message_id == message_id,
                    DecisionRecord.action == "DEFER",
                    DecisionRecord.code != "no_line",
                )
                .order_by(DecisionRecord.id)
                .limit(1)
            )

    @precondition(lambda self: bool(self.ids))
    @rule(data=st.data())
    def explain(self, data: st.DataObject) -> None:
        message_id = data.draw(st.sampled_from(sorted(self.ids)))
        assert self.hg.explain(message_id)["decisions"]

    # -- what must hold after every step ----------------------------------------

    @invariant()
    def the_store_sees_what_the_model_says(self) -> None:
        with self.hg.runtime.sessions() as session:
            lines = {line.id: line for line in session.scalars(select(Line))}
            chats = session.scalars(select(Chat)).all()
            account = set(session.scalars(select(OptOut.recipient)))
            for line in lines.values():
                assert (line.reputation, line.status) == (
                    self.model.line_reputation(line.number),
                    self.model.line_runtime(line.number),
                ), line.number
            for chat in chats:
                number = lines[chat.line_id].number
                assert chat.health == self.model.chat_health(number, chat.recipient), (
                    number,
                    chat.recipient,
                )
                # What the gate sees: the chat's opt-out, or the recipient's over the account.
                opted_out = chat.opted_out_at is not None or chat.recipient in account
                assert opted_out == self.model.opted_out(chat.recipient), chat.recipient

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
    def each_finished_message_is_in_the_outbox_once_as_stored(self) -> None:
        with self.hg.runtime.sessions() as session:
            outbox = session.execute(
                select(Outcome.message_id, Outcome.state, Outcome.code, Outcome.reason)
            ).all()
            finished = session.execute(
                select(Message.id, Message.state, Message.last_code, Message.last_reason).where(
                    Message.state.in_(FINAL)
                )
            ).all()
        # No message here leaves a final state, so each is told of once, and nothing
        # unfinished is told of at all.
        assert Counter(row[0] for row in outbox) == Counter(row[0] for row in finished)
        assert {row[0]: tuple(row[1:]) for row in outbox} == {
            row[0]: tuple(row[1:]) for row in finished
        }

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


def _same_request(
    first: tuple[str, str, str | None, datetime | None],
    again: tuple[str, str, str | None, datetime | None],
) -> bool:
    """Whether a repeat asks for the first message of its key: the same recipient, body
    and send_at, and the same line when it names one."""
    (to, body, line, send_at), (to2, body2, line2, send_at2) = first, again
    return (to, body, send_at) == (to2, body2, send_at2) and line2 in (None, line)
