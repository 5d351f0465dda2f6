"""Outcomes as webhooks out, for an application outside Celery: each one a POST signed
per Standard Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``),
which the receiver checks with the same secret and any Standard Webhooks library."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import httpx
from standardwebhooks import Webhook

from scheduler import constants
from scheduler.outcomes import CallbackFailed
from scheduler.settings import shown_url

#: A 2xx answer is taken as delivered; anything else, or no answer, is tried again.
_TIMEOUT = httpx.Timeout(constants.OUTCOME_WEBHOOK_TIMEOUT_SECONDS, connect=5.0)


class WebhookCallback:
    """POSTs each outcome to ``url``, signed with ``secret`` (``whsec_...``)."""

    def __init__(self, url: str, secret: str, client: httpx.Client | None = None) -> None:
        self.url = url
        self.target = f"webhook {shown_url(url)}"
        self._signer = Webhook(secret)
        self._client = client or httpx.Client(timeout=_TIMEOUT, follow_redirects=False)

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
            answer = self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise CallbackFailed(f"{self.target}: {type(exc).__name__}: {exc}") from exc
        if not answer.is_success:
            raise CallbackFailed(f"{self.target} answered {answer.status_code}")

    def close(self) -> None:
        self._client.close()
