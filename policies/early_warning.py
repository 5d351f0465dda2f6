"""healthgate's own estimate of a chat's and a line's health, ahead of the provider's.

The provider's health scores lag: by the time a line is CRITICAL the damage is done.
healthgate sees every send and every reply first. This module turns what it counted
(:class:`ChatSignals`, :class:`LineSignals`) into a status per chat and per line, with
the reasons that raised it. It is pure: it reads no clock and no store, and the status
is a function of the signals at ``now``, so it recovers on its own when they do.

The estimate only ever adds severity (:func:`more_severe`): it never lowers a provider's
status, never lifts a provider's CRITICAL and never touches an opt-out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from policies.config import EarlyWarningPolicy, Policy
from policies.statuses import ChatHealth, LineReputation

#: Worse last: the index is the severity.
LEVELS: tuple[LineReputation, ...] = (
    LineReputation.HEALTHY,
    LineReputation.AT_RISK,
    LineReputation.CRITICAL,
)
_RANK = {level.value: rank for rank, level in enumerate(LEVELS)}


def severity(status: str) -> int:
    """0 for HEALTHY, 1 for AT_RISK, 2 for CRITICAL (a chat's or a line's)."""
    return _RANK[status]


def more_severe(provider: LineReputation, estimate: LineReputation) -> LineReputation:
    """The worse of the provider's status and the estimate (the provider's on a tie)."""
    return estimate if severity(estimate) > severity(provider) else provider


def chat_status(provider: ChatHealth, estimate: LineReputation) -> ChatHealth:
    """The chat's status under ``enforce``: an opt-out stays one, else the worse."""
    if provider is ChatHealth.OPTED_OUT:
        return provider
    return ChatHealth(more_severe(LineReputation(provider.value), estimate).value)


@dataclass(frozen=True, slots=True)
class Reason:
    """One signal past one threshold."""

    signal: str
    value: float
    threshold: float
    window: str
    status: LineReputation
    #: How the value compares to the threshold (``>=`` or ``<``).
    op: str = ">="

    def __str__(self) -> str:
        return (
            f"{self.signal} {_number(self.value)} {self.op} {_number(self.threshold)} "
            f"over {self.window}"
        )

    def rule(self) -> str:
        """The threshold crossed, without the value (which moves with every send)."""
        return f"{self.signal} {self.op} {_number(self.threshold)} over {self.window}"


@dataclass(frozen=True, slots=True)
class Estimate:
    """A status and the reasons for it (none when HEALTHY)."""

    status: LineReputation = LineReputation.HEALTHY
    reasons: tuple[Reason, ...] = ()

    def as_json(self) -> dict[str, object]:
        """The status and each reason, for ``status`` and ``explain``."""
        return {
            "status": self.status.value,
            "reasons": [
                {
                    "signal": r.signal,
                    "value": r.value,
                    "threshold": r.threshold,
                    "window": r.window,
                    "status": r.status.value,
                    "text": str(r),
                }
                for r in sorted(self.reasons, key=lambda r: -severity(r.status))
            ],
        }

    def why(self) -> str:
        """The reasons in one line, worst first."""
        return "; ".join(str(r) for r in self._ordered()) or "no signal past a threshold"

    def rules(self) -> str:
        """The thresholds crossed in one line, worst first, without the values: what a
        decision records, so a hold decided again under the same rules is one record
        counted again (``explain`` and ``status`` show the values as they are now)."""
        return "; ".join(r.rule() for r in self._ordered()) or "no signal past a threshold"

    def _ordered(self) -> list[Reason]:
        return sorted(self.reasons, key=lambda r: -severity(r.status))


HEALTHY = Estimate()


@dataclass(frozen=True, slots=True)
class ChatSignals:
    """What healthgate counted on one chat."""

    #: Sends since the recipient's last reply (inside the chat window).
    unanswered: int = 0
    #: Sends and replies inside the chat window.
    sends: int = 0
    replies: int = 0
    #: The recipient's last message, and the chat's first send.
    last_reply_at: datetime | None = None
    first_sent_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class LineSignals:
    """What healthgate counted on one line."""

    #: Chats sent to inside the window, and of those: opened inside it (new
    #: conversations), new conversations opted out inside it, held AT_RISK or
    #: CRITICAL now.
    chats: int = 0
    #: Chats sent to inside the window at least ``reply_wait_hours`` ago, and of those
    #: the ones whose recipient replied after such a send.
    answerable: int = 0
    replied: int = 0
    new_chats: int = 0
    opted_out: int = 0
    unhealthy: int = 0
    #: New conversations over the last day and distinct recipients over the last hour,
    #: and the caps they count against.
    new_conversations_day: int = 0
    new_conversations_cap: int = 0
    recipients_hour: int = 0
    recipients_cap: int = 0
    #: Sends over the last hour, and the provider's refusals (403, 429) among them.
    sends_hour: int = 0
    rejections_hour: int = 0
    #: Recipients of the line's most spread near-identical body over the last hour,
    #: and the content rule's cap.
    same_body_hour: int = 0
    same_body_cap: int = 0


def _hours(window: timedelta) -> str:
    return f"{window.total_seconds() / 3600:g} h"


def _number(value: float) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class _Found:
    """Reasons gathered while walking the thresholds."""

    def __init__(self) -> None:
        self.reasons: list[Reason] = []

    def high(
        self, signal: str, value: float, at_risk: float, critical: float | None, window: str
    ) -> None:
        """A signal that is bad when high: at or above a threshold."""
        if critical is not None and value >= critical:
            self.reasons.append(Reason(signal, value, critical, window, LineReputation.CRITICAL))
        elif value >= at_risk:
            self.reasons.append(Reason(signal, value, at_risk, window, LineReputation.AT_RISK))

    def low(self, signal: str, value: float, at_risk: float, critical: float, window: str) -> None:
        """A signal that is bad when low: below a threshold."""
        if value < critical:
            self.reasons.append(
                Reason(signal, value, critical, window, LineReputation.CRITICAL, "<")
            )
        elif value < at_risk:
            self.reasons.append(Reason(signal, value, at_risk, window, LineReputation.AT_RISK, "<"))

    def estimate(self) -> Estimate:
        if not self.reasons:
            return HEALTHY
        worst = max((r.status for r in self.reasons), key=severity)
        return Estimate(worst, tuple(self.reasons))


def estimate_chat(signals: ChatSignals, policy: EarlyWarningPolicy, now: datetime) -> Estimate:
    """The chat's status from its own signals at ``now``."""
    found = _Found()
    window = _hours(policy.chat_window)
    found.high(
        "unanswered streak",
        signals.unanswered,
        policy.chat_unanswered_at_risk,
        policy.chat_unanswered_critical,
        window,
    )
    since = signals.last_reply_at or signals.first_sent_at
    if signals.unanswered and since is not None:
        hours = max((now - since).total_seconds(), 0) / 3600
        found.high(
            "hours since the last reply",
            round(hours, 1),
            policy.chat_silence_hours_at_risk,
            None,
            "the last reply",
        )
    if signals.sends >= policy.chat_min_sends:
        rate = signals.replies / signals.sends
        # A chat's reply rate only slows it: a quiet recipient is no emergency.
        found.low("chat reply rate", rate, policy.chat_reply_rate_at_risk, 0, window)
    return found.estimate()


def estimate_line(signals: LineSignals, policy: Policy, now: datetime) -> Estimate:
    """The line's status from its own signals at ``now`` (``now`` names no window here:
    the signals were counted at it)."""
    del now  # the windows were read at ``now`` by whoever counted the signals
    ew = policy.early_warning
    found = _Found()
    window = _hours(ew.window)
    if signals.answerable >= ew.min_chats:
        found.low(
            "reply rate",
            signals.replied / signals.answerable,
            ew.line_reply_rate_at_risk,
            ew.line_reply_rate_critical,
            window,
        )
    if signals.chats >= ew.min_chats:
        found.high(
            "chats AT_RISK or CRITICAL",
            signals.unhealthy / signals.chats,
            ew.unhealthy_chats_at_risk,
            ew.unhealthy_chats_critical,
            window,
        )
    if signals.new_chats >= ew.min_chats:
        found.high(
            "opt-outs per new conversation",
            signals.opted_out / signals.new_chats,
            ew.opt_out_rate_at_risk,
            ew.opt_out_rate_critical,
            window,
        )
    if signals.new_conversations_cap:
        found.high(
            "new conversations per day / cap",
            signals.new_conversations_day / signals.new_conversations_cap,
            ew.cap_use_at_risk,
            None,
            "1 day",
        )
    if signals.recipients_cap:
        found.high(
            "distinct recipients per hour / cap",
            signals.recipients_hour / signals.recipients_cap,
            ew.cap_use_at_risk,
            None,
            "1 h",
        )
    if signals.sends_hour >= ew.min_sends_per_hour:
        found.high(
            "provider rejections per 100 sends",
            100 * signals.rejections_hour / signals.sends_hour,
            ew.rejections_at_risk,
            ew.rejections_critical,
            "1 h",
        )
    if signals.same_body_cap and ew.same_body_use_at_risk:
        found.high(
            "recipients of one body per hour / cap",
            signals.same_body_hour / signals.same_body_cap,
            ew.same_body_use_at_risk,
            None,
            "1 h",
        )
    return found.estimate()


__all__ = [
    "HEALTHY",
    "LEVELS",
    "ChatSignals",
    "Estimate",
    "LineSignals",
    "Reason",
    "chat_status",
    "estimate_chat",
    "estimate_line",
    "more_severe",
    "severity",
]
