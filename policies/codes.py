"""Every reason code a decision carries: stable, machine-readable, one name each.

A code says why a message is where it is. The store releases holds by code (see
``scheduler.store.transitions``), so a code is never spelled as a literal or built from
parts elsewhere: a misspelt one would hold messages that nothing releases.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from policies.statuses import LineReputation, LineStatus


class Code(StrEnum):
    """Why a decision was taken; stored with every decision and on the message."""

    #: Fit to send.
    OK = "ok"
    #: Stored by the application's enqueue.
    ENQUEUED = "enqueued"
    #: The chat is OPTED_OUT.
    CHAT_OPTED_OUT = "chat_opted_out"
    #: The recipient opted out on another chat of the account.
    RECIPIENT_OPTED_OUT = "recipient_opted_out"
    #: The message's own ``expires_at`` passed.
    EXPIRES_AT = "expires_at"
    #: Held longer than the policy's maximum hold.
    MAX_HOLD = "max_hold"
    #: No line may take a new recipient now.
    NO_LINE = "no_line"
    #: The line's reputation is CRITICAL: paused until HEALTHY.
    LINE_CRITICAL = "line_critical"
    #: The provider flagged the line: paused until ACTIVE.
    LINE_FLAGGED = "line_flagged"
    #: The line is AT_RISK: a conversation not yet started moves to a HEALTHY line.
    LINE_AT_RISK = "line_at_risk"
    #: The chat is CRITICAL: held until HEALTHY.
    CHAT_CRITICAL = "chat_critical"
    #: The chat is AT_RISK and has its unanswered messages: held until a reply.
    CHAT_AT_RISK = "chat_at_risk"
    #: A line cap binds (one code a cap, so ``explain`` names it).
    CAP_SENDS_PER_MINUTE = "cap_sends_per_minute"
    CAP_SENDS_PER_DAY = "cap_sends_per_day"
    CAP_SENDS_PER_RECIPIENT_PER_MINUTE = "cap_sends_per_recipient_per_minute"
    CAP_SENDS_PER_RECIPIENT_PER_DAY = "cap_sends_per_recipient_per_day"
    CAP_DISTINCT_RECIPIENTS_PER_HOUR = "cap_distinct_recipients_per_hour"
    CAP_NEW_CONVERSATIONS_PER_DAY = "cap_new_conversations_per_day"
    #: Outside its category's window in the recipient's local time: held until it opens.
    QUIET_HOURS = "quiet_hours"
    #: Outside its line's own sending hours: held until they open.
    LINE_HOURS = "line_hours"
    #: A near-identical body to an AT_RISK chat inside the repeat window.
    CONTENT_REPEATED = "content_repeated"
    #: The line sent this near-identical body to too many recipients this hour.
    CONTENT_SAME_BODY = "content_same_body"
    #: The provider answered that the recipient opted out (Linq 2024, WhatsApp 131050).
    PROVIDER_OPTED_OUT = "provider_opted_out"
    #: The provider answered that the line cannot send (Linq 2027, WhatsApp policy blocks).
    PROVIDER_LINE_BLOCKED = "provider_line_blocked"
    #: The provider refused the message for good.
    PROVIDER_REJECTED = "provider_rejected"
    #: The provider said to slow down (429 and its kin).
    PROVIDER_RATE_LIMITED = "provider_rate_limited"
    #: The provider could not be reached or failed (network, 5xx).
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    #: The provider had no line eligible for the recipient now (Linq 409): retried.
    PROVIDER_NO_LINE = "provider_no_line"
    #: Retries ran out.
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    #: The provider accepted the message.
    SENT = "sent"
    #: Released because its chat is HEALTHY again.
    RELEASE_CHAT = "release_chat"
    #: Released because the recipient replied.
    RELEASE_REPLY = "release_reply"
    #: Released because its line can send, or take new recipients, again.
    RELEASE_LINE = "release_line"
    #: Released because the policy changed a rule it was held under.
    RELEASE_POLICY = "release_policy"
    #: A send whose answer was never recorded (its worker died mid-call).
    SEND_UNCONFIRMED = "send_unconfirmed"
    #: Cancelled by whoever the decision's actor names.
    CANCELLED = "cancelled"
    #: Released by hand (after a policy change, say): the gate looks at it again now.
    RELEASE_MANUAL = "release_manual"
    #: Sent again by hand, after a person looked at why it failed.
    RETRY_MANUAL = "retry_manual"


#: The code of each line cap, by the cap's name in the policy (``caps.sends_per_minute``).
CAP_CODES: Mapping[str, Code] = {
    "sends_per_minute": Code.CAP_SENDS_PER_MINUTE,
    "sends_per_day": Code.CAP_SENDS_PER_DAY,
    "sends_per_recipient_per_minute": Code.CAP_SENDS_PER_RECIPIENT_PER_MINUTE,
    "sends_per_recipient_per_day": Code.CAP_SENDS_PER_RECIPIENT_PER_DAY,
    "distinct_recipients_per_hour": Code.CAP_DISTINCT_RECIPIENTS_PER_HOUR,
    "new_conversations_per_day": Code.CAP_NEW_CONVERSATIONS_PER_DAY,
}

#: The code of a line that cannot send, by what stops it.
LINE_PAUSE_CODES: Mapping[LineReputation | LineStatus, Code] = {
    LineStatus.FLAGGED: Code.LINE_FLAGGED,
    LineReputation.CRITICAL: Code.LINE_CRITICAL,
}
