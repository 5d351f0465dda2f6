"""360dialog (WhatsApp Cloud API): sends with ``POST /messages``, health from ``/health_status``.

Each WhatsApp number has its own ``D360-API-KEY``; the policy file names the environment
variable that holds it (``[[lines]] api_key_env``, always ``HEALTHGATE_D360_KEY_...``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from policies.config import D360_KEY_ENV_PREFIX, Policy
from policies.errors import HealthgateError
from policies.outcome import Failure
from scheduler.providers.base import Outbound, SendFailed, Sent
from scheduler.providers.http import TIMEOUT, retry_after

#: WhatsApp error codes (Meta's Cloud API codes, passed through by 360dialog) and what
#: each means for the gate. Codes decide before the HTTP status: Meta answers most of
#: them with a plain 400. Kept in one table so a new code is one line.
ERROR_CODES: dict[int, Failure] = {
    # The number itself cannot send: pause the line, keep the message for later.
    368: Failure.LINE_BLOCKED,  # temporarily blocked for policy violations
    131031: Failure.LINE_BLOCKED,  # business account locked
    131042: Failure.LINE_BLOCKED,  # business eligibility (payment) issue
    131048: Failure.LINE_BLOCKED,  # spam rate limit: too many messages blocked or flagged
    133010: Failure.LINE_BLOCKED,  # phone number not registered on the Cloud API
    # The recipient refused marketing messages from this business: an opt-out.
    131050: Failure.RECIPIENT_OPTED_OUT,
    # Throughput limits: wait and retry, as for a 429.
    4: Failure.RATE_LIMITED,  # too many API calls
    80007: Failure.RATE_LIMITED,  # WABA rate limit
    130429: Failure.RATE_LIMITED,  # Cloud API throughput reached
    131056: Failure.RATE_LIMITED,  # too many messages to the same recipient
    # Meta's side failed; the message may go through on a later attempt.
    1: Failure.TRANSIENT,  # unknown API error
    2: Failure.TRANSIENT,  # service temporarily unavailable
    131000: Failure.TRANSIENT,  # something went wrong
    131016: Failure.TRANSIENT,  # service overloaded
    # Recipient-side refusals that no retry fixes.
    131026: Failure.REJECTED,  # undeliverable (not on WhatsApp, old client, ...)
    131047: Failure.REJECTED,  # more than 24 h since the last reply: a template is needed
    131049: Failure.REJECTED,  # Meta chose not to deliver (per-user marketing limit)
    130497: Failure.REJECTED,  # business may not message users in that country
}


class HealthUnavailable(HealthgateError):
    """A health read failed; the line's stored state stays as it was."""


KeyLookup = Callable[[str], str]


def env_keys(policy: Callable[[], Policy], environ: Mapping[str, str] = os.environ) -> KeyLookup:
    """The API key of a line, read from the environment variable its policy entry names."""

    def key(line: str) -> str:
        config = policy().line_config(line)
        name = config.api_key_env if config else None
        if not name:
            raise HealthgateError(f"line {line}: api_key_env is not set in the policy file")
        if not name.startswith(D360_KEY_ENV_PREFIX):  # a policy built in code, not loaded
            raise HealthgateError(f"line {line}: api_key_env must start {D360_KEY_ENV_PREFIX}")
        value = environ.get(name)
        if not value:
            raise HealthgateError(
                f"line {line}: api_key_env {name!r} is not set in the environment"
            )
        return value

    return key


class Dialog360Provider:
    """One HTTP client for every 360dialog line of the process.

    Neither 360dialog nor the Cloud API deduplicates ``POST /messages``: there is no
    idempotency key. A retry after a timeout or a 5xx can therefore deliver twice if
    the first attempt did reach WhatsApp. The message id travels as
    ``biz_opaque_callback_data``, which WhatsApp echoes in its status webhooks, so such
    a duplicate can be recognised afterwards.
    """

    #: The Cloud API takes no idempotency key: a second attempt may deliver twice.
    deduplicates = False

    def __init__(
        self, base_url: str, api_key: KeyLookup, http_client: httpx.Client | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.client = http_client or httpx.Client(timeout=TIMEOUT)

    def _headers(self, line: str) -> dict[str, str]:
        return {"D360-API-KEY": self.api_key(line), "Content-Type": "application/json"}

    def send(self, message: Outbound) -> Sent:
        try:
            headers = self._headers(message.line)
        except HealthgateError as exc:
            # No key, no sends from this line: hold its messages rather than fail them.
            raise SendFailed(Failure.LINE_BLOCKED, str(exc)) from None
        body = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": message.recipient.removeprefix("+"),
            "type": "text",
            "text": {"body": message.body},
            "biz_opaque_callback_data": message.idempotency_key,
        }
        try:
            response = self.client.post(f"{self.base_url}/messages", json=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise SendFailed(Failure.TRANSIENT, f"timeout: {exc}") from None
        except httpx.TransportError as exc:
            raise SendFailed(Failure.TRANSIENT, f"connection error: {exc}") from None
        if response.is_success:
            # Accepted, whatever the body looks like: a retry would deliver it twice.
            messages = _json(response).get("messages")
            first = messages[0] if isinstance(messages, list) and messages else None
            return Sent(provider_message_id=first.get("id") if isinstance(first, dict) else None)
        raise _failure(response)

    def health_status(self, line: str) -> dict[str, Any]:
        """The raw ``GET /health_status`` answer for one line."""
        try:
            response = self.client.get(
                f"{self.base_url}/health_status", headers=self._headers(line)
            )
        except httpx.HTTPError as exc:
            raise HealthUnavailable(f"line {line}: 360dialog health_status: {exc}") from None
        except HealthgateError as exc:
            raise HealthUnavailable(str(exc)) from None
        if not response.is_success:
            raise HealthUnavailable(
                f"line {line}: 360dialog health_status answered HTTP {response.status_code}"
            )
        return _json(response)

    def close(self) -> None:
        self.client.close()


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _failure(response: httpx.Response) -> SendFailed:
    status = response.status_code
    error = _json(response).get("error")
    code = error.get("code") if isinstance(error, dict) else None
    detail = f"HTTP {status}" + (f", code {code}" if code is not None else "")
    if isinstance(error, dict) and error.get("message"):
        detail += f": {error['message']}"
    failure = ERROR_CODES.get(code) if isinstance(code, int) else None
    if failure is None:
        if status == 429:
            failure = Failure.RATE_LIMITED
        elif status >= 500 or status == 408:
            failure = Failure.TRANSIENT
        elif status == 401:
            # The line's key is refused: no message from it can go until someone fixes
            # the key, so hold them instead of failing each for good.
            failure = Failure.LINE_BLOCKED
        else:
            failure = Failure.REJECTED
    hint = retry_after(response) if failure is Failure.RATE_LIMITED else None
    return SendFailed(failure, detail, hint)
