"""Content variation: near-identical bodies, and when repeating one is held."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from datetime import datetime

from policies.codes import Code
from policies.config import Policy
from policies.decision import Decision
from policies.statuses import Action
from policies.usage import LineUsage

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")
_SPACE = re.compile(r"\s+")


def normalise(body: str) -> str:
    """The body with what varies between copies of one template folded away.

    Two bodies are *near-identical* when they are equal after: Unicode NFKC, case
    folding, every URL replaced by ``<url>``, every run of digits by ``0`` (names of
    amounts, codes, dates), runs of whitespace by one space, and trimming. So
    "Your code is 1234" and "your  code is 98" are near-identical; a changed word is not.
    """
    text = unicodedata.normalize("NFKC", body).casefold()
    text = _URL.sub("<url>", text)
    text = _DIGITS.sub("0", text)
    return _SPACE.sub(" ", text).strip()


def body_digest(body: str) -> str:
    """A 32-character digest of the normalised body (what ``messages.body_hash`` holds)."""
    return hashlib.blake2b(normalise(body).encode(), digest_size=16).hexdigest()


def repeat_to_at_risk_chat(
    sent: Sequence[datetime], policy: Policy, now: datetime, expires_at: datetime | None
) -> Decision | None:
    """Hold a body near-identical to one sent to an AT_RISK chat inside the window.

    ``sent`` holds the dispatch times of near-identical bodies to the chat.
    """
    window = policy.content.at_risk_repeat_window
    last = max((at for at in sent if at > now - window), default=None)
    if last is None:
        return None
    until = last + window
    return Decision(
        Action.THROTTLE,
        Code.CONTENT_REPEATED,
        f"a near-identical body went to this AT_RISK chat at {last.isoformat()}; "
        f"held for {policy.content.at_risk_repeat_window_hours:g} h or until a reply",
        until if expires_at is None else min(until, expires_at),
    )


def same_body_spread(
    usage: LineUsage,
    body_hash: str,
    recipient: str,
    line: str,
    policy: Policy,
    now: datetime,
    expires_at: datetime | None,
) -> Decision | None:
    """Hold a body the line already sent to too many other recipients within the hour."""
    limit = policy.content.same_body_max_recipients_per_hour
    allowed = usage.body_allowed(body_hash, recipient, limit, now)
    if allowed <= now:
        return None
    return Decision(
        Action.THROTTLE,
        Code.CONTENT_SAME_BODY,
        f"line {line} sent a near-identical body to {limit} recipients in the last hour "
        f"(content.same_body_max_recipients_per_hour={limit})",
        allowed if expires_at is None else min(allowed, expires_at),
    )
