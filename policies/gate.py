"""The health gate: a pure decision on one message, taken immediately before dispatch."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from policies.codes import CAP_CODES, LINE_PAUSE_CODES, Code
from policies.config import DEFAULT_CATEGORY, Policy
from policies.content import repeat_to_at_risk_chat, same_body_spread
from policies.decision import Decision, Pace, Queue, send
from policies.hours import outside_hours, rules_of
from policies.pace import Limits, Verdict, cap_pace, check, line_limits, scaled, shared
from policies.statuses import Action, ChatHealth, LineReputation, LineStatus
from policies.usage import LineUsage, earliest_allowed


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What the gate needs to know about the message itself."""

    recipient: str
    expires_at: datetime | None = None
    #: When the message's current hold began (None when it is not being held).
    held_since: datetime | None = None
    #: The router chose the line and nothing went out on the chat yet: the message
    #: may move to another line instead of waiting on a paused one.
    may_reroute: bool = False
    #: Digest of the normalised body (see ``policies.content``); None skips content rules.
    body_hash: str | None = None
    #: Its category: the policy's window (on the recipient's clock) and priority for it.
    category: str = DEFAULT_CATEGORY
    #: The recipient's time zone as the application gave it; None: read from the number.
    recipient_tz: str | None = None


@dataclass(frozen=True, slots=True)
class ChatFacts:
    """The chat the message goes to, as known at decision time."""

    health: ChatHealth = ChatHealth.HEALTHY
    #: The recipient opted out on some chat and the opt-out covers the whole account.
    recipient_opted_out: bool = False
    #: Nothing has been dispatched on this chat yet: sending starts a new conversation.
    is_new: bool = True
    #: Dispatch times since the recipient's last reply, oldest first (bounded by the policy).
    unanswered: tuple[datetime, ...] = ()
    #: Dispatch times of near-identical bodies to this chat (loaded for AT_RISK chats).
    same_body_sent: tuple[datetime, ...] = ()


@dataclass(frozen=True, slots=True)
class LineFacts:
    """The sending line, as known at decision time."""

    number: str
    reputation: LineReputation = LineReputation.HEALTHY
    status: LineStatus = LineStatus.ACTIVE
    #: When the line last came back to HEALTHY: its pace ramps up from then.
    recovered_at: datetime | None = None
    #: FLAGGED by healthgate alone (a send's answer): when one send may go as a probe
    #: (see ``LinePolicy.probe_after_minutes``). None for any other line.
    probe_at: datetime | None = None


def decide(
    message: MessageFacts,
    chat: ChatFacts,
    line: LineFacts | None,
    usage: LineUsage,
    policy: Policy,
    now: datetime,
) -> Decision:
    """Decide what to do with ``message`` at ``now``; reads no clock and no store.

    ``line`` is None while no line may take the (new) recipient.
    """
    if chat.health is ChatHealth.OPTED_OUT:
        return Decision(Action.DROP, Code.CHAT_OPTED_OUT, "the chat is OPTED_OUT")
    if chat.recipient_opted_out:
        return Decision(
            Action.DROP, Code.RECIPIENT_OPTED_OUT, "the recipient opted out on another chat"
        )
    if message.expires_at is not None and now >= message.expires_at:
        return Decision(
            Action.EXPIRE, Code.EXPIRES_AT, f"expires_at {message.expires_at.isoformat()} passed"
        )
    if message.held_since is not None and now >= message.held_since + policy.chat.max_hold:
        # Held past the maximum hold, by one hold or several in a row: it expires, even
        # if what held it has ended meanwhile. It is never sent that late.
        return _held_too_long(message.held_since, policy)
    hold = _hold(message, chat, line, policy, now)
    if hold is not None:
        return hold
    assert line is not None  # _hold holds every message without a line
    if line.reputation is LineReputation.AT_RISK and message.may_reroute:
        # A conversation not yet started opens on a HEALTHY line when one can take it.
        return Decision(
            Action.REROUTE,
            Code.LINE_AT_RISK,
            f"line {line.number} is AT_RISK: a new recipient goes to a HEALTHY line",
        )
    hours = outside_hours(
        message.recipient,
        message.category,
        message.recipient_tz,
        line.number,
        message.expires_at,
        policy,
        now,
    )
    if hours is not None:
        return hours
    if chat.health is ChatHealth.AT_RISK:
        throttle = _chat_throttle(chat, policy, now, message.expires_at)
        if throttle is not None:
            return throttle
    return (
        _content(message, chat, line, usage, policy, now)
        or _caps(message, chat, line, usage, policy, now)
        or send()
    )


def _hold(
    message: MessageFacts, chat: ChatFacts, line: LineFacts | None, policy: Policy, now: datetime
) -> Decision | None:
    """DEFER while there is no line, or the line or the chat cannot send.

    A new recipient on a paused line is rerouted instead, when the router may move it.
    """
    if line is None:
        # Waiting for a line is no health hold: it never runs into the maximum hold, and
        # is looked at again after as long, in case no signal says a line is free.
        reason = "no line may take a new recipient now"
        return Decision(
            Action.DEFER,
            Code.NO_LINE,
            reason,
            _before(now + policy.chat.max_hold, message.expires_at),
        )
    probe = line.probe_at is not None and now >= line.probe_at
    flagged = line.status is LineStatus.FLAGGED and not probe
    if flagged or line.reputation is LineReputation.CRITICAL:
        state = line.status if line.status is LineStatus.FLAGGED else line.reputation
        code = LINE_PAUSE_CODES[state]
        if message.may_reroute:
            return Decision(
                Action.REROUTE,
                code,
                f"line {line.number} is {state}: a new recipient goes to another line",
            )
        reason = f"line {line.number} is {state}: paused until it recovers"
    elif chat.health is ChatHealth.CRITICAL:
        code, reason = Code.CHAT_CRITICAL, "the chat is CRITICAL: held until HEALTHY"
    else:
        return None
    # Looked at again when the hold would run out (decide expires it then), or when its
    # line may send a probe, unless a signal releases it first.
    deadline = (message.held_since or now) + policy.chat.max_hold
    if code is Code.LINE_FLAGGED and line is not None and line.probe_at is not None:
        deadline = min(deadline, line.probe_at)
    return Decision(Action.DEFER, code, reason, _before(deadline, message.expires_at))


def _held_too_long(since: datetime, policy: Policy) -> Decision:
    return Decision(
        Action.EXPIRE,
        Code.MAX_HOLD,
        f"held since {since.isoformat()}, longer than the maximum hold "
        f"of {policy.chat.critical_max_hold_hours:g} h",
    )


def _chat_throttle(
    chat: ChatFacts, policy: Policy, now: datetime, expires_at: datetime | None
) -> Decision | None:
    """An AT_RISK chat may have few unanswered messages inside the window."""
    limit = policy.chat.at_risk_max_unanswered
    allowed = earliest_allowed(chat.unanswered, limit, policy.chat.at_risk_window, now)
    if allowed <= now:
        return None
    return Decision(
        Action.THROTTLE,
        Code.CHAT_AT_RISK,
        f"the chat is AT_RISK and has {limit} unanswered message(s) in the last "
        f"{policy.chat.at_risk_window_hours:g} h; a reply lifts the throttle",
        _before(allowed, expires_at),
        Pace(Queue.CHAT, policy.chat.at_risk_window / limit),
    )


def effective_limit(cap: int, reputation: LineReputation, policy: Policy) -> int:
    """A cap as it applies to a line of this reputation (never below one)."""
    if reputation is LineReputation.AT_RISK:
        return scaled(cap, policy.line.at_risk_pace_factor)
    return cap


def limits_for(line: LineFacts, policy: Policy, now: datetime) -> Limits:
    """The caps ``line`` runs at ``now``: its own, AT_RISK-paced or ramping up."""
    return line_limits(
        policy.caps_for(line.number), line.reputation, line.recovered_at, now, policy
    )


def limits_of(line: LineFacts, category: str, policy: Policy, now: datetime) -> Limits:
    """The caps a message of ``category`` may use on ``line`` at ``now``: the line's,
    less what the category leaves to the ones above it."""
    return shared(limits_for(line, policy, now), rules_of(policy, category).cap_share, category)


def _caps(
    message: MessageFacts,
    chat: ChatFacts,
    line: LineFacts,
    usage: LineUsage,
    policy: Policy,
    now: datetime,
) -> Decision | None:
    """THROTTLE to the earliest moment every line cap allows, naming the cap that binds."""
    limits = limits_of(line, message.category, policy, now)
    verdict = check(usage, limits, message.recipient, chat.is_new, now)
    if verdict.allowed_at <= now:
        return None
    return throttled(verdict, line.number, limits, message.expires_at)


def throttled(verdict: Verdict, line: str, limits: Limits, expires_at: datetime | None) -> Decision:
    """The THROTTLE for a send over a cap: until the cap allows it, naming the cap."""
    return Decision(
        Action.THROTTLE,
        CAP_CODES[verdict.cap],
        f"line {line} reached {verdict.cap}={verdict.limit}{limits.note}",
        _before(verdict.allowed_at, expires_at),
        cap_pace(verdict.cap, verdict.limit),
    )


def _content(
    message: MessageFacts,
    chat: ChatFacts,
    line: LineFacts,
    usage: LineUsage,
    policy: Policy,
    now: datetime,
) -> Decision | None:
    if message.body_hash is None:
        return None
    if chat.health is ChatHealth.AT_RISK:
        repeat = repeat_to_at_risk_chat(chat.same_body_sent, policy, now, message.expires_at)
        if repeat is not None:
            return repeat
    return same_body_spread(
        usage, message.body_hash, message.recipient, line.number, policy, now, message.expires_at
    )


def _before(moment: datetime, expires_at: datetime | None) -> datetime:
    """Look again at ``moment``, or at expiry if that comes first, so expiry is on time."""
    return moment if expires_at is None else min(moment, expires_at)


__all__ = [
    "ChatFacts",
    "LineFacts",
    "MessageFacts",
    "decide",
    "effective_limit",
    "limits_for",
    "limits_of",
    "throttled",
]
