"""One poll pass: ask each provider how our lines stand and apply what changed.

Beat runs it every ``HEALTHGATE_POLL_SECONDS``; ``healthgate poll`` runs it once. A line
whose answer is bad input (an unknown value, an ``OPTED_OUT`` reputation) is logged with
the field and the value and left as it was; the other lines are still applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from policies.errors import HealthgateError, InvalidInput
from policies.provider_health import CanSend, d360_health, linq_line
from policies.statuses import LineReputation, LineStatus
from scheduler.runtime import Runtime, utcnow
from scheduler.signals.health import set_line_reputation, set_line_status
from scheduler.store.lines import get_line, sync_lines

log = logging.getLogger(__name__)


@dataclass
class PollReport:
    """What one poll pass did: lines changed, unchanged, and the problems met."""

    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def error(self, message: str) -> None:
        log.error("poll: %s", message)
        self.errors.append(message)
        self.add("error")


def poll(runtime: Runtime, now: datetime | None = None) -> PollReport:
    """Poll every declared line's provider once; ``now`` stamps what the answers say."""
    now = now or utcnow()
    policy = runtime.policy
    with runtime.sessions.begin() as session:
        sync_lines(session, policy, now)
    report = PollReport()
    linq_lines = [line.number for line in policy.lines if line.provider == "linq"]
    if linq_lines:
        _poll_linq(runtime, linq_lines, now, report)
    for line in policy.lines:
        if line.provider == "360dialog":
            _poll_d360(runtime, line.number, now, report)
    return report


def _poll_linq(runtime: Runtime, numbers: list[str], now: datetime, report: PollReport) -> None:
    """One ``GET /v3/phone_numbers`` for every Linq line of ours."""
    from scheduler.providers.linq import LinqProvider  # the SDK loads only when needed

    try:
        provider = runtime.providers.get("linq")
        if not isinstance(provider, LinqProvider):
            report.add("skipped")
            return
        entries = provider.phone_numbers()
    except HealthgateError as exc:
        report.error(str(exc))
        return
    ours = set(numbers)
    seen: set[str] = set()
    for entry in entries:
        number = str(entry.get("phone_number", ""))
        if number not in ours:
            continue
        seen.add(number)
        try:
            reading = linq_line(entry)
        except InvalidInput as exc:
            report.error(f"line {number}: linq {exc}")
            continue
        _apply(runtime, number, reading.reputation, reading.status, None, now, "linq poll", report)
    for number in sorted(ours - seen):
        log.warning("poll: line %s is not in Linq's phone number list", number)
        report.add("missing")


def _poll_d360(runtime: Runtime, number: str, now: datetime, report: PollReport) -> None:
    """``GET /health_status`` with the line's own key."""
    from scheduler.providers.dialog360 import Dialog360Provider

    try:
        provider = runtime.providers.get("360dialog")
        if not isinstance(provider, Dialog360Provider):
            report.add("skipped")
            return
        reading = d360_health(provider.health_status(number))
    except InvalidInput as exc:
        report.error(f"line {number}: 360dialog {exc}")
        return
    except HealthgateError as exc:
        report.error(str(exc))
        return
    # The health answer is the provider's current word on whether the number can send,
    # so it also lifts a flag that a refused send put on the line.
    status = None if reading.can_send is CanSend.BLOCKED else LineStatus.ACTIVE
    source = f"360dialog health_status {reading.can_send.value}"
    _apply(runtime, number, reading.reputation, status, reading.detail, now, source, report)


def _apply(
    runtime: Runtime,
    number: str,
    reputation: LineReputation | None,
    status: LineStatus | None,
    detail: dict[str, Any] | None,
    now: datetime,
    source: str,
    report: PollReport,
) -> None:
    """Apply one line's reading; an unchanged value is not re-stamped nor re-released."""
    changed = False
    with runtime.sessions.begin() as session:
        line = get_line(session, number)
        new_detail = detail is not None and detail != line.detail
        if reputation is not None and (reputation.value != line.reported_reputation or new_detail):
            changed |= set_line_reputation(
                session,
                runtime.policy,
                number,
                reputation.value,
                now,
                updated_at=now,
                source=source,
                detail=detail,
            )
        # Recorded unless both the latest report and what the gate sees say so already
        # (an ACTIVE answer lifts the flag a refused send put on the line).
        if status is not None and {line.reported_status, line.status} != {status.value}:
            changed |= set_line_status(
                session, runtime.policy, number, status.value, now, updated_at=now, source=source
            )
    report.add("changed" if changed else "unchanged")
