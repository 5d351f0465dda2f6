"""Who may read the web process: a bearer token per route, and where it may listen without one.

Every route but the webhooks (signed by the provider) and ``/healthz`` takes a guard as a
FastAPI dependency, e.g. ``APIRouter(dependencies=[Depends(api_guard(settings))])``; a
``/metrics`` route takes ``metrics_guard(settings)``. A browser, which cannot send the
header on navigation, logs in once with the token and then shows a ``SessionCookie``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Sequence
from ipaddress import ip_address
from pathlib import Path

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from policies.errors import HealthgateError, InvalidInput
from scheduler import constants
from scheduler.files import PRIVATE_FILE, private_dir
from scheduler.settings import Settings

API_TOKEN_SETTING = "HEALTHGATE_API_TOKEN"
METRICS_TOKEN_SETTING = "HEALTHGATE_METRICS_TOKEN"
WEB_HOST_SETTING = "HEALTHGATE_WEB_HOST"

#: Reads the ``Authorization: Bearer`` header; a missing one is ours to refuse, not its.
_bearer = HTTPBearer(auto_error=False, description=f"The token of {API_TOKEN_SETTING}.")
#: The cookie a browser gets at ``POST /login`` (see ``SessionCookie``).
SESSION_COOKIE = "healthgate_session"
#: How long one login lasts: a working day.
SESSION_SECONDS = 12 * 3600


class SessionCookie:
    """A browser's proof that it logged in with a token, never the token itself.

    The value is ``<issued>.<HMAC-SHA256 of the issue time and the token>`` under a key
    made when the process starts: it is good for ``SESSION_SECONDS``, tells nothing of the
    token, and a restart (or a changed token) signs every browser out.
    """

    def __init__(self, tokens: Sequence[bytes]) -> None:
        self.tokens = list(tokens)
        self._key = secrets.token_bytes(32)

    def _sign(self, issued: int, token: bytes) -> str:
        return hmac.new(self._key, f"{issued}.".encode() + token, hashlib.sha256).hexdigest()

    def matches(self, presented: str) -> bytes | None:
        """The token ``presented`` is, compared in constant time with each; else None."""
        found = None
        for token in self.tokens:
            if hmac.compare_digest(presented.encode(), token):
                found = token
        return found

    def issue(self, token: bytes, now: float) -> str:
        issued = int(now)
        return f"{issued}.{self._sign(issued, token)}"

    def valid(self, value: str | None, now: float) -> bool:
        issued, _, signature = (value or "").partition(".")
        if not issued.isdigit() or not 0 <= now - int(issued) < SESSION_SECONDS:
            return False
        matched = False
        for token in self.tokens:
            matched |= hmac.compare_digest(signature, self._sign(int(issued), token))
        return matched


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
        #: What a browser that logged in with one of the tokens shows instead.
        self.sessions = SessionCookie(self.tokens)

    # Async: checked on the event loop, with the same clock as the login that issued the
    # cookie (no thread hop for a few comparisons).
    async def __call__(
        self,
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ) -> None:
        if not self.tokens:
            raise Unauthorized(f"{self.setting} is not set: reads are refused until it is")
        if credentials is None and self.sessions.valid(
            request.cookies.get(SESSION_COOKIE), time.time()
        ):
            return
        if credentials is None:
            raise Unauthorized(f"Authorization: a Bearer token ({self.setting}) is needed")
        presented = credentials.credentials.encode()
        matched = False
        for token in self.tokens:
            matched |= hmac.compare_digest(presented, token)
        if not matched:
            raise Unauthorized(f"Authorization: the Bearer token is not {self.setting}")


def api_token(settings: Settings) -> SecretStr | None:
    """The API token: ``HEALTHGATE_API_TOKEN``, or else the one ``healthgate init`` wrote
    to the data directory (``api_token``, mode 0600) for the embedded default."""
    if settings.api_token is not None:
        return settings.api_token
    path = settings.data_dir / constants.API_TOKEN_FILE
    try:
        written = path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return SecretStr(written) if written else None


def new_api_token(settings: Settings) -> Path | None:
    """Write a random API token to the data directory unless one is set or written; the
    file it is in, when this call wrote it."""
    if api_token(settings) is not None:
        return None
    private_dir(settings.data_dir)
    path = settings.data_dir / constants.API_TOKEN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(secrets.token_urlsafe(32) + "\n")
    return path


def api_guard(settings: Settings) -> TokenGuard:
    """The guard of every read: the API token."""
    return TokenGuard([api_token(settings)], API_TOKEN_SETTING)


def metrics_guard(settings: Settings) -> TokenGuard:
    """The guard of ``/metrics``: its own token when one is set, or the API token."""
    return TokenGuard(
        [settings.metrics_token, api_token(settings)],
        f"{METRICS_TOKEN_SETTING} or {API_TOKEN_SETTING}",
    )


#: Pages a browser opens: without credentials it is sent to the login form instead.
PAGES = frozenset({"/"})


async def unauthorized(request: Request, exc: Exception) -> Response:
    """401 naming the header, with the challenge RFC 6750 asks for; the token is not echoed.

    A browser opening a page (``Accept: text/html``) is sent to ``/login`` (303) instead.
    """
    if request.url.path in PAGES and "text/html" in request.headers.get("accept", ""):
        return RedirectResponse("/login", status_code=303)
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
    token = api_token(settings)
    if is_loopback(settings.web_host) or (token and token.get_secret_value().strip()):
        return
    raise InvalidInput(
        API_TOKEN_SETTING,
        None,
        f"must be set for the web process to listen on {settings.web_host} "
        f"({WEB_HOST_SETTING}, not loopback): reads need a bearer token beyond this machine",
    )
