"""A provider's answer to one send also covers the rest of its batch.

Messages of a batch are gated together, then sent one by one. When the provider says
the line cannot send, or the recipient opted out, the batch's later messages on that
line or to that recipient would get the same answer: they take it without a call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policies.config import OptOutScope
from policies.outcome import Failure
from scheduler.providers import Outbound, SendFailed


@dataclass
class BatchAnswers:
    """The answers heard so far in one batch that stop later sends."""

    scope: OptOutScope
    _lines: dict[int, tuple[str, SendFailed]] = field(default_factory=dict)
    _recipients: dict[tuple[int | None, str], tuple[str, SendFailed]] = field(default_factory=dict)

    def _recipient(self, line_id: int, outbound: Outbound) -> tuple[int | None, str]:
        # An account-wide opt-out covers the recipient on every line (as Linq enforces).
        line = None if self.scope is OptOutScope.ACCOUNT else line_id
        return line, outbound.recipient

    def note(self, line_id: int, outbound: Outbound, failure: SendFailed) -> None:
        """Remember an answer that later sends of the batch must share."""
        heard = (outbound.message_id, failure)
        if failure.failure is Failure.LINE_BLOCKED:
            self._lines[line_id] = heard
        elif failure.failure is Failure.RECIPIENT_OPTED_OUT:
            self._recipients[self._recipient(line_id, outbound)] = heard

    def earlier(self, line_id: int, outbound: Outbound) -> SendFailed | None:
        """The answer this send would get, when the provider already gave it in the batch."""
        heard = self._lines.get(line_id) or self._recipients.get(self._recipient(line_id, outbound))
        if heard is None:
            return None
        message_id, failure = heard
        detail = f"{failure.detail}, answered to {message_id}"
        return SendFailed(failure.failure, detail, failure.retry_after)
