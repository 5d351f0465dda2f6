"""Sending hours: a message goes only inside its category's window, on the recipient's
clock, and inside its line's own hours; outside them it is held until both are open."""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import lru_cache
from typing import NamedTuple

from policies.codes import Code
from policies.config import CategoryPolicy, Policy
from policies.decision import Decision
from policies.statuses import Action
from policies.windows import (
    Span,
    Window,
    intersection,
    is_open,
    opening_zone,
    own_zones_first,
    recipient_zones,
    spans,
    spread_offset,
    zone,
)

#: The rules of a category the policy no longer defines (it was removed while messages
#: of it waited): marketing's, the safe side.
FALLBACK_CATEGORY = "marketing"
#: Zones a reason lists before it says how many more there are.
_ZONES_SHOWN = 3


def rules_of(policy: Policy, category: str) -> CategoryPolicy:
    """The policy of ``category``, or marketing's for a category no longer defined."""
    rules = policy.category(category) or policy.category(FALLBACK_CATEGORY)
    assert rules is not None  # the default categories are always there
    return rules


class Hours(NamedTuple):
    """A window, and the zones whose clocks must all read it open."""

    window: Window
    zones: tuple[str, ...]

    def open_at(self, now: datetime) -> bool:
        return all(is_open(self.window, name, now) for name in self.zones)


@lru_cache(maxsize=4096)
def common_spans(held: tuple[Hours, ...], day: date) -> tuple[Span, ...]:
    """The spans inside every window of ``held`` around the UTC ``day`` (the days before
    it, and the horizon after): one computation for all the messages of a night."""
    return tuple(intersection([spans(h.window, name, day) for h in held for name in h.zones]))


def outside_hours(
    recipient: str,
    category: str,
    recipient_tz: str | None,
    line: str,
    expires_at: datetime | None,
    policy: Policy,
    now: datetime,
) -> Decision | None:
    """THROTTLE (``quiet_hours`` or ``line_hours``) until the message's window and its
    line's hours are both open; None when they are open at ``now``.

    A number that may be in several zones gets the hours that hold in all of them. With
    no zone to read the window in, or no common hour, the message is deferred: its
    maximum hold expires it unless a policy change or an explicit zone frees it.
    """
    rules = rules_of(policy, category)
    theirs = None
    if rules.hours is not None:
        theirs = Hours(rules.hours, recipient_zones(recipient, recipient_tz))
        if not theirs.zones:
            reason = (
                f"the time zone of {recipient} is unknown, so the {category} window "
                f"{rules.hours} cannot be read: give recipient_tz"
            )
            return _no_hours(reason, policy, now, expires_at)
    ours = line_hours(policy, line)
    recipient_open = theirs is None or theirs.open_at(now)
    if recipient_open and (ours is None or ours.open_at(now)):
        return None
    held = tuple(hours for hours in (theirs, ours) if hours is not None)
    common = common_spans(held, now.astimezone(UTC).date())
    # Opening later than now: a window read open by the wall clock is never held.
    span = next((s for s in common if s.start > now), None)
    if span is None:
        reason = f"no hour of the coming week is inside {' and '.join(map(_named, held))}"
        return _no_hours(reason + ": give recipient_tz", policy, now, expires_at)
    if not recipient_open:
        assert theirs is not None
        # Named as the recipient would: their own country's zones first.
        named = Hours(theirs.window, tuple(own_zones_first(theirs.zones, recipient)))
        code, clock = Code.QUIET_HOURS, opening_zone(named.window, named.zones, span.start)
        reason = f"{category} goes {named.window} recipient time, outside it in {_named(named)}"
    else:
        assert ours is not None
        code, clock = Code.LINE_HOURS, ours.zones[0]
        reason = f"line {line} sends {ours.window} {clock} only"
    # Each recipient at its own moment of the spread, which stays inside the window.
    spread = min(rules.release_spread, (span.end - span.start) / 2)
    turn = span.start + spread_offset(recipient, spread)
    reason += f": held until {_local(span.start, clock)}"
    if turn > span.start:
        reason += f", let out at {turn.astimezone(UTC):%H:%M:%S} UTC in a spread of the backlog"
    return Decision(Action.THROTTLE, code, reason, _before(turn, expires_at))


def line_hours(policy: Policy, line: str) -> Hours | None:
    """The line's own sending hours, if the policy gives it some."""
    found = policy.hours_of_line(line)
    return None if found is None else Hours(found[0], (found[1],))


def _no_hours(reason: str, policy: Policy, now: datetime, expires_at: datetime | None) -> Decision:
    return Decision(
        Action.DEFER, Code.QUIET_HOURS, reason, _before(now + policy.chat.max_hold, expires_at)
    )


def _local(moment: datetime, name: str) -> str:
    """``moment`` on ``name``'s clock, with the zone named: ``2026-03-08 08:00 America/…``."""
    return f"{moment.astimezone(zone(name)):%Y-%m-%d %H:%M} {name}"


def _named(hours: Hours) -> str:
    zones = hours.zones
    if len(zones) == 1:
        return zones[0]
    shown = ", ".join(zones[:_ZONES_SHOWN])
    more = len(zones) - _ZONES_SHOWN
    return f"every zone of the number ({shown}{f' and {more} more' if more > 0 else ''})"


def _before(moment: datetime, expires_at: datetime | None) -> datetime:
    return moment if expires_at is None else min(moment, expires_at)


def window_text(window: Window | None) -> str:
    """A window as ``explain`` shows it: its hours, or ``any time``."""
    return "any time" if window is None else str(window)


__all__ = [
    "FALLBACK_CATEGORY",
    "Hours",
    "line_hours",
    "outside_hours",
    "rules_of",
    "window_text",
]
