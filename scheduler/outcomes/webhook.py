"""Outcomes as webhooks out, for an application outside Celery: each one a POST signed
per Standard Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``),
which the receiver checks with the same secret and any Standard Webhooks library."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import httpx
from standardwebhooks import Webhook

from scheduler import constants
from scheduler.outcomes import CallbackFailed
from scheduler.settings import shown_url

#: The whole call, from connecting to the answer's status line, must fit in this.
_DEADLINE = constants.OUTCOME_WEBHOOK_TIMEOUT_SECONDS


class WebhookCallback:
    """POSTs each outcome to ``url``, signed with ``secret`` (``whsec_...``).

    A 2xx answer is a delivery; anything else, or no answer within the deadline, is
    tried again later. The deadline covers the whole call, so a receiver that answers a
    byte at a time holds the worker no longer than that; the answer's body is never
    read, so a huge one costs nothing.
    """

    def __init__(
        self, url: str, secret: str, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.url = url
        self.target = f"webhook {shown_url(url)}"
        self._signer = Webhook(secret)
        # One event loop and client per callback: the connection is kept between calls.
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(
            timeout=_DEADLINE, follow_redirects=False, transport=transport
        )

    def deliver(self, outcome: dict[str, Any], now: datetime) -> None:
        """POST ``outcome`` as ``{"type", "timestamp", "data"}``; raise unless answered 2xx.

        The ``webhook-id`` is the outcome's id, the same on every attempt, so the
        receiver recognises a repeat; the timestamp is this attempt's, so a receiver
        that refuses old deliveries (five minutes) takes a retry made days later.
        """
        body = json.dumps(
            {"type": outcome["type"], "timestamp": outcome["at"], "data": outcome},
            separators=(",", ":"),
        )
        headers = {
            "webhook-id": outcome["id"],
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(outcome["id"], now, body),
            "content-type": "application/json",
            "user-agent": "healthgate",
        }
        try:
            status = self._loop.run_until_complete(
                asyncio.wait_for(self._post(body, headers), _DEADLINE)
            )
        except TimeoutError as exc:
            raise CallbackFailed(f"{self.target}: no answer within {_DEADLINE:g} s") from exc
        except httpx.HTTPError as exc:
            said = str(exc).replace(self.url, shown_url(self.url))
            raise CallbackFailed(f"{self.target}: {type(exc).__name__}: {said}") from exc
        if not 200 <= status < 300:
            raise CallbackFailed(f"{self.target} answered {status}")

    async def _post(self, body: str, headers: dict[str, str]) -> int:
        """The answer's status; its body is left unread."""
        async with self._client.stream("POST", self.url, content=body, headers=headers) as r:
            return r.status_code

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()
