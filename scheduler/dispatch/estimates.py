"""healthgate's own estimate in a batch: loaded once, applied or only written down.

``shadow``: each decision the estimate would have changed says so in its reason, and
the decision itself is the provider's. ``enforce``: the gate sees the more severe of
the provider's status and the estimate, and each decision it changed names both.
"""

from __future__ import annotations

import weakref
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import NamedTuple

from sqlalchemy.orm import Session

from policies.config import EarlyWarningMode, Policy
from policies.decision import Decision
from policies.early_warning import HEALTHY, Estimate, chat_status, more_severe
from policies.gate import ChatFacts, LineFacts
from policies.statuses import Action, ChatHealth
from scheduler.store.early_signals import chat_estimates, line_estimates
from scheduler.store.models import Chat, Line


@dataclass
class Estimates:
    """The estimate of a batch's lines and chats, as of the batch's moment."""

    mode: EarlyWarningMode
    policy: Policy
    now: datetime
    lines: dict[int, Estimate] = field(default_factory=dict)
    chats: dict[int, Estimate] = field(default_factory=dict)
    #: Decisions the estimate changed (enforce) or would have changed (shadow).
    changed: int = 0

    @property
    def enforced(self) -> bool:
        return self.mode is EarlyWarningMode.ENFORCE

    def line(self, line_id: int | None) -> Estimate:
        return self.lines.get(line_id or 0, HEALTHY)

    def chat(self, chat_id: int | None) -> Estimate:
        return self.chats.get(chat_id or 0, HEALTHY)

    def raise_line(self, facts: LineFacts, line_id: int | None) -> LineFacts:
        """``facts`` with the more severe of the provider's reputation and the estimate."""
        reputation = more_severe(facts.reputation, self.line(line_id).status)
        return facts if reputation is facts.reputation else replace(facts, reputation=reputation)

    def raise_chat(self, facts: ChatFacts, chat_id: int | None) -> ChatFacts:
        """``facts`` with the more severe of the provider's health and the estimate (an
        opt-out stays one)."""
        health = chat_status(facts.health, self.chat(chat_id).status)
        return facts if health is facts.health else replace(facts, health=health)

    def raises(
        self, line: LineFacts | None, line_id: int | None, chat: ChatFacts, chat_id: int | None
    ) -> bool:
        """Whether the estimate is more severe than the provider for this line or chat."""
        if line is not None and self.raise_line(line, line_id) is not line:
            return True
        return self.raise_chat(chat, chat_id) is not chat

    def note(
        self,
        decision: Decision,
        other: Decision,
        line_id: int | None,
        chat_id: int | None,
        provider: tuple[str | None, str],
    ) -> Decision:
        """``decision`` (taken in this mode) beside ``other`` (taken in the other view):
        unchanged when they agree, else saying what the estimate changed."""
        if (decision.action, decision.code) == (other.action, other.code):
            return decision
        self.changed += 1
        said = self._said(line_id, chat_id, provider)
        if not self.enforced:
            return replace(
                decision,
                reason=f"{decision.reason}; early warning (shadow) would {other.action.value} "
                f"({other.code.value}): {said}",
            )
        reason = f"{decision.reason}; early warning: {said}"
        if decision.action is Action.DEFER and decision.not_before is not None:
            # No provider signal releases a hold only the estimate made: it is looked at
            # again, and goes once the signals recover.
            again = min(decision.not_before, self.now + self.policy.early_warning.recheck)
            return replace(decision, reason=reason, not_before=again)
        return replace(decision, reason=reason)

    def _said(
        self, line_id: int | None, chat_id: int | None, provider: tuple[str | None, str]
    ) -> str:
        line_said, chat_said = provider
        parts = []
        line = self.line(line_id)
        if line.reasons and line_said is not None:
            parts.append(
                f"line estimated {line.status.value} ({line.rules()}), provider says {line_said}"
            )
        chat = self.chat(chat_id)
        if chat.reasons:
            parts.append(
                f"chat estimated {chat.status.value} ({chat.rules()}), provider says {chat_said}"
            )
        return "; ".join(parts)


class _Read(NamedTuple):
    """Line estimates as read at ``at`` under ``policy``."""

    at: datetime
    policy: Policy
    lines: frozenset[int]
    estimates: dict[int, Estimate]


#: Each store's line estimates, last read (per process; see ``refresh_seconds``).
_LINES: weakref.WeakKeyDictionary[object, _Read] = weakref.WeakKeyDictionary()


def load_estimates(
    session: Session,
    lines: Collection[Line],
    chats: Mapping[int, Chat],
    policy: Policy,
    now: datetime,
    store: object | None = None,
) -> Estimates | None:
    """The estimate of ``lines`` and ``chats`` at ``now`` (None when the mode is off).

    The lines' are read again once ``refresh_seconds`` old for ``store`` (their windows
    are an hour and a day: a busy worker need not count them every batch); the chats'
    every batch (they are the batch's own, and a reply must count at once).
    """
    mode = policy.early_warning.mode
    if mode is EarlyWarningMode.OFF:
        return None
    found = Estimates(mode, policy, now)
    ids = frozenset(line.id for line in lines)
    kept = _LINES.get(store) if store is not None else None
    fresh = (
        kept is not None
        and kept.policy is policy
        and kept.lines == ids
        and kept.at <= now < kept.at + policy.early_warning.refresh
    )
    if fresh and kept is not None:
        found.lines.update(kept.estimates)
    else:
        for line_id, estimate in line_estimates(session, lines, policy, now).items():
            if estimate.reasons:
                found.lines[line_id] = estimate
        if store is not None:
            _LINES[store] = _Read(now, policy, ids, dict(found.lines))
    for chat_id, estimate in chat_estimates(session, chats, policy, now).items():
        if estimate.reasons:
            found.chats[chat_id] = estimate
    return found


def at_risk_chats(chats: Mapping[int, Chat], estimates: Estimates | None) -> set[int]:
    """Chats the gate may see AT_RISK: the provider's, and the estimate's."""
    found = {c.id for c in chats.values() if c.health == ChatHealth.AT_RISK.value}
    if estimates is not None:
        found |= {
            i for i, e in estimates.chats.items() if e.status.value == ChatHealth.AT_RISK.value
        }
    return found


__all__ = ["Estimates", "at_risk_chats", "load_estimates"]
