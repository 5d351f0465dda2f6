"""The world's provider: accepts or refuses sends, and scores chats and lines from what it
sees, telling healthgate late, as a real provider's beta scores do.

These rules are the world's, not healthgate's: they stand for a provider healthgate
cannot see into, so a policy can be tried against them. healthgate learns of them only
as a real deployment would: the answer to a send, inbound messages and health reports.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from policies.outcome import Failure
from policies.statuses import ChatHealth, LineReputation, LineStatus
from scheduler.providers import Outbound, SendFailed, Sent
from scheduler.simulate.trace import ChatReport, Enqueue, Event, Inbound, LineReport
from scheduler.simulate.traffic import Population
from scheduler.simulate.world import LineModel, ProviderModel, World

#: Chat scores, worst last, as the model ranks them.
_CHAT_LEVELS = (ChatHealth.HEALTHY, ChatHealth.AT_RISK, ChatHealth.CRITICAL)
_LINE_LEVELS = (LineReputation.HEALTHY, LineReputation.AT_RISK, LineReputation.CRITICAL)
#: A chat the model holds AT_RISK or CRITICAL that hears nothing this long recovers.
CHAT_QUIET_RECOVERY = timedelta(days=7)
#: What a recipient writes back, and how they opt out.
REPLY_TEXT = "Thanks!"
STOP_TEXT = "STOP"


class Flag(NamedTuple):
    """The provider model moved a line or a chat (as of ``at``; healthgate hears later)."""

    at: datetime
    line: str
    #: None for the line itself.
    recipient: str | None
    status: str


@dataclass(slots=True)
class _Chat:
    unanswered: int = 0
    level: int = 0
    last_send: datetime | None = None


@dataclass
class _Line:
    number: str
    model: ProviderModel
    level: int = 0
    flagged_until: datetime | None = None
    #: When the signals were last at or above the current level.
    bad_since: datetime | None = None
    minute: int = -1
    in_minute: int = 0
    peak: int = 0
    new_chats: deque[datetime] = field(default_factory=deque)
    recent: deque[tuple[datetime, str]] = field(default_factory=deque)
    distinct: Counter[str] = field(default_factory=Counter)
    chats: int = 0
    unhealthy: int = 0


class _Evaluate(NamedTuple):
    provider: str


class _Quiet(NamedTuple):
    line: str
    recipient: str


class WorldModel:
    """Recipients' hidden engagement and the provider's scoring, driven by sends.

    ``send`` is the provider's side of a send; ``due(now)`` yields what the world says
    to healthgate up to ``now`` (replies, STOPs, late health reports, the application's
    answers to replies), in time order.
    """

    def __init__(self, world: World, on_flag: Callable[[Flag], None] | None = None) -> None:
        self.world = world
        self.people = Population(world)
        self.rng = random.Random(f"{world.world.seed}/provider")
        self.lines = {
            line.number: _Line(line.number, world.provider(line.provider)) for line in world.lines
        }
        self.chats: dict[tuple[str, str], _Chat] = {}
        self.opted_out: set[str] = set()
        self.on_flag = on_flag or (lambda flag: None)
        self._heap: list[tuple[datetime, int, object]] = []
        self._seq = itertools.count()
        for provider in world.providers:
            self._at(world.world.start + provider.evaluate_every, _Evaluate(provider.name))

    def _at(self, moment: datetime, item: object) -> None:
        heapq.heappush(self._heap, (moment, next(self._seq), item))

    def next_at(self) -> datetime | None:
        return self._heap[0][0] if self._heap else None

    def due(self, now: datetime) -> Iterator[Event]:
        """What healthgate hears up to ``now``, in time order; the model's own timers run."""
        while self._heap and self._heap[0][0] <= now:
            moment, _, item = heapq.heappop(self._heap)
            if isinstance(item, _Evaluate):
                self._evaluate(item.provider, moment)
            elif isinstance(item, _Quiet):
                self._quiet(item, moment)
            elif isinstance(item, Inbound):
                self._heard(item)
                yield item
            else:
                assert isinstance(item, Enqueue | LineReport | ChatReport)
                yield item

    # The provider's side of a send.

    def send(self, message: Outbound, now: datetime) -> Sent:
        line = self.lines.get(message.line)
        if line is not None and line.flagged_until is not None and now < line.flagged_until:
            raise SendFailed(Failure.LINE_BLOCKED, "line is FLAGGED (2027)")
        if message.recipient in self.opted_out:
            raise SendFailed(Failure.RECIPIENT_OPTED_OUT, "recipient opted out (2024)")
        if line is not None:
            self._count(line, message.recipient, now)
        self._engage(message, now)
        return Sent()

    def _count(self, line: _Line, recipient: str, now: datetime) -> None:
        minute = int(now.timestamp() // 60)
        if minute != line.minute:
            line.minute, line.in_minute = minute, 0
        line.in_minute += 1
        line.peak = max(line.peak, line.in_minute)
        line.recent.append((now, recipient))
        line.distinct[recipient] += 1
        chat = self.chats.get((line.number, recipient))
        if chat is None:
            chat = self.chats[(line.number, recipient)] = _Chat()
            line.chats += 1
            line.new_chats.append(now)
        chat.unanswered += 1
        chat.last_send = now
        rules = line.model.chat
        level = (
            2
            if chat.unanswered >= rules.critical_after_unanswered
            else 1
            if chat.unanswered >= rules.at_risk_after_unanswered
            else 0
        )
        if level > chat.level:
            self._chat_level(line, recipient, chat, level, now)
        if chat.level:
            self._at(now + CHAT_QUIET_RECOVERY, _Quiet(line.number, recipient))

    def _engage(self, message: Outbound, now: datetime) -> None:
        """The recipient's hidden answer: a reply, a STOP, or nothing."""
        segment = self.people.segment_of(self.people.index(message.recipient))
        draw = self.rng.random()
        mean = segment.reply_minutes * 60
        later = now + timedelta(seconds=self.rng.expovariate(1 / mean))
        if draw < segment.opt_out_probability:
            self._at(later, Inbound(later, message.line, message.recipient, STOP_TEXT))
        elif draw < segment.opt_out_probability + segment.reply_probability:
            self._at(later, Inbound(later, message.line, message.recipient, REPLY_TEXT))

    def _heard(self, inbound: Inbound) -> None:
        """An inbound message: a STOP opts the recipient out at the provider; a reply makes
        the chat a conversation again, and may get the application's answer."""
        if inbound.text == STOP_TEXT:
            self.opted_out.add(inbound.recipient)
            return
        line = self.lines.get(inbound.line)
        chat = self.chats.get((inbound.line, inbound.recipient))
        if line is not None and chat is not None:
            chat.unanswered = 0
            if chat.level:
                self._chat_level(line, inbound.recipient, chat, 0, inbound.at)
        answers = self.world.traffic.replies
        if answers.probability and self.rng.random() < answers.probability:
            at = inbound.at + timedelta(seconds=answers.delay_seconds)
            self._at(at, Enqueue(at, inbound.recipient, answers.body))

    def _quiet(self, item: _Quiet, now: datetime) -> None:
        line, chat = self.lines[item.line], self.chats.get((item.line, item.recipient))
        if chat is None or not chat.level or chat.last_send is None:
            return
        if now - chat.last_send >= CHAT_QUIET_RECOVERY:
            chat.unanswered = 0
            self._chat_level(line, item.recipient, chat, 0, now)

    def _chat_level(
        self, line: _Line, recipient: str, chat: _Chat, level: int, now: datetime
    ) -> None:
        if (chat.level > 0) != (level > 0):
            line.unhealthy += 1 if level else -1
        chat.level = level
        status = _CHAT_LEVELS[level].value
        self.on_flag(Flag(now, line.number, recipient, status))
        received = now + line.model.lag
        self._at(received, ChatReport(now, line.number, recipient, status, received))

    # The provider's periodic scoring of its lines.

    def _evaluate(self, provider: str, now: datetime) -> None:
        model = self.world.provider(provider)
        for line in self.lines.values():
            if line.model.name == provider:
                self._score(line, now)
        self._at(now + model.evaluate_every, _Evaluate(provider))

    def _score(self, line: _Line, now: datetime) -> None:
        _trim(line, now)
        rules = line.model.line
        # The busiest minute since the last look; the next look counts from here.
        peak, line.peak = line.peak, 0
        if line.flagged_until is not None and now >= line.flagged_until:
            line.flagged_until = None
            self._line_report(line, LineStatus.ACTIVE.value, now)
        if line.flagged_until is None and _over(peak, rules.flag_sends_per_minute):
            line.flagged_until = now + timedelta(days=rules.flagged_days)
            self._line_report(line, LineStatus.FLAGGED.value, now)
        level = self._level(line, rules, peak)
        if level >= line.level:
            line.bad_since = now
            if level > line.level:
                line.level = level
                self._line_report(line, _LINE_LEVELS[level].value, now)
            return
        recover = timedelta(hours=rules.recover_after_hours)
        if line.bad_since is None or now - line.bad_since >= recover:
            line.level, line.bad_since = level, now
            self._line_report(line, _LINE_LEVELS[level].value, now)

    def _level(self, line: _Line, rules: LineModel, peak: int) -> int:
        share = line.unhealthy / line.chats if line.chats >= rules.share_min_chats else 0.0
        signals = (
            (peak, rules.at_risk_sends_per_minute, rules.critical_sends_per_minute),
            (
                len(line.new_chats),
                rules.at_risk_new_conversations_per_day,
                rules.critical_new_conversations_per_day,
            ),
            (
                len(line.distinct),
                rules.at_risk_distinct_recipients_per_hour,
                rules.critical_distinct_recipients_per_hour,
            ),
            (share, rules.at_risk_unhealthy_share, rules.critical_unhealthy_share),
        )
        level = 0
        for value, at_risk, critical in signals:
            if _over(value, critical):
                return 2
            if _over(value, at_risk):
                level = 1
        return level

    def _line_report(self, line: _Line, status: str, now: datetime) -> None:
        self.on_flag(Flag(now, line.number, None, status))
        received = now + line.model.lag
        self._at(received, LineReport(now, line.number, status, received))


def _over(value: float, threshold: float | None) -> bool:
    return threshold is not None and value > threshold


def _trim(line: _Line, now: datetime) -> None:
    """Forget what fell out of the line's trailing windows."""
    day, hour = now - timedelta(days=1), now - timedelta(hours=1)
    while line.new_chats and line.new_chats[0] <= day:
        line.new_chats.popleft()
    while line.recent and line.recent[0][0] <= hour:
        _, recipient = line.recent.popleft()
        line.distinct[recipient] -= 1
        if not line.distinct[recipient]:
            del line.distinct[recipient]
