"""What a provider's refusal means for the message: the provider's answer is final."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from policies.codes import Code
from policies.config import Policy
from policies.decision import Decision
from policies.statuses import Action


class Failure(StrEnum):
    """How a send attempt failed, as far as the gate cares."""

    #: The recipient opted out at the provider (Linq 403, code 2024).
    RECIPIENT_OPTED_OUT = "RECIPIENT_OPTED_OUT"
    #: The line cannot send (Linq 403, code 2027).
    LINE_BLOCKED = "LINE_BLOCKED"
    #: Over a provider limit (429); may carry a retry hint.
    RATE_LIMITED = "RATE_LIMITED"
    #: Network error or 5xx: the provider may or may not have sent; retry with the same key.
    TRANSIENT = "TRANSIENT"
    #: Refused for good (4xx other than the above).
    REJECTED = "REJECTED"
    #: The provider has no line eligible for the recipient now (Linq 409): it may have
    #: one later, so the send is retried with backoff, never failed at once.
    NO_ELIGIBLE_LINE = "NO_ELIGIBLE_LINE"


def after_failure(
    failure: Failure,
    detail: str,
    attempts: int,
    policy: Policy,
    now: datetime,
    retry_after: timedelta | None = None,
) -> Decision:
    """Decide what follows a failed attempt; ``attempts`` counts this one."""
    if failure is Failure.RECIPIENT_OPTED_OUT:
        return Decision(
            Action.DROP, Code.PROVIDER_OPTED_OUT, f"provider: recipient opted out ({detail})"
        )
    if failure is Failure.LINE_BLOCKED:
        return Decision(
            Action.DEFER, Code.PROVIDER_LINE_BLOCKED, f"provider: line cannot send ({detail})", now
        )
    if failure is Failure.REJECTED:
        return Decision(
            Action.FAIL, Code.PROVIDER_REJECTED, f"provider refused the message ({detail})"
        )
    if attempts >= policy.dispatch.max_attempts:
        return Decision(
            Action.FAIL,
            Code.ATTEMPTS_EXHAUSTED,
            f"gave up after {attempts} attempts; last: {detail}",
        )
    backoff = timedelta(
        seconds=min(
            # The exponent is capped: past 2**1023 a float overflows, long after the cap.
            policy.dispatch.retry_base_seconds * 2 ** min(attempts - 1, 60),
            policy.dispatch.retry_max_seconds,
        )
    )
    wait = max(backoff, retry_after or timedelta(0))
    code = _RETRY_CODES.get(failure, Code.PROVIDER_UNAVAILABLE)
    return Decision(
        Action.THROTTLE,
        code,
        f"provider: {detail}; attempt {attempts} of {policy.dispatch.max_attempts}, "
        f"retry in {wait.total_seconds():g} s",
        now + wait,
    )


#: The code of a retried failure, by kind (network errors and 5xx are ``unavailable``).
_RETRY_CODES = {
    Failure.RATE_LIMITED: Code.PROVIDER_RATE_LIMITED,
    Failure.NO_ELIGIBLE_LINE: Code.PROVIDER_NO_LINE,
}
