"""The policy file: lines and every threshold of the gate, validated on load."""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Iterator, Mapping
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from policies.e164 import to_e164
from policies.errors import InvalidInput, PolicyFileError, cut, shown
from policies.statuses import DEFAULT_CATEGORY as DEFAULT_CATEGORY
from policies.windows import Window, parse_days, parse_window, window_of, zone

Provider = Literal["log", "linq", "360dialog"]
#: What a shell accepts as a variable name: the file names the variable, not the key.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Every ``api_key_env`` starts with this, so the policy file can only name variables set
#: for 360dialog keys: not the Linq key, the webhook secret or the database password,
#: which would otherwise be sent to 360dialog in the ``D360-API-KEY`` header.
D360_KEY_ENV_PREFIX = "HEALTHGATE_D360_KEY_"
#: The largest policy file read: a thousand lines declared take about 100 KiB.
MAX_FILE_BYTES = 1024 * 1024
#: The deepest a value may nest (a line's caps are 4 deep): deeper is a mistake, and a
#: value nested thousands deep would exhaust the stack of any code that walks it.
MAX_DEPTH = 16
#: A key of more than MAX_DEPTH dotted parts where keys stand (a line's start, a header's
#: bracket, an inline table's brace or comma). tomllib reads such a key in time quadratic
#: in its parts (20,000 take 12 s), so it is refused before parsing; it would nest too
#: deep anyway.
_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
_LONG_KEY = re.compile(
    rf"(?:^|[{{,])[ \t]*\[*[ \t]*{_PART}(?:[ \t]*\.[ \t]*{_PART}){{{MAX_DEPTH}}}", re.MULTILINE
)
#: The highest value of each cap, per line. A cap above it no longer protects a line (it
#: is above what any provider healthgate speaks to takes from one number), so a larger
#: value is a typo or a way round the cap; the README explains each.
CAP_MAXIMA: Mapping[str, int] = {
    # 1,000 a second: WhatsApp Cloud API's highest throughput for one number.
    "sends_per_minute": 60_000,
    # WhatsApp's highest tier with a limit: 100,000 new conversations a day.
    "new_conversations_per_day": 100_000,
    "distinct_recipients_per_hour": 100_000,
    # Ten times the busiest tier's new conversations; Linq publishes about 7,000.
    "sends_per_day": 1_000_000,
    # Twice Linq's 30 a minute per pair; WhatsApp allows about 10.
    "sends_per_recipient_per_minute": 60,
    # A day at the highest per-minute pace to one person: past it nobody is reading.
    "sends_per_recipient_per_day": 86_400,
}
# Strict: TOML has real numbers, so `true` or "20" for a threshold is a mistake, not 1 or 20.
SendsPerMinute = Annotated[int, Field(gt=0, le=CAP_MAXIMA["sends_per_minute"], strict=True)]
NewPerDay = Annotated[int, Field(gt=0, le=CAP_MAXIMA["new_conversations_per_day"], strict=True)]
DistinctPerHour = Annotated[
    int, Field(gt=0, le=CAP_MAXIMA["distinct_recipients_per_hour"], strict=True)
]
SendsPerDay = Annotated[int, Field(gt=0, le=CAP_MAXIMA["sends_per_day"], strict=True)]
PerRecipientPerMinute = Annotated[
    int, Field(gt=0, le=CAP_MAXIMA["sends_per_recipient_per_minute"], strict=True)
]
PerRecipientPerDay = Annotated[
    int, Field(gt=0, le=CAP_MAXIMA["sends_per_recipient_per_day"], strict=True)
]

#: The longest window, hold or ramp a policy may name: 30 days. A message held longer is
#: stale, and an unbounded one (``inf``, ``1e12``) loads but overflows the gate's date
#: arithmetic later.
MAX_HOURS = 30 * 24
Hours = Annotated[float, Field(gt=0, le=MAX_HOURS, strict=True)]
#: The longest backoff between two attempts: a day.
MAX_RETRY_SECONDS = 86_400
Seconds = Annotated[float, Field(gt=0, le=MAX_RETRY_SECONDS, strict=True)]
#: A flagged line is probed at least daily: longer, a line nobody fixes sends nothing.
MAX_PROBE_MINUTES = 24 * 60
#: Attempts of one message: a thousand at the default backoff's hour outlast any hold.
MAX_ATTEMPTS = 1_000
#: Unanswered messages an AT_RISK chat may have: more is no throttle at all.
MAX_UNANSWERED = 20
#: Clock tolerance of a signal: an hour covers any skew; a day would let a signal dated
#: tomorrow lock the state it reports for a day.
MAX_TOLERANCE_SECONDS = 3600


def _keyword(word: str) -> str:
    if not word.strip():
        raise ValueError("is empty or only whitespace: it would match messages with no text")
    if word != word.strip():
        raise ValueError("has spaces around it, which the linq and strict modes never match")
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in word):
        # A zero-width space, a NUL or a byte-order mark: a word no recipient types,
        # which would leave the list looking full while nothing matches.
        raise ValueError("holds an invisible or control character: nobody can type it")
    if not any(ch.isalnum() for ch in word):
        raise ValueError("has no letter or digit: it is not a word a recipient types")
    return word


#: An opt-out or opt-in keyword as the recipient types it.
Keyword = Annotated[str, Field(strict=True), AfterValidator(_keyword)]


def _line_number(value: object) -> str:
    """A line's number in E.164, or the problem for pydantic to report under its key."""
    try:
        return to_e164(value, "number")
    except InvalidInput as exc:
        raise ValueError(exc.problem) from None


#: A line's number, written any way ``phonenumbers`` reads it, kept in E.164.
LineNumber = Annotated[str, BeforeValidator(_line_number)]


def _window_text(value: str) -> str:
    parse_window(value)
    return value


def _day_names(value: tuple[str, ...]) -> tuple[str, ...]:
    parse_days(value)
    return value


#: Local hours (``08:00-21:00``), and the days they open on (``["mon", "tue"]``), as
#: a category's or a line's window is written.
WindowText = Annotated[str, AfterValidator(_window_text)]
DayNames = Annotated[tuple[str, ...], AfterValidator(_day_names)]


class _Section(BaseModel):
    # A misspelt key is an error, not a silently ignored default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptOutMode(StrEnum):
    """How inbound text is matched against the opt-out and opt-in keywords."""

    #: The whole inbound text equals a keyword, case included (the provider's documented rule).
    EXACT = "exact"
    #: Linq's newer rule: trimmed, case exact except ``OPT OUT`` in any form; any later
    #: non-keyword message opts the recipient back in.
    LINQ = "linq"
    #: Trimmed and case-insensitive: errs on the side of stopping.
    STRICT = "strict"


class OptOutScope(StrEnum):
    """How far an opt-out reaches."""

    #: The recipient on every line of the account, as Linq enforces it.
    ACCOUNT = "account"
    #: Only the chat the opt-out arrived in.
    CHAT = "chat"


class Caps(_Section):
    """Line-level activity caps; every worker and host shares them.

    The defaults sit well under what Linq publishes (about 7,000 messages a line a day,
    30 a minute per sender-recipient pair), because the provider scores a line on its
    activity long before a hard limit answers 429.
    """

    #: Pace: 20 a minute spreads a day's 3,000 over hours instead of a burst.
    sends_per_minute: SendsPerMinute = 20
    #: Brand-new conversations are what the provider watches most closely.
    new_conversations_per_day: NewPerDay = 100
    #: Many distinct recipients in a short window looks like a blast.
    distinct_recipients_per_hour: DistinctPerHour = 60
    #: Under half of Linq's ~7,000 a day, leaving room for replies and retries.
    sends_per_day: SendsPerDay = 3000
    #: A sixth of Linq's 30 a minute per pair: a person does not read faster than that.
    sends_per_recipient_per_minute: PerRecipientPerMinute = 5
    #: A person does not want more than a few dozen messages a day from one business,
    #: and one who gets them blocks or reports the line, the signal providers score
    #: hardest. 20 leaves a live conversation room while an application stuck in a loop
    #: stops after four minutes at the per-recipient minute pace instead of sending
    #: hundreds; it sits far under ``sends_per_day``. Raise it per line for one that
    #: holds long conversations.
    sends_per_recipient_per_day: PerRecipientPerDay = 20


class CapsOverride(_Section):
    """Per-line caps: any key left out takes the value of ``[caps]``."""

    sends_per_minute: SendsPerMinute | None = None
    new_conversations_per_day: NewPerDay | None = None
    distinct_recipients_per_hour: DistinctPerHour | None = None
    sends_per_day: SendsPerDay | None = None
    sends_per_recipient_per_minute: PerRecipientPerMinute | None = None
    sends_per_recipient_per_day: PerRecipientPerDay | None = None


class LineConfig(_Section):
    """One sending line as declared by the user."""

    number: LineNumber
    provider: Provider = "log"
    caps: CapsOverride = CapsOverride()
    #: The environment variable holding the line's API key (360dialog keys are per
    #: number); the file names the variable, never the secret.
    api_key_env: Annotated[str | None, Field(validate_default=True)] = None
    #: The business's own hours (``09:00-18:00``) in ``timezone``: the line sends
    #: nothing outside them, whatever the message's category.
    window: WindowText | None = None
    #: The days ``window`` opens on (``["mon", "tue"]``); every day when left out.
    days: DayNames | None = None
    #: The zone of the line's window (an IANA name such as ``America/New_York``).
    timezone: Annotated[str | None, Field(validate_default=True)] = None

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            if info.data.get("window") is not None:
                raise ValueError("a line with a window needs the time zone of its hours")
            return None
        zone(value)
        return value

    @property
    def hours(self) -> Window | None:
        """The line's own sending window, if it has one."""
        return None if self.window is None else window_of(self.window, self.days)

    @field_validator("api_key_env")
    @classmethod
    def _key_env(cls, value: str | None, info: ValidationInfo) -> str | None:
        provider = info.data.get("provider")
        if value is None:
            if provider == "360dialog":
                raise ValueError("a 360dialog line needs the environment variable of its API key")
            return None
        if provider != "360dialog":
            raise ValueError("only 360dialog lines take an API key variable")
        if not _ENV_NAME.fullmatch(value):
            raise ValueError("is not an environment variable name (put the key in the environment)")
        if not value.startswith(D360_KEY_ENV_PREFIX) or value == D360_KEY_ENV_PREFIX:
            # A name under HEALTHGATE_ is no secret and may be shown; anything else may be
            # a key pasted in by mistake.
            got = f" (got {shown(value)})" if value.startswith("HEALTHGATE_") else ""
            raise ValueError(
                f"must name a variable {D360_KEY_ENV_PREFIX}<something>{got}: only those "
                "are sent to 360dialog"
            )
        return value


class ChatPolicy(_Section):
    """What the gate does with AT_RISK and CRITICAL chats."""

    #: Outbound messages an AT_RISK chat may have unanswered inside the window.
    at_risk_max_unanswered: Annotated[int, Field(gt=0, le=MAX_UNANSWERED, strict=True)] = 1
    at_risk_window_hours: Hours = 24
    #: How long a deferred message may be held before it expires.
    critical_max_hold_hours: Hours = 72

    @property
    def at_risk_window(self) -> timedelta:
        return timedelta(hours=self.at_risk_window_hours)

    @property
    def max_hold(self) -> timedelta:
        return timedelta(hours=self.critical_max_hold_hours)


class LinePolicy(_Section):
    """What the gate does with AT_RISK and CRITICAL lines."""

    #: Multiplier on every cap of an AT_RISK line.
    at_risk_pace_factor: Annotated[float, Field(gt=0, le=1, strict=True)] = 0.5
    #: Whether an AT_RISK line may take new recipients when no HEALTHY line can.
    at_risk_takes_new_recipients: bool = False
    #: A line back to HEALTHY ramps from the AT_RISK pace to its full caps over this
    #: long, as senders warm an IP, so its backlog does not trigger the next AT_RISK.
    #: 24 h: one full daily window of the caps the provider scores.
    recovery_ramp_hours: Annotated[float, Field(ge=0, le=MAX_HOURS, strict=True)] = 24
    #: A line healthgate flagged itself (a send answered "line cannot send", Linq 2027)
    #: sends one message as a probe this long after the answer: accepted, the flag is
    #: lifted; refused, the line waits as long again. Linq's phone number list carries
    #: no runtime status, so without a probe such a line would wait for a person.
    probe_after_minutes: Annotated[float, Field(gt=0, le=MAX_PROBE_MINUTES, strict=True)] = 30

    @property
    def recovery_ramp(self) -> timedelta:
        return timedelta(hours=self.recovery_ramp_hours)

    @property
    def probe_after(self) -> timedelta:
        return timedelta(minutes=self.probe_after_minutes)


class ContentPolicy(_Section):
    """Content variation: repeated near-identical bodies amplify a bad signal."""

    #: A body near-identical to one sent to an AT_RISK chat inside this window is held.
    at_risk_repeat_window_hours: Hours = 24
    #: Distinct recipients one line may send the same (near-identical) body to in an hour:
    #: a third of the default ``distinct_recipients_per_hour``, so one template cannot
    #: fill a line's hour (identical text to many people is the classic spam signal).
    same_body_max_recipients_per_hour: DistinctPerHour = 20

    @property
    def at_risk_repeat_window(self) -> timedelta:
        return timedelta(hours=self.at_risk_repeat_window_hours)


class OptOutPolicy(_Section):
    mode: OptOutMode = OptOutMode.EXACT
    scope: OptOutScope = OptOutScope.ACCOUNT
    opt_out_keywords: tuple[Keyword, ...] = (
        "STOP",
        "UNSUBSCRIBE",
        "OPTOUT",
        "CANCEL",
        "END",
        "QUIT",
    )
    #: May be empty: then no keyword clears an opt-out.
    opt_in_keywords: tuple[Keyword, ...] = ("OPTIN",)

    @field_validator("opt_out_keywords")
    @classmethod
    def _some_opt_out(cls, words: tuple[str, ...]) -> tuple[str, ...]:
        if not words:
            raise ValueError("needs at least one keyword (got []): none turns opt-outs off")
        return words

    @field_validator("opt_in_keywords")
    @classmethod
    def _not_both(cls, words: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        opt_out = {word.casefold() for word in info.data.get("opt_out_keywords", ())}
        both = [word for word in words if word.casefold() in opt_out]
        if both:
            raise ValueError(
                f"{both[0]!r} is an opt-out keyword too: a recipient saying it means one thing"
            )
        return words


class SignalPolicy(_Section):
    """How signals from providers and people are taken."""

    #: A signal's time may be at most this far ahead of when healthgate receives it.
    #: Later is bad input: a time from the future would win every comparison and lock
    #: the state it reports. Five minutes is Standard Webhooks' own clock tolerance.
    time_tolerance_seconds: Annotated[float, Field(ge=0, le=MAX_TOLERANCE_SECONDS, strict=True)] = (
        300
    )

    @property
    def time_tolerance(self) -> timedelta:
        return timedelta(seconds=self.time_tolerance_seconds)


class DispatchPolicy(_Section):
    """Retries after a provider's transient failure."""

    max_attempts: Annotated[int, Field(gt=0, le=MAX_ATTEMPTS, strict=True)] = 5
    retry_base_seconds: Seconds = 30
    retry_max_seconds: Seconds = 3600


#: What a category may be called: an application passes it as ``category``.
CATEGORY_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
#: The highest priority: a hundred levels are more than any team tells apart.
MAX_PRIORITY = 100
#: The longest spread of a released backlog: a day, the longest a window can be.
MAX_SPREAD_MINUTES = 24 * 60


def _category_name(name: str) -> str:
    if not CATEGORY_NAME.fullmatch(name):
        raise ValueError(
            f"{shown(name)} is not a category name: a lower-case letter, then up to 31 "
            "lower-case letters, digits or underscores"
        )
    return name


#: A category's name, as a policy key and as an enqueue's ``category``.
CategoryName = Annotated[str, Field(strict=True), AfterValidator(_category_name)]


class CategoryPolicy(_Section):
    """When messages of one category may go, in the recipient's local time, and how soon."""

    #: Local hours in the recipient's time zone (``08:00-21:00``); any time when left
    #: out, or ``00:00-24:00``.
    window: WindowText | None = None
    #: The days ``window`` opens on (``["mon", "tue"]``); every day when left out.
    days: DayNames | None = None
    #: Higher goes first when a line's caps cannot take every due message.
    priority: Annotated[int, Field(ge=0, le=MAX_PRIORITY, strict=True)] = 0
    #: The share of each line-wide cap its messages may use; the rest is kept for the
    #: categories above it, so a campaign that fills a line leaves room for a passcode.
    cap_share: Annotated[float, Field(gt=0, le=1, strict=True)] = 1.0
    #: Messages held for the window are let out over this long once it opens, each
    #: recipient at its own fixed moment, so a night's backlog is not all due at the
    #: opening minute (the caps and the recovery ramp still apply on top).
    release_spread_minutes: Annotated[float, Field(ge=0, le=MAX_SPREAD_MINUTES, strict=True)] = 0

    @field_validator("release_spread_minutes")
    @classmethod
    def _spread(cls, value: float, info: ValidationInfo) -> float:
        text = info.data.get("window")
        if text is None or not value:
            return value
        hours = parse_window(text)
        length = (hours.end - hours.start) % (24 * 60) or 24 * 60
        if value >= length:
            raise ValueError(
                f"is not shorter than the window {text} ({length} minutes): messages let "
                "out late in the spread would find it closed again"
            )
        return value

    @property
    def hours(self) -> Window | None:
        """The category's window, if it has one (parsed once)."""
        return None if self.window is None else window_of(self.window, self.days)

    @property
    def release_spread(self) -> timedelta:
        return timedelta(minutes=self.release_spread_minutes)


#: The categories every policy has, with what a policy leaves out of them: marketing
#: texts between 8 am and 9 pm where the recipient is (the hours US telemarketing
#: rules and carriers expect), let out over half an hour once the window opens, using
#: at most four fifths of a line's caps; transactional messages (passcodes, receipts)
#: at any time, first, and with the fifth a campaign leaves them.
DEFAULT_CATEGORIES: Mapping[str, Mapping[str, Any]] = {
    "transactional": {"priority": 10},
    "marketing": {
        "window": "08:00-21:00",
        "priority": 0,
        "release_spread_minutes": 30,
        "cap_share": 0.8,
    },
}


def _default_categories() -> dict[str, CategoryPolicy]:
    return {name: CategoryPolicy(**fields) for name, fields in DEFAULT_CATEGORIES.items()}


class EarlyWarningMode(StrEnum):
    """What healthgate does with its own estimate of a chat's and a line's health."""

    #: Not estimated at all.
    OFF = "off"
    #: Estimated and written beside each decision it would have changed; sends unchanged.
    SHADOW = "shadow"
    #: The gate uses the more severe of the provider's status and the estimate.
    ENFORCE = "enforce"


Share = Annotated[float, Field(ge=0, le=1, strict=True)]
#: A count threshold of the estimate (a streak, a sample size).
Count = Annotated[int, Field(gt=0, le=100_000, strict=True)]
#: Rejections per hundred sends.
PerHundred = Annotated[float, Field(gt=0, le=100, strict=True)]


class EarlyWarningPolicy(_Section):
    """healthgate's own estimate of health, from the sends and replies it records.

    Each signal has an AT_RISK and a CRITICAL threshold; ``*_critical`` must be as bad
    as ``*_at_risk`` or worse. The README defends each default.
    """

    mode: EarlyWarningMode = EarlyWarningMode.OFF
    #: The window of a line's rates (reply, opt-out, chats not HEALTHY): a day, the
    #: window the providers score a line's activity over.
    window_hours: Hours = 24
    #: A line's rates speak once it sent to this many chats inside the window: fewer
    #: is noise (one silent recipient of three is no trend).
    min_chats: Count = 20
    #: Sends younger than this are not counted in a line's reply rate yet: a recipient
    #: answers within minutes to hours, and a burst just sent has had no time to.
    reply_wait_hours: Annotated[float, Field(ge=0, le=MAX_HOURS, strict=True)] = 2
    #: Share of the chats sent to in the window (before ``reply_wait_hours``) that
    #: replied since: below, AT_RISK. Low engagement only slows a line by default (0
    #: turns CRITICAL off): a pause is for what the provider punishes outright.
    line_reply_rate_at_risk: Share = 0.05
    line_reply_rate_critical: Share = 0
    #: Opt-outs per new conversation in the window: above, AT_RISK.
    opt_out_rate_at_risk: Share = 0.03
    opt_out_rate_critical: Share = 0.08
    #: Share of the chats sent to in the window that the provider holds AT_RISK or
    #: CRITICAL: above, AT_RISK (chat health rolls up into the line).
    unhealthy_chats_at_risk: Share = 0.25
    unhealthy_chats_critical: Share = 0.5
    #: New conversations in the last day and distinct recipients in the last hour, as a
    #: share of their caps: at or above, AT_RISK (a line run at its caps all day is
    #: what the provider scores; the caps stop it, the estimate slows it before).
    cap_use_at_risk: Annotated[float, Field(gt=0, le=1, strict=True)] = 0.9
    #: Provider refusals (403, 429) per hundred sends in the last hour.
    rejections_at_risk: PerHundred = 3
    rejections_critical: PerHundred = 10
    #: A rejection rate speaks once the line sent this many messages in the hour.
    min_sends_per_hour: Count = 20
    #: Recipients of one near-identical body in the last hour, as a share of
    #: ``content.same_body_max_recipients_per_hour``: at or above, AT_RISK. 0 (the
    #: default) turns it off: the content rule already holds a body at its cap, and a
    #: template sent at that cap is an ordinary campaign; set it where the provider is
    #: known to score repeated content.
    same_body_use_at_risk: Share = 0
    #: A chat's unanswered outbound streak (sends since the recipient's last reply,
    #: inside ``chat_window_hours``): at or above, AT_RISK or CRITICAL.
    chat_unanswered_at_risk: Count = 3
    chat_unanswered_critical: Count = 6
    #: Hours since the recipient last replied (or since the chat's first send, when they
    #: never did) with the streak unanswered: at or above, AT_RISK.
    chat_silence_hours_at_risk: Hours = 72
    #: A chat's replies per send inside ``chat_window_hours``, once it has
    #: ``chat_min_sends`` sends there: below, AT_RISK.
    chat_reply_rate_at_risk: Share = 0.1
    chat_min_sends: Count = 5
    chat_window_hours: Hours = 7 * 24
    #: A worker reads its lines' signals again once they are this old (0: every batch).
    #: A line's windows are an hour and a day: a minute-old reading is as good, and
    #: reading them every batch would cost a busy worker. Chats are read every batch.
    refresh_seconds: Annotated[float, Field(ge=0, le=MAX_RETRY_SECONDS, strict=True)] = 60
    #: A message held only by the estimate is looked at again this often, so it goes
    #: when the signals recover (no provider signal releases it).
    recheck_minutes: Annotated[float, Field(gt=0, le=MAX_PROBE_MINUTES, strict=True)] = 30

    @field_validator(
        "line_reply_rate_critical",
        "opt_out_rate_critical",
        "unhealthy_chats_critical",
        "rejections_critical",
        "chat_unanswered_critical",
    )
    @classmethod
    def _ordered(cls, value: float, info: ValidationInfo) -> float:
        name = info.field_name or ""
        at_risk = info.data.get(name.replace("_critical", "_at_risk"))
        if at_risk is None:
            return value
        lower_is_worse = name == "line_reply_rate_critical"
        if (value > at_risk) if lower_is_worse else (value < at_risk):
            side = "above" if lower_is_worse else "below"
            raise ValueError(
                f"is {side} {name.replace('_critical', '_at_risk')} ({at_risk:g}): "
                "CRITICAL must be as bad as AT_RISK or worse"
            )
        return value

    @property
    def window(self) -> timedelta:
        return timedelta(hours=self.window_hours)

    @property
    def chat_window(self) -> timedelta:
        return timedelta(hours=self.chat_window_hours)

    @property
    def chat_silence(self) -> timedelta:
        return timedelta(hours=self.chat_silence_hours_at_risk)

    @property
    def refresh(self) -> timedelta:
        return timedelta(seconds=self.refresh_seconds)

    @property
    def reply_wait(self) -> timedelta:
        return timedelta(hours=self.reply_wait_hours)

    @property
    def recheck(self) -> timedelta:
        return timedelta(minutes=self.recheck_minutes)


class Policy(_Section):
    """The whole policy file."""

    lines: tuple[LineConfig, ...] = Field(min_length=1)
    chat: ChatPolicy = ChatPolicy()
    line: LinePolicy = LinePolicy()
    caps: Caps = Caps()
    content: ContentPolicy = ContentPolicy()
    opt_out: OptOutPolicy = OptOutPolicy()
    signals: SignalPolicy = SignalPolicy()
    dispatch: DispatchPolicy = DispatchPolicy()
    #: Each category's window and priority; the default ones are always there, and a
    #: table of the same name changes only the keys it gives.
    categories: dict[CategoryName, CategoryPolicy] = Field(default_factory=_default_categories)
    early_warning: EarlyWarningPolicy = EarlyWarningPolicy()

    # Merged caps per line, computed once: the gate asks for them on every message.
    _caps: dict[str, Caps] = PrivateAttr(default_factory=dict)
    # Each line's own hours and zone, found once (the gate asks on every message too).
    _hours: dict[str, tuple[Window, str] | None] = PrivateAttr(default_factory=dict)

    @field_validator("lines")
    @classmethod
    def _unique_lines(cls, lines: tuple[LineConfig, ...]) -> tuple[LineConfig, ...]:
        seen: set[str] = set()
        for index, line in enumerate(lines):
            if line.number in seen:
                raise _DeclaredTwice(index, line.number)
            seen.add(line.number)
        return lines

    @field_validator("categories", mode="before")
    @classmethod
    def _with_defaults(cls, given: object) -> object:
        if not isinstance(given, Mapping):
            return given  # refused by the field's type, naming it
        merged: dict[object, object] = {k: dict(v) for k, v in DEFAULT_CATEGORIES.items()}
        for name, fields in given.items():
            default = merged.get(name)
            merged[name] = (
                {**default, **fields}
                if isinstance(default, dict) and isinstance(fields, Mapping)
                else fields
            )
        return merged

    def category(self, name: str) -> CategoryPolicy | None:
        """The policy of category ``name`` (None for a name the policy does not define)."""
        return self.categories.get(name)

    def line_config(self, number: str) -> LineConfig | None:
        return next((line for line in self.lines if line.number == number), None)

    def hours_of_line(self, number: str) -> tuple[Window, str] | None:
        """A line's own sending window and the zone it is read in; None: any hour."""
        if number not in self._hours:
            line = self.line_config(number)
            found = None
            if line is not None and line.hours is not None and line.timezone is not None:
                found = (line.hours, line.timezone)
            self._hours[number] = found
        return self._hours[number]

    def caps_for(self, number: str) -> Caps:
        """The caps of one line: its overrides on top of the defaults."""
        merged = self._caps.get(number)
        if merged is None:
            line = self.line_config(number)
            overrides = line.caps.model_dump(exclude_none=True) if line else {}
            merged = self.caps.model_copy(update=overrides) if overrides else self.caps
            self._caps[number] = merged
        return merged


class _DeclaredTwice(ValueError):
    def __init__(self, index: int, number: str) -> None:
        self.index = index
        super().__init__(f"{shown(number)} is declared twice")


def _key(loc: tuple[int | str, ...]) -> str:
    key = ""
    for part in loc:
        if isinstance(part, str):
            part = cut(part)  # a key can be pasted junk too
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _too_deep(data: object) -> tuple[int | str, ...] | None:
    """The key of the first value nested past :data:`MAX_DEPTH`, walked without recursion."""
    stack: list[tuple[tuple[int | str, ...], object]] = [((), data)]
    while stack:
        loc, value = stack.pop()
        if len(loc) > MAX_DEPTH:
            return loc
        stack.extend(((*loc, key), item) for key, item in _children(value))
    return None


def _children(value: object) -> Iterator[tuple[int | str, object]]:
    if isinstance(value, Mapping):
        yield from ((str(key), item) for key, item in value.items())
    elif isinstance(value, list | tuple):
        yield from enumerate(value)


def parse_policy(data: Mapping[str, Any], path: str) -> Policy:
    """Validate parsed TOML, raising :class:`PolicyFileError` for the first bad key."""
    deep = _too_deep(data)
    if deep is not None:
        raise PolicyFileError(path, _key(deep), f"nests tables or arrays over {MAX_DEPTH} deep")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise _named(exc, path) from None


def _named(exc: ValidationError, path: str) -> PolicyFileError:
    """The first error of a validation, as the file, the key and the problem."""
    error = exc.errors()[0]
    loc = tuple(error["loc"])
    problem = error["msg"].removeprefix("Value error, ")
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, _DeclaredTwice):
        loc += (cause.index, "number")
    if error["type"] == "extra_forbidden":
        problem = "unknown key"
    elif loc[-1:] == ("api_key_env",):
        pass  # a key pasted in by mistake must not end up in logs
    elif isinstance(error.get("input"), str | int | float | bool):
        problem = f"{problem} (got {shown(error['input'])})"
    return PolicyFileError(path, _key(loc) or "(top level)", problem)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a TOML policy file; every way it can fail is a PolicyFileError."""
    name = str(path)
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise PolicyFileError(
            name, "", "no such file (create one with `healthgate init`)"
        ) from None
    except OSError as exc:
        raise PolicyFileError(name, "", f"cannot be read ({exc.strerror})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise PolicyFileError(name, "", f"is larger than {MAX_FILE_BYTES:,} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyFileError(
            name, "", f"is not UTF-8 text (byte {exc.object[exc.start]:#04x} at {exc.start})"
        ) from None
    long_key = _LONG_KEY.search(text)
    if long_key:
        line = text.count("\n", 0, long_key.end()) + 1
        raise PolicyFileError(name, "", f"line {line}: a key of over {MAX_DEPTH} dotted parts")
    try:
        data = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, and an integer past Python's digit limit
        raise PolicyFileError(name, "", f"is not valid TOML ({cut(str(exc))})") from None
    except RecursionError:  # tomllib reads nested arrays and inline tables recursively
        raise PolicyFileError(
            name, "", "is not valid TOML (arrays or inline tables nested too deeply)"
        ) from None
    return parse_policy(data, name)
