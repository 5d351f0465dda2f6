"""What the gate sees, derived from signals kept as facts with their own times.

Every source (a provider's webhook, its polled answer, an inbound message, a send's
answer, a person) adds facts; nothing here depends on the order they arrive in. Each
derivation is a pure function of the facts, so a derived value is recomputed, never
patched, and any delivery order gives the same answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from policies.config import OptOutPolicy
from policies.errors import InvalidInput
from policies.keywords import Inbound, reply_opts_in
from policies.statuses import ChatHealth, LineReputation, LineStatus

#: How bad each report is: at the same moment, the worse one wins, so two reports of
#: one instant give the same answer in either order.
SEVERITY: dict[str, int] = {
    ChatHealth.HEALTHY: 0,
    ChatHealth.AT_RISK: 1,
    ChatHealth.CRITICAL: 2,
    LineStatus.ACTIVE: 0,
    LineStatus.FLAGGED: 2,
}


def supersedes(
    status: str, at: datetime, known_status: str | None, known_at: datetime | None
) -> bool:
    """Whether a report replaces the latest one known: it is later, or as late and worse."""
    if known_at is None or known_status is None:
        return True
    if at != known_at:
        return at > known_at
    return SEVERITY[status] > SEVERITY[known_status]


def latest(at: datetime, known: datetime | None) -> datetime:
    """The later of a new time and a known one (a latch's time moves forward only)."""
    return at if known is None or at > known else known


def paused(critical_at: datetime | None, healthy_at: datetime | None) -> bool:
    """A CRITICAL report pauses until a *later* HEALTHY one; AT_RISK in between does not
    end the pause (the providers' rule: re-engage only once healthy again)."""
    return critical_at is not None and (healthy_at is None or healthy_at <= critical_at)


def chat_health(
    reported: str | None, critical_at: datetime | None, healthy_at: datetime | None
) -> ChatHealth:
    """The chat's bucket the gate sees (an opt-out is kept apart, in the ledger)."""
    return _bucket(ChatHealth, reported, critical_at, healthy_at)


def line_reputation(
    reported: str | None, critical_at: datetime | None, healthy_at: datetime | None
) -> LineReputation:
    """The line's reputation the gate sees: CRITICAL holds until a later HEALTHY."""
    return _bucket(LineReputation, reported, critical_at, healthy_at)


_Bucket = TypeVar("_Bucket", ChatHealth, LineReputation)


def _bucket(
    kind: type[_Bucket],
    reported: str | None,
    critical_at: datetime | None,
    healthy_at: datetime | None,
) -> _Bucket:
    if paused(critical_at, healthy_at):
        return kind("CRITICAL")
    return kind(reported) if reported else kind("HEALTHY")


def line_status(
    reported: str | None, active_at: datetime | None, blocked_at: datetime | None
) -> LineStatus:
    """The line's runtime status the gate sees.

    FLAGGED while the provider says so, and while a send's answer said the line cannot
    send (healthgate's own flag, ``blocked_at``) until a later ACTIVE: from the
    provider, or from a person who checked.
    """
    if reported == LineStatus.FLAGGED:
        return LineStatus.FLAGGED
    if blocked_at is not None and (active_at is None or active_at <= blocked_at):
        return LineStatus.FLAGGED
    return LineStatus.ACTIVE


@dataclass(frozen=True, slots=True)
class Consent:
    """One fact of the opt-out ledger: what the recipient (or the provider) said, when."""

    kind: Inbound
    at: datetime


def opted_out_since(facts: Iterable[Consent], policy: OptOutPolicy) -> datetime | None:
    """When the recipient's current opt-out began; None when they are not opted out.

    The latest fact that speaks decides: an opt-out, or an opt-in (and, where the mode
    says any later message opts back in, an ordinary reply). At one instant an opt-out
    wins: a compliance officer would not send on a tie.
    """
    speaking = [f for f in facts if f.kind is not Inbound.REPLY or reply_opts_in(policy)]
    ordered = sorted(speaking, key=lambda f: (f.at, f.kind is Inbound.OPT_OUT))
    since = None
    # The run of opt-outs at the end, if the last fact is one: since its first.
    for fact in reversed(ordered):
        if fact.kind is not Inbound.OPT_OUT:
            break
        since = fact.at
    return since


def not_ahead(at: datetime, field: str, now: datetime, tolerance: timedelta) -> datetime:
    """``at`` itself, or bad input when it is later than its receipt plus ``tolerance``.

    A time from the future would win every comparison and lock the state it reports.
    """
    if at > now + tolerance:
        raise InvalidInput(
            field,
            at.isoformat(),
            f"is later than its receipt ({now.isoformat()}) plus the tolerance of "
            f"{tolerance.total_seconds():g} s",
        )
    return at
