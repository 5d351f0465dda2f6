"""The world file: lines, recipients with hidden engagement, traffic and a provider model.

A world is what a simulation runs against. Nothing in it is read by healthgate's own
policy code: the provider model's rules (when a chat or a line goes AT_RISK, CRITICAL or
FLAGGED) live here and in ``scheduler.simulate.provider``, never in ``policies``.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from policies.config import LineNumber
from policies.errors import HealthgateError, cut, shown

#: A world file larger than this is a mistake (a trace belongs in a trace file).
MAX_WORLD_BYTES = 1_000_000

Probability = Annotated[float, Field(ge=0, le=1, strict=False)]
Positive = Annotated[float, Field(gt=0)]
Count = Annotated[int, Field(ge=0, le=100_000_000)]
Text = Annotated[str, Field(min_length=1, max_length=2000)]
Body = Text | Annotated[tuple[Text, ...], Field(min_length=1)]


def bodies(body: str | tuple[str, ...]) -> tuple[str, ...]:
    """A traffic item's bodies, one or several."""
    return (body,) if isinstance(body, str) else body


class WorldFileError(HealthgateError):
    """A world or trace file cannot be used; one line naming the file and the key."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path, self.key, self.problem = path, key, problem
        super().__init__(f"{path}: {key}: {problem}" if key else f"{path}: {problem}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Clock(_Section):
    """When the world starts, how long it runs, and how often the tick claims."""

    start: datetime
    days: Annotated[float, Field(gt=0, le=366)] = 30
    seed: int = 1
    #: Beat's tick: the simulation dispatches at these moments, as production does.
    tick_seconds: Annotated[float, Field(gt=0, le=3600)] = 2

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must carry a time zone (e.g. 2026-11-01T00:00:00Z)")
        return value.astimezone(UTC)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)

    @property
    def tick(self) -> timedelta:
        return timedelta(seconds=self.tick_seconds)


class ChatModel(_Section):
    """How the provider scores one conversation: unanswered sends since the last reply."""

    at_risk_after_unanswered: Annotated[int, Field(gt=0)] = 3
    critical_after_unanswered: Annotated[int, Field(gt=0)] = 6

    @model_validator(mode="after")
    def _ordered(self) -> ChatModel:
        if self.critical_after_unanswered < self.at_risk_after_unanswered:
            raise ValueError("critical_after_unanswered must be at least at_risk_after_unanswered")
        return self


class LineModel(_Section):
    """How the provider scores a line, from what it sees over trailing windows.

    Each threshold left out is never crossed. The worst signal wins.
    """

    at_risk_sends_per_minute: Positive | None = None
    critical_sends_per_minute: Positive | None = None
    #: Above this pace the line is FLAGGED: it sends nothing for ``flagged_days``.
    flag_sends_per_minute: Positive | None = None
    at_risk_new_conversations_per_day: Positive | None = None
    critical_new_conversations_per_day: Positive | None = None
    at_risk_distinct_recipients_per_hour: Positive | None = None
    critical_distinct_recipients_per_hour: Positive | None = None
    #: Share of the line's chats the model holds AT_RISK or CRITICAL.
    at_risk_unhealthy_share: Probability | None = None
    critical_unhealthy_share: Probability | None = None
    #: Chats a line needs before the share counts (a line with three chats says little).
    share_min_chats: Annotated[int, Field(ge=1)] = 20
    #: A line returns to HEALTHY after this long with no signal over a threshold.
    recover_after_hours: Annotated[float, Field(ge=0)] = 6
    flagged_days: Annotated[float, Field(gt=0)] = 14


class ProviderModel(_Section):
    """One provider's scoring: how often it looks, how late it tells, and its rules."""

    name: Annotated[str, Field(min_length=1, max_length=40)]
    #: The provider re-scores every line this often (its scores move in steps).
    evaluate_every_minutes: Annotated[float, Field(gt=0, le=1440)] = 15
    #: A new score reaches healthgate this much later (webhook and model lag).
    report_lag_minutes: Annotated[float, Field(ge=0, le=10080)] = 30
    chat: ChatModel = ChatModel()
    line: LineModel = LineModel()

    @property
    def evaluate_every(self) -> timedelta:
        return timedelta(minutes=self.evaluate_every_minutes)

    @property
    def lag(self) -> timedelta:
        return timedelta(minutes=self.report_lag_minutes)


class WorldLine(_Section):
    number: LineNumber
    provider: str


class Segment(_Section):
    """A share of the recipients and their hidden engagement."""

    name: Annotated[str, Field(min_length=1, max_length=40)]
    share: Annotated[float, Field(gt=0, le=1)]
    #: Chance that a recipient answers a message, and the mean minutes they take.
    reply_probability: Probability = 0.2
    reply_minutes: Positive = 30
    #: Chance that a message makes the recipient send STOP (within ``reply_minutes``).
    opt_out_probability: Probability = 0.005


class Recipients(_Section):
    count: Annotated[int, Field(gt=0, le=5_000_000)] = 10_000
    segments: tuple[Segment, ...] = (Segment(name="everyone", share=1.0),)

    @field_validator("segments")
    @classmethod
    def _whole(cls, segments: tuple[Segment, ...]) -> tuple[Segment, ...]:
        if not segments:
            raise ValueError("needs at least one segment")
        total = sum(s.share for s in segments)
        if abs(total - 1) > 1e-6:
            raise ValueError(f"shares must add up to 1 (they add up to {total:g})")
        names = [s.name for s in segments]
        if len(set(names)) != len(names):
            raise ValueError("segment names must differ")
        return segments


class Wave(_Section):
    """Every day at ``at`` (UTC), ``messages`` to recipients drawn from ``segment``."""

    name: str
    at: time
    messages: Count
    spread_minutes: Annotated[float, Field(ge=0, le=1440)] = 0
    #: One body, or several picked at random (near-identical bodies count together).
    body: Body
    segment: str | None = None
    expires_hours: Positive | None = None
    #: Days of the week it runs (0 = Monday); every day when left out.
    weekdays: tuple[Annotated[int, Field(ge=0, le=6)], ...] = (0, 1, 2, 3, 4, 5, 6)


class Campaign(_Section):
    """Once, from ``start``: ``messages`` spread over ``spread_hours``."""

    name: str
    start: datetime
    messages: Count
    spread_hours: Annotated[float, Field(ge=0, le=24 * 366)] = 0
    body: Body
    segment: str | None = None
    expires_hours: Positive | None = None

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must carry a time zone (e.g. 2026-11-27T15:00:00Z)")
        return value.astimezone(UTC)


class Replies(_Section):
    """One-to-one: the application answers a recipient's reply."""

    probability: Probability = 0.0
    delay_seconds: Annotated[float, Field(ge=0)] = 30
    body: Annotated[str, Field(min_length=1)] = "Thanks for your reply"


class Traffic(_Section):
    #: The application enqueues what it has every this many seconds, in one call
    #: (``enqueue_many``); 0: each message the moment it comes.
    enqueue_every_seconds: Annotated[float, Field(ge=0, le=86400)] = 0
    waves: tuple[Wave, ...] = ()
    campaigns: tuple[Campaign, ...] = ()
    replies: Replies = Replies()


class World(_Section):
    """A synthetic world: see ``docs/simulate/world.toml`` for every key, explained."""

    world: Clock
    providers: tuple[ProviderModel, ...] = Field(min_length=1)
    lines: tuple[WorldLine, ...] = Field(min_length=1)
    recipients: Recipients = Recipients()
    traffic: Traffic = Traffic()

    @model_validator(mode="after")
    def _references(self) -> World:
        providers = {p.name for p in self.providers}
        if len(providers) != len(self.providers):
            raise _At(("providers",), "provider names must differ")
        for i, line in enumerate(self.lines):
            if line.provider not in providers:
                raise _At(("lines", i, "provider"), f"names no provider ({shown(line.provider)})")
        numbers = [line.number for line in self.lines]
        for i, number in enumerate(numbers):
            if number in numbers[:i]:
                raise _At(("lines", i, "number"), f"{number} is declared twice")
        segments = {s.name for s in self.recipients.segments}
        named = [("waves", i, w.segment) for i, w in enumerate(self.traffic.waves)] + [
            ("campaigns", i, c.segment) for i, c in enumerate(self.traffic.campaigns)
        ]
        for kind, i, segment in named:
            if segment is not None and segment not in segments:
                raise _At(("traffic", kind, i, "segment"), f"names no segment ({shown(segment)})")
        return self

    def provider(self, name: str) -> ProviderModel:
        return next(p for p in self.providers if p.name == name)


class _At(ValueError):
    """A cross-reference error, with the key it is at."""

    def __init__(self, loc: tuple[int | str, ...], problem: str) -> None:
        self.loc = loc
        super().__init__(problem)


def key_of(loc: tuple[int | str, ...]) -> str:
    """``traffic.waves[0].at``: a pydantic location as it reads in the file."""
    key = ""
    for part in loc:
        text = cut(str(part))
        key += f"[{text}]" if isinstance(part, int) else (f".{text}" if key else text)
    return key


def parse_world(data: dict[str, Any], path: str) -> World:
    """Validate parsed TOML into a world; the first bad key as a ``WorldFileError``."""
    try:
        return World.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, _At):
            raise WorldFileError(path, key_of(cause.loc), str(cause)) from None
        problem = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            problem = "unknown key"
        elif error["type"] == "missing":
            problem = "is required"
        elif isinstance(error.get("input"), str | int | float | bool):
            problem = f"{problem} (got {shown(error['input'])})"
        raise WorldFileError(path, key_of(loc) or "(top level)", problem) from None


def load_world(path: str | Path) -> World:
    """Read and validate a world file; every way it can fail is one ``WorldFileError``."""
    name = str(path)
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_WORLD_BYTES + 1)
    except FileNotFoundError:
        raise WorldFileError(name, "", "no such file") from None
    except OSError as exc:
        raise WorldFileError(name, "", f"cannot be read ({exc.strerror})") from None
    if len(raw) > MAX_WORLD_BYTES:
        raise WorldFileError(name, "", f"is larger than {MAX_WORLD_BYTES:,} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise WorldFileError(name, "", f"is not UTF-8 text (at byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        raise WorldFileError(name, "", f"is not valid TOML ({cut(str(exc))})") from None
    return parse_world(data, name)
