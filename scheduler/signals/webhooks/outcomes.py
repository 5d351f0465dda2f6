"""What became of one webhook event, and the outcomes an event is stored with."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """What became of one webhook event; kept in ``webhook_events.outcome``."""

    #: It changed health, reputation or engagement.
    APPLIED = "applied"
    #: Valid, but nothing to do: an event type without a signal, or older than what is known.
    IGNORED = "ignored"
    #: Bad input: nothing changed; the detail names the field and the value.
    REJECTED = "rejected"
    #: Seen before under the same id: nothing changed (answered, never stored twice).
    DUPLICATE = "duplicate"


#: The outcomes an event is stored with (a duplicate is answered, never stored).
STORED_OUTCOMES = (Outcome.APPLIED, Outcome.IGNORED, Outcome.REJECTED)
