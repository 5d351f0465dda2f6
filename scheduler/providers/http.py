"""What the HTTP providers share: bounded calls and the provider's retry hint."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx

from scheduler import constants

#: Every provider call is bounded: a worker must not hang while its claim's lease runs down.
TIMEOUT = httpx.Timeout(
    constants.PROVIDER_TIMEOUT_SECONDS, connect=constants.PROVIDER_CONNECT_TIMEOUT_SECONDS
)


def retry_after(response: httpx.Response) -> timedelta | None:
    """The ``Retry-After`` hint of an answer: seconds, or an HTTP date."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return timedelta(seconds=max(float(value), 0))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(moment - datetime.now(UTC), timedelta(0))
