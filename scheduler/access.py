"""Who may read the web process: a bearer token per route, and where it may listen without one.

Every route but the webhooks (signed by the provider) and ``/healthz`` takes a guard as a
FastAPI dependency, e.g. ``APIRouter(dependencies=[Depends(api_guard(settings))])``; a
``/metrics`` route takes ``metrics_guard(settings)``.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from ipaddress import ip_address

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from policies.errors import HealthgateError, InvalidInput
from scheduler.settings import Settings

API_TOKEN_SETTING = "HEALTHGATE_API_TOKEN"
METRICS_TOKEN_SETTING = "HEALTHGATE_METRICS_TOKEN"
WEB_HOST_SETTING = "HEALTHGATE_WEB_HOST"

#: Reads the ``Authorization: Bearer`` header; a missing one is ours to refuse, not its.
_bearer = HTTPBearer(auto_error=False, description=f"The token of {API_TOKEN_SETTING}.")


class Unauthorized(HealthgateError):
    """A request without a token this route accepts; the message names the setting."""


class TokenGuard:
    """A FastAPI dependency: the request must carry ``Authorization: Bearer`` with a token.

    Tokens are compared in constant time, each of them, so the time taken tells nothing
    of a token nor of which one matched.
    """

    def __init__(self, tokens: Sequence[SecretStr | None], setting: str) -> None:
        self.tokens = [
            t.get_secret_value().encode() for t in tokens if t and t.get_secret_value().strip()
        ]
        #: Named in the refusal: where an operator sets the token this route takes.
        self.setting = setting

    def __call__(self, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        if not self.tokens:
            raise Unauthorized(f"{self.setting} is not set: reads are refused until it is")
        if credentials is None:
            raise Unauthorized(f"Authorization: a Bearer token ({self.setting}) is needed")
        presented = credentials.credentials.encode()
        matched = False
        for token in self.tokens:
            matched |= hmac.compare_digest(presented, token)
        if not matched:
            raise Unauthorized(f"Authorization: the Bearer token is not {self.setting}")


def api_guard(settings: Settings) -> TokenGuard:
    """The guard of every read: the API token."""
    return TokenGuard([settings.api_token], API_TOKEN_SETTING)


def metrics_guard(settings: Settings) -> TokenGuard:
    """The guard of ``/metrics``: its own token when one is set, or the API token."""
    return TokenGuard(
        [settings.metrics_token, settings.api_token],
        f"{METRICS_TOKEN_SETTING} or {API_TOKEN_SETTING}",
    )


async def unauthorized(_request: Request, exc: Exception) -> JSONResponse:
    """401 naming the header, with the challenge RFC 6750 asks for; the token is not echoed."""
    return JSONResponse(
        {"error": str(exc), "field": "Authorization"},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches: ``localhost``, 127.0.0.0/8, ``::1``."""
    if host.lower() == "localhost":
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to listen beyond loopback with no API token: every read would be refused."""
    token = settings.api_token
    if is_loopback(settings.web_host) or (token and token.get_secret_value().strip()):
        return
    raise InvalidInput(
        API_TOKEN_SETTING,
        None,
        f"must be set for the web process to listen on {settings.web_host} "
        f"({WEB_HOST_SETTING}, not loopback): reads need a bearer token beyond this machine",
    )
