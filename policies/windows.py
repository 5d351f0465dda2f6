"""Sending windows: the local hours a message may go in, in one or several time zones.

A window is wall-clock time (``08:00-21:00``) in a zone; the zone database says what
UTC instants that is on each day, so daylight saving time is never a fixed offset. A
recipient whose number may be in several zones gets the hours that hold in all of them.
Pure: no clock is read, every instant is passed in.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import NamedTuple
from zoneinfo import TZPATH, ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE
from phonenumbers import timezone as number_zones
from phonenumbers.tzdata import TIMEZONE_DATA

#: How to write a window: ``HH:MM-HH:MM``, ``24:00`` allowed as an end.
_WINDOW = re.compile(r"(\d\d):(\d\d)-(\d\d):(\d\d)")
#: Days of the week as a policy names them, Monday first (``date.weekday()``).
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: How far ahead an opening is looked for: a week covers any window with at least one
#: day, plus a day for a window that starts the evening before.
HORIZON_DAYS = 8
#: What ``phonenumbers`` answers for a number it cannot place.
UNKNOWN_ZONE = "Etc/Unknown"


@dataclass(frozen=True, slots=True)
class Window:
    """Local hours on some days: ``start`` to ``end`` in minutes after midnight.

    An ``end`` at or before ``start`` runs past midnight (``21:00-08:00``); the day it
    starts on is the one ``days`` names.
    """

    start: int
    end: int
    #: The weekdays it opens on (0 is Monday); None: every day.
    days: frozenset[int] | None = None

    @property
    def overnight(self) -> bool:
        return self.end <= self.start

    def __str__(self) -> str:
        hours = f"{_hhmm(self.start)}-{_hhmm(self.end)}"
        if self.days is None:
            return hours
        return f"{hours} {','.join(WEEKDAYS[d] for d in sorted(self.days))}"


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@lru_cache(maxsize=1024)
def window_of(text: str, days: tuple[str, ...] | None = None) -> Window:
    """A policy's window, parsed once (the gate asks for it on every message)."""
    return parse_window(text, days)


def parse_window(text: str, days: Iterable[str] | None = None) -> Window:
    """``"08:00-21:00"`` (and weekday names) as a Window; ValueError says what is wrong."""
    found = _WINDOW.fullmatch(text)
    if found is None:
        raise ValueError("must be HH:MM-HH:MM in 24-hour local time, such as 08:00-21:00")
    h1, m1, h2, m2 = (int(part) for part in found.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2):
        raise ValueError("has an hour past 23:59 (24:00 may only end a window)")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if end == start:
        raise ValueError("opens and closes at the same time: 00:00-24:00 is any time")
    return Window(start, end, None if days is None else parse_days(days))


def parse_days(days: Iterable[str]) -> frozenset[int]:
    """Weekday names (``mon`` … ``sun``) as ``date.weekday()`` numbers."""
    names = list(days)
    unknown = [name for name in names if name not in WEEKDAYS]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a day: use {', '.join(WEEKDAYS)}")
    if not names:
        raise ValueError("names no day: the window would never open")
    return frozenset(WEEKDAYS.index(name) for name in names)


def zone(name: str) -> ZoneInfo:
    """The zone database's zone ``name``; ValueError when it has none of that name."""
    try:
        return _zone(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            "is not a time zone of the IANA database, such as America/New_York"
        ) from None


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    if not name or name != name.strip() or name.startswith(("/", ".")):
        raise ValueError(name)
    return ZoneInfo(name)


@lru_cache(maxsize=65_536)
def number_zones_of(number: str) -> tuple[str, ...]:
    """The zones ``number`` (E.164) may be in, by its prefix; () when none is known."""
    try:
        parsed = phonenumbers.parse(number)
    except phonenumbers.NumberParseException:
        return ()
    names = number_zones.time_zones_for_number(parsed)
    known = []
    for name in names:
        if name == UNKNOWN_ZONE:
            continue
        try:
            _zone(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue  # a zone the local database lacks: the others still hold
        known.append(name)
    return tuple(sorted(known))


def has_zone(number: str) -> bool:
    """Whether ``number`` (E.164, valid) has a zone: ``number_zones_of`` is not empty.

    Cheap for nearly every number: when its country code has zones of its own, every
    valid number of it has some (its area's, or the country's), so the costly look-up
    of its type is left for the gate.
    """
    digits = number[1:]
    for size in (1, 2, 3):
        if int(digits[:size] or 0) in COUNTRY_CODE_TO_REGION_CODE:
            if digits[:size] in TIMEZONE_DATA:
                return True
            break
    return bool(number_zones_of(number))


def own_zones_first(zones: Sequence[str], number: str) -> list[str]:
    """``zones`` with those of the number's own country first (the zone database's
    ``zone.tab``): a British mobile's zones open together, and London names them best."""
    if len(zones) < 2:
        return list(zones)
    country = _country_of(number)
    own = _zones_by_country().get(country, frozenset()) if country else frozenset()
    return sorted(zones, key=lambda name: name not in own)


def _country_of(number: str) -> str | None:
    """The main region of the number's country code (``GB`` for +44, ``US`` for +1)."""
    digits = number[1:]
    for size in (1, 2, 3):
        code = int(digits[:size] or 0)
        if code in COUNTRY_CODE_TO_REGION_CODE:
            return str(phonenumbers.region_code_for_country_code(code))
    return None


@lru_cache(maxsize=1)
def _zones_by_country() -> dict[str, frozenset[str]]:
    """Each country's zones, from the zone database's ``zone.tab`` (empty without one)."""
    found: dict[str, set[str]] = {}
    for line in _zone_tab().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) >= 3:
            found.setdefault(fields[0], set()).add(fields[2])
    return {country: frozenset(names) for country, names in found.items()}


def _zone_tab() -> str:
    try:
        return (resources.files("tzdata.zoneinfo") / "zone.tab").read_text(encoding="utf-8")
    except (ModuleNotFoundError, OSError):
        pass
    for folder in TZPATH:
        try:
            return (Path(folder) / "zone.tab").read_text(encoding="utf-8")
        except OSError:
            continue
    return ""


def recipient_zones(number: str, recipient_tz: str | None) -> tuple[str, ...]:
    """The zones a window is read in for ``number``: the given one, else the number's."""
    if recipient_tz is not None:
        return (recipient_tz,)
    return number_zones_of(number)


def is_open(window: Window, zone_name: str, at: datetime) -> bool:
    """Whether ``at`` falls inside ``window`` on the wall clock of ``zone_name``."""
    local = at.astimezone(_zone(zone_name))
    minute = local.hour * 60 + local.minute
    today = local.weekday()
    if not window.overnight:
        return window.start <= minute < window.end and _on(window, today)
    # Past the start, on a day it opens; or before the end, the day after one it opened.
    return (minute >= window.start and _on(window, today)) or (
        minute < window.end and _on(window, (today - 1) % 7)
    )


def _on(window: Window, weekday: int) -> bool:
    return window.days is None or weekday in window.days


class Span(NamedTuple):
    """Instants from ``start`` (included) to ``end`` (excluded)."""

    start: datetime
    end: datetime


@lru_cache(maxsize=4096)
def spans(window: Window, zone_name: str, day: date) -> tuple[Span, ...]:
    """The UTC spans ``window`` is open in ``zone_name``, in order, from two local days
    before the UTC ``day`` (a window open since the evening before, in any zone) to
    ``HORIZON_DAYS`` after it."""
    tz = _zone(zone_name)
    first = day - timedelta(days=2)
    found = []
    for offset in range(HORIZON_DAYS + 3):
        day = first + timedelta(days=offset)
        if not _on(window, day.weekday()):
            continue
        end_day = day + timedelta(days=1) if window.overnight else day
        opens = wall_instant(day, window.start, tz)
        closes = wall_instant(end_day, window.end, tz)
        if closes > opens:
            found.append(Span(opens, closes))
    return tuple(found)


def wall_instant(day: date, minutes: int, tz: ZoneInfo) -> datetime:
    """The first instant whose wall clock in ``tz`` reads ``minutes`` after midnight of
    ``day``, or later: a time that the clocks skip (spring forward) opens when they land."""
    wall = datetime.combine(day, time()) + timedelta(minutes=minutes)
    early = wall.replace(tzinfo=tz).astimezone(UTC)
    if early.astimezone(tz).replace(tzinfo=None) == wall:
        return early  # it exists; twice on a fall-back night, and the first counts
    # Skipped: the first instant past it is the jump, between the two readings of it.
    low = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    high = early
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0) + (timedelta(seconds=1) if high.microsecond else timedelta())


def intersection(lists: Sequence[Sequence[Span]]) -> list[Span]:
    """The spans inside every list of ``lists`` (each in order, none overlapping)."""
    if not lists:
        return []
    common = list(lists[0])
    for other in lists[1:]:
        common = list(_both(common, other))
    return common


def _both(left: Sequence[Span], right: Sequence[Span]) -> Iterator[Span]:
    i = j = 0
    while i < len(left) and j < len(right):
        start = max(left[i].start, right[j].start)
        end = min(left[i].end, right[j].end)
        if start < end:
            yield Span(start, end)
        if left[i].end <= right[j].end:
            i += 1
        else:
            j += 1


def next_span(common: Sequence[Span], now: datetime) -> Span | None:
    """The span open at ``now``, or the next one to open (None inside the horizon)."""
    return next((span for span in common if span.end > now), None)


def opening_zone(window: Window, zones: Sequence[str], at: datetime) -> str:
    """The zone whose clock opens ``window`` at ``at`` (the one that binds), else the first."""
    for name in zones:
        local = at.astimezone(_zone(name))
        if local.hour * 60 + local.minute == window.start:
            return name
    return zones[0]


def spread_offset(key: str, spread: timedelta) -> timedelta:
    """A fixed share of ``spread`` for ``key`` (a recipient): released backlogs are spread
    evenly over it, each recipient's messages together and in their order."""
    if spread <= timedelta(0):
        return timedelta(0)
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    share = int.from_bytes(digest) / 2**64
    return timedelta(seconds=int(spread.total_seconds() * share))


__all__ = [
    "HORIZON_DAYS",
    "WEEKDAYS",
    "Span",
    "Window",
    "has_zone",
    "intersection",
    "is_open",
    "next_span",
    "number_zones_of",
    "opening_zone",
    "own_zones_first",
    "parse_days",
    "parse_window",
    "recipient_zones",
    "spans",
    "spread_offset",
    "wall_instant",
    "window_of",
    "zone",
]
