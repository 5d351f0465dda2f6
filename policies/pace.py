"""A line's pace: its caps as they apply now, after AT_RISK slowing and a recovery ramp."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import NamedTuple

from policies.config import Caps, Policy
from policies.decision import Pace, Queue
from policies.statuses import LineReputation
from policies.usage import DAY, HOUR, MINUTE, LineUsage


@dataclass(frozen=True, slots=True)
class Limits:
    """The caps one line runs at, at one moment; what the gate and every limiter enforce."""

    sends_per_minute: int
    sends_per_day: int
    sends_per_recipient_per_minute: int
    sends_per_recipient_per_day: int
    distinct_recipients_per_hour: int
    new_conversations_per_day: int
    #: Why the caps are below the policy's: "" at full pace.
    note: str = ""


def ramp_factor(recovered_at: datetime | None, now: datetime, policy: Policy) -> float:
    """The share of its caps a line back to HEALTHY may use ``now``.

    It starts at the AT_RISK pace factor the moment the line recovers and rises in a
    straight line to 1 over ``line.recovery_ramp_hours``, like a warmed-up IP.
    """
    start = policy.line.at_risk_pace_factor
    ramp = policy.line.recovery_ramp
    if recovered_at is None or ramp.total_seconds() <= 0 or now >= recovered_at + ramp:
        return 1.0
    elapsed = max(0.0, (now - recovered_at) / ramp)
    return start + (1.0 - start) * elapsed


def pace_factor(
    reputation: LineReputation, recovered_at: datetime | None, now: datetime, policy: Policy
) -> float:
    """The factor on every cap of a line: AT_RISK pace, the recovery ramp, or 1."""
    if reputation is LineReputation.AT_RISK:
        return policy.line.at_risk_pace_factor
    if reputation is LineReputation.HEALTHY:
        return ramp_factor(recovered_at, now, policy)
    return 1.0


def scaled(cap: int, factor: float) -> int:
    """A cap times a factor, never below one (a paced line still sends, slowly)."""
    return cap if factor >= 1 else max(1, math.floor(cap * factor))


#: The caps of the whole line (the others count one recipient's sends).
LINE_WIDE = (
    "sends_per_minute",
    "sends_per_day",
    "distinct_recipients_per_hour",
    "new_conversations_per_day",
)


def shared(limits: Limits, share: float, category: str) -> Limits:
    """``limits`` as messages of ``category`` may use them: ``share`` of each line-wide
    cap, the rest kept for higher priorities (a recipient's own caps are whole)."""
    if share >= 1:
        return limits
    fewer = {cap: scaled(getattr(limits, cap), share) for cap in LINE_WIDE}
    note = f"{limits.note} ({category} may use {share:.0%})"
    return replace(limits, **fewer, note=note)


def line_limits(
    caps: Caps,
    reputation: LineReputation,
    recovered_at: datetime | None,
    now: datetime,
    policy: Policy,
) -> Limits:
    """The caps of a line of this reputation, recovered at ``recovered_at``, at ``now``."""
    factor = pace_factor(reputation, recovered_at, now, policy)
    note = ""
    if reputation is LineReputation.AT_RISK:
        note = " (AT_RISK pace)"
    elif factor < 1:
        note = f" (recovery ramp at {factor:.0%})"
    return Limits(
        sends_per_minute=scaled(caps.sends_per_minute, factor),
        sends_per_day=scaled(caps.sends_per_day, factor),
        sends_per_recipient_per_minute=scaled(caps.sends_per_recipient_per_minute, factor),
        sends_per_recipient_per_day=scaled(caps.sends_per_recipient_per_day, factor),
        distinct_recipients_per_hour=scaled(caps.distinct_recipients_per_hour, factor),
        new_conversations_per_day=scaled(caps.new_conversations_per_day, factor),
        note=note,
    )


#: Each cap's window, and whose sends it counts.
CAP_WINDOWS: dict[str, tuple[timedelta, Queue]] = {
    "sends_per_minute": (MINUTE, Queue.LINE),
    "sends_per_day": (DAY, Queue.LINE),
    "sends_per_recipient_per_minute": (MINUTE, Queue.CHAT),
    "sends_per_recipient_per_day": (DAY, Queue.CHAT),
    "distinct_recipients_per_hour": (HOUR, Queue.LINE),
    "new_conversations_per_day": (DAY, Queue.LINE),
}


def cap_pace(cap: str, limit: int) -> Pace:
    """The pace a cap lets sends through at: one every window over limit."""
    window, queue = CAP_WINDOWS[cap]
    return Pace(queue, window / max(1, limit))


class Verdict(NamedTuple):
    """When one more send fits under every cap, and which cap binds then."""

    #: ``now`` when the send fits now.
    allowed_at: datetime
    #: The binding cap's name (e.g. ``sends_per_minute``); "" when nothing binds.
    cap: str
    #: Its value as applied.
    limit: int


def check(
    usage: LineUsage, limits: Limits, recipient: str, new_chat: bool, now: datetime
) -> Verdict:
    """Check one send against every cap of ``limits``; has no side effect.

    The earliest moment is the latest of the moments each cap allows, so a send
    throttled to it passes every cap then (unless others send meanwhile).
    """
    candidates = [
        Verdict(
            usage.minute_allowed(limits.sends_per_minute, now),
            "sends_per_minute",
            limits.sends_per_minute,
        ),
        Verdict(
            usage.day_allowed(limits.sends_per_day, now), "sends_per_day", limits.sends_per_day
        ),
        Verdict(
            usage.recipient_minute_allowed(recipient, limits.sends_per_recipient_per_minute, now),
            "sends_per_recipient_per_minute",
            limits.sends_per_recipient_per_minute,
        ),
        Verdict(
            usage.recipient_day_allowed(recipient, limits.sends_per_recipient_per_day, now),
            "sends_per_recipient_per_day",
            limits.sends_per_recipient_per_day,
        ),
        Verdict(
            usage.distinct_recipients_allowed(recipient, limits.distinct_recipients_per_hour, now),
            "distinct_recipients_per_hour",
            limits.distinct_recipients_per_hour,
        ),
    ]
    if new_chat:
        candidates.append(
            Verdict(
                usage.new_chats_allowed(limits.new_conversations_per_day, now),
                "new_conversations_per_day",
                limits.new_conversations_per_day,
            )
        )
    binding = max(candidates, key=lambda verdict: verdict.allowed_at)
    return binding if binding.allowed_at > now else Verdict(now, "", 0)


def headroom(usage: LineUsage, limits: Limits, now: datetime) -> float:
    """The smallest share left, 0 to 1, of any cap a send to a new recipient uses."""
    used = (
        usage.sent_last_minute(now) / limits.sends_per_minute,
        usage.day_count / limits.sends_per_day,
        usage.recipients_last_hour(now) / limits.distinct_recipients_per_hour,
        usage.new_chats_last_day(now) / limits.new_conversations_per_day,
    )
    return max(0.0, 1.0 - max(used))
