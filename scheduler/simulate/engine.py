"""The simulation: a trace through healthgate's own intake, signals and dispatch, on a
store of its own, with a simulated clock and a simulated provider.

Nothing here decides about a message. Enqueues go through ``intake.enqueue``, inbound
messages and health reports through ``signals``, and each tick claims and dispatches
through ``dispatch.claim_due`` and ``dispatch.dispatch_claimed``: the gate, router, caps,
holds, ramp and content rules that production runs. Only the clock and the provider
are the simulation's.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select, text
from sqlalchemy.orm import Session

from policies.changes import fingerprint, normalised
from policies.config import Policy
from policies.errors import HealthgateError
from policies.keywords import Inbound as Kind
from policies.keywords import classify
from policies.statuses import LineStatus
from scheduler.dispatch import claim_due, dispatch_claimed
from scheduler.intake.enqueue import enqueue_many
from scheduler.intake.messages import NewMessage
from scheduler.providers import Outbound, Providers, Sent
from scheduler.runtime import Loaded, PolicySource, Runtime
from scheduler.settings import Settings
from scheduler.signals import consent, health
from scheduler.simulate.limiter import SimulatedLimiter
from scheduler.simulate.outcome import Outcome, SameDay, read_hour
from scheduler.simulate.provider import Flag, WorldModel
from scheduler.simulate.trace import ChatReport, Enqueue, Event, Inbound, LineReport, when
from scheduler.store.db import create_db_engine, session_factory, upgrade
from scheduler.store.lines import sync_lines
from scheduler.store.models import WAITING_SQL, Message

#: Who the simulated signals are from, in the simulated store's records.
SOURCE = "simulation"
#: The provider name every simulated line sends through.
SIMULATED = "log"


@dataclass
class Clock:
    """The simulated time: what ``Runtime.clock`` reads while dispatch runs."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


class FixedPolicy(PolicySource):
    """One policy for the whole run, never reloaded."""

    def __init__(self, policy: Policy) -> None:
        super().__init__(Path("simulated.toml"))
        normal = normalised(policy)
        self._fixed = Loaded(policy, normal, fingerprint(normal), 0)

    def loaded(self) -> Loaded:
        return self._fixed


class SimulatedProvider:
    """The provider every line sends through: the world's model when there is one,
    accepting every send otherwise (a trace from history has its own signals)."""

    deduplicates = True

    def __init__(self, clock: Clock, model: WorldModel | None, sent: Callable[[Outbound], None]):
        self.clock, self.model, self._sent = clock, model, sent

    def send(self, message: Outbound) -> Sent:
        answer = self.model.send(message, self.clock.now) if self.model else Sent()
        self._sent(message)
        return answer

    def close(self) -> None:
        pass


@dataclass
class Scenario:
    """What a run needs besides the policy: its span, tick, trace and world."""

    start: datetime
    end: datetime
    tick: timedelta
    #: A fresh trace each call (each policy reads the same events).
    trace: Callable[[], Iterator[Event]]
    #: A fresh provider model each call, or None for a trace that carries its signals.
    model: Callable[[Callable[[Flag], None]], WorldModel] | None = None
    #: Messages claimed and dispatched a batch.
    batch: int = 400


@dataclass
class Simulation:
    """One policy through one scenario, on a store of its own under ``folder``."""

    name: str
    policy: Policy
    scenario: Scenario
    folder: Path
    progress: Callable[[float], None] = field(default=lambda share: None)

    def run(self) -> Outcome:
        began = time.perf_counter()
        scenario = self.scenario
        outcome = Outcome(self.name, scenario.start)
        outcome.grow()
        # No tick has run yet: the first one is at the start.
        clock = Clock(scenario.start - scenario.tick)
        same_day = SameDay()

        def flagged(flag: Flag) -> None:
            if flag.recipient is None:
                hours = (flag.at - scenario.start).total_seconds() / 3600
                outcome.line_flags.append((hours, flag.line, flag.status))
            else:
                outcome.series(outcome.chat_flags, flag.status)[outcome.hour_of(flag.at)] += 1

        def sent(message: Outbound) -> None:
            same_day.sent(message.recipient, clock.now, outcome.hour_of(clock.now))

        model = scenario.model(flagged) if scenario.model else None
        runtime = self._runtime(clock, SimulatedProvider(clock, model, sent))
        # A simulated refusal is a figure of the report, not a warning to the operator.
        quiet = logging.getLogger("scheduler")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            self._loop(runtime, clock, model, outcome, same_day)
        finally:
            quiet.setLevel(level)
            runtime.close()
        outcome.wall_seconds = time.perf_counter() - began
        return outcome

    def _runtime(self, clock: Clock, provider: SimulatedProvider) -> Runtime:
        self.folder.mkdir(parents=True, exist_ok=True)
        database = self.folder / f"{self.name}.sqlite"
        database.unlink(missing_ok=True)
        settings = Settings(
            data_dir=self.folder,
            database_url=f"sqlite:///{database}",
            redis_url=None,
            providers={},
            dispatch_batch=self.scenario.batch,
            claim_limit=self.scenario.batch,
        )
        engine = create_db_engine(settings.database)

        @event.listens_for(engine, "connect")
        def _fast(dbapi_connection: Any, _record: Any) -> None:
            # A simulated store is thrown away after the run: no need to survive a crash.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA synchronous=OFF")
            cursor.close()

        upgrade(engine)
        runtime = Runtime(
            settings=settings,
            engine=engine,
            sessions=session_factory(engine),
            policies=FixedPolicy(self.policy),
            providers=Providers(settings, {SIMULATED: provider}),
            limiter=SimulatedLimiter(),
            clock=clock,
        )
        with runtime.sessions.begin() as session:
            sync_lines(session, self.policy, self.scenario.start)
        return runtime

    def _loop(
        self,
        runtime: Runtime,
        clock: Clock,
        model: WorldModel | None,
        outcome: Outcome,
        same_day: SameDay,
    ) -> None:
        scenario = self.scenario
        trace = _Peek(scenario.trace())
        hour_end = scenario.start + timedelta(hours=1)
        span = (scenario.end - scenario.start).total_seconds()
        while True:
            due = _next_due(runtime)
            upcoming = [
                t for t in (trace.at(), model.next_at() if model else None, due) if t is not None
            ]
            moment = min([*upcoming, hour_end])
            tick = _tick_at(moment, scenario.start, scenario.tick, clock.now)
            if tick < scenario.end:
                heard = self._apply(runtime, trace, model, tick, outcome, same_day)
                clock.now = tick
                if heard or (due is not None and due <= tick):
                    self._dispatch(runtime, tick)
                self.progress((tick - scenario.start).total_seconds() / span)
            # An hour is read once everything before its end is written.
            while hour_end <= min(tick, scenario.end):
                self._close_hour(runtime, outcome, hour_end)
                hour_end += timedelta(hours=1)
            if tick >= scenario.end:
                if hour_end > scenario.end:
                    # The last hour, cut short by the end.
                    self._close_hour(runtime, outcome, hour_end)
                break
        with runtime.reads() as session:
            outcome.totals["waiting_at_end"] = (
                session.scalar(select(func.count()).select_from(Message).where(text(WAITING_SQL)))
                or 0
            )
        self.progress(1.0)

    def _close_hour(self, runtime: Runtime, outcome: Outcome, end: datetime) -> None:
        with runtime.reads() as session:
            read_hour(session, outcome, outcome.hours - 1, end - timedelta(hours=1))
        if end < self.scenario.end:
            outcome.grow()

    def _apply(
        self,
        runtime: Runtime,
        trace: _Peek,
        model: WorldModel | None,
        tick: datetime,
        outcome: Outcome,
        same_day: SameDay,
    ) -> int:
        """Everything the trace and the world say up to ``tick``, in time order: the
        enqueues of each moment together, as the application would call them; how many."""
        from_world = list(model.due(tick)) if model else []
        events = _merged(trace.until(tick), from_world)
        batch: list[Enqueue] = []
        for item in events:
            if isinstance(item, Enqueue):
                if batch and batch[0].at != item.at:
                    self._enqueue(runtime, batch, outcome)
                    batch = []
                batch.append(item)
                continue
            if batch:
                self._enqueue(runtime, batch, outcome)
                batch = []
            self._signal(runtime, item, outcome, same_day)
        if batch:
            self._enqueue(runtime, batch, outcome)
        return len(events)

    def _enqueue(self, runtime: Runtime, batch: list[Enqueue], outcome: Outcome) -> None:
        messages = [
            NewMessage(e.to, e.body, e.line, None, e.key, e.send_at, e.expires_at) for e in batch
        ]
        try:
            enqueue_many(runtime, messages, batch[0].at)
        except HealthgateError:
            # One bad message refuses the call; enqueue the others one by one.
            for one in messages:
                try:
                    enqueue_many(runtime, [one], batch[0].at)
                except HealthgateError:
                    outcome.totals["refused"] += 1
                    continue
                outcome.totals["enqueued"] += 1
            return
        outcome.totals["enqueued"] += len(messages)

    def _signal(self, runtime: Runtime, item: Event, outcome: Outcome, same_day: SameDay) -> None:
        policy = self.policy
        at = when(item)
        with runtime.sessions.begin() as session:
            if isinstance(item, Inbound):
                consent.record_inbound(
                    session,
                    policy,
                    item.line,
                    item.recipient,
                    item.text,
                    at,
                    at=item.at,
                    source=SOURCE,
                )
                if classify(item.text, policy.opt_out) is Kind.OPT_OUT:
                    outcome.opt_outs[outcome.hour_of(at)] += 1
                    for hour in same_day.opted_out(item.recipient, at):
                        outcome.sent_before_opt_out[hour] += 1
            elif isinstance(item, LineReport):
                _line_report(session, policy, item, at)
            elif isinstance(item, ChatReport):
                health.set_chat_health(
                    session,
                    policy,
                    item.line,
                    item.recipient,
                    item.status,
                    at,
                    updated_at=item.at,
                    source=SOURCE,
                )

    def _dispatch(self, runtime: Runtime, now: datetime) -> None:
        """Beat's tick at ``now``: claim what is due and dispatch it, batch after batch."""
        while True:
            claim = claim_due(runtime, now, self.scenario.batch)
            if claim.ids:
                dispatch_claimed(runtime, claim, now)
            if len(claim.ids) < self.scenario.batch:
                # Everything due was claimed: a decision never holds to a moment passed.
                return


def _line_report(session: Session, policy: Policy, item: LineReport, at: datetime) -> None:
    if item.status in {s.value for s in LineStatus}:
        health.set_line_status(
            session, policy, item.line, item.status, at, updated_at=item.at, source=SOURCE
        )
    else:
        health.set_line_reputation(
            session, policy, item.line, item.status, at, updated_at=item.at, source=SOURCE
        )


def _next_due(runtime: Runtime) -> datetime | None:
    with runtime.reads() as session:
        due: datetime | None = session.scalar(
            select(func.min(Message.not_before)).where(text(WAITING_SQL))
        )
    return due


def _tick_at(moment: datetime, start: datetime, tick: timedelta, now: datetime) -> datetime:
    """The first tick at or after ``moment``, and after ``now`` (a tick runs once)."""
    steps = max(-(-(moment - start) // tick), 0)
    at = start + steps * tick
    return at if at > now else now + tick


def _merged(first: list[Event], second: list[Event]) -> list[Event]:
    """Two time-ordered lists as one, by when healthgate hears of each (stable)."""
    if not second:
        return first
    if not first:
        return second
    return sorted([*first, *second], key=when)


class _Peek:
    """A trace read one event ahead, so the loop knows when the next one comes."""

    def __init__(self, events: Iterator[Event]) -> None:
        self._events = events
        self._next: Event | None = next(events, None)

    def at(self) -> datetime | None:
        return when(self._next) if self._next is not None else None

    def until(self, moment: datetime) -> list[Event]:
        found = []
        while self._next is not None and when(self._next) <= moment:
            found.append(self._next)
            self._next = next(self._events, None)
        return found


def scratch() -> tempfile.TemporaryDirectory[str]:
    """A folder for the runs' stores, removed when the run is over."""
    return tempfile.TemporaryDirectory(prefix="healthgate-simulate-")
