"""The status as JSON (``GET /status``) and as a page for people (``GET /``), with the
small login a browser needs to read it: the token once, then a session cookie."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from policies.errors import InvalidInput
from scheduler import access
from scheduler.runtime import Runtime, utcnow
from scheduler.store import backlog, reports
from scheduler.web.webhooks import bounded_body

HERE = Path(__file__).parent
#: How often the page reloads itself, in seconds.
REFRESH_SECONDS = 30
#: Decisions listed on the page, newest first.
RECENT = 20
#: A login form is a few hundred bytes; more is not a login.
LOGIN_MAX_BYTES = 4096
#: Every page: its own files only (nothing from another site), no inline script or style,
#: never framed, and no address of it sent on as a referrer.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
#: The chart's size in SVG units: an hour a column.
CHART_WIDTH, CHART_HEIGHT = 720, 160


_templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)
_templates.filters["duration"] = backlog.duration
_templates.filters["reasons"] = reports.reasons


def chart(hours: list[dict[str, Any]]) -> dict[str, Any]:
    """The bars of the sends-and-holds chart, in SVG units, drawn by the template."""
    top = max([1, *(h["sends"] for h in hours), *(h["holds"] for h in hours)])
    column = CHART_WIDTH / max(1, len(hours))
    bars = []
    for i, hour in enumerate(hours):
        for offset, kind in ((0.1, "sends"), (0.5, "holds")):
            height = round(CHART_HEIGHT * hour[kind] / top, 1)
            bars.append(
                {
                    "kind": kind,
                    "x": round(i * column + column * offset, 1),
                    "y": round(CHART_HEIGHT - height, 1),
                    "width": round(column * 0.4, 1),
                    "height": height,
                    "count": hour[kind],
                    "end": hour["end"],
                }
            )
    return {"width": CHART_WIDTH, "height": CHART_HEIGHT, "top": top, "bars": bars}


def _page(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = _templates.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)


def status_routes(
    app: FastAPI, reads: APIRouter, runtime: Runtime, guard: access.TokenGuard
) -> None:
    """``/status`` and ``/`` on the reads router; the login, logout and static files on
    the app (they read nothing of the store)."""
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    settings = runtime.settings

    @reads.get("/status", tags=["read"])
    def status() -> dict[str, Any]:
        """Lines with their caps in use, queue by state and reason, oldest waiting message
        and estimated drain time; chats by health; messages by state; totals by reason."""
        with runtime.reads() as session:
            return reports.status(
                session, utcnow(), runtime.policy, settings.tick, settings.outcome_callback
            )

    @reads.get("/", include_in_schema=False)
    def page(message: str | None = None) -> HTMLResponse:
        now = utcnow()
        found: dict[str, Any] | None = None
        missing = None
        with runtime.reads() as session:
            data = reports.status(
                session, now, runtime.policy, settings.tick, settings.outcome_callback
            )
            hours = backlog.activity(session, now)
            recent = backlog.recent_decisions(session, RECENT)
            if message:
                try:
                    found = reports.explain(session, message.strip(), runtime.policy, now)
                except InvalidInput as exc:
                    missing = str(exc)
        return _page(
            "status.html",
            status=data,
            chart=chart(hours),
            recent=recent,
            message=message or "",
            found=found,
            missing=missing,
            refresh=REFRESH_SECONDS,
        )

    @app.get("/login", include_in_schema=False)
    def login_form() -> HTMLResponse:
        return _page("login.html", error=None)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        body = await bounded_body(request, LOGIN_MAX_BYTES)
        fields = parse_qs((body or b"").decode("utf-8", "replace"), max_num_fields=4)
        token = guard.sessions.matches((fields.get("token") or [""])[0])
        if not guard.tokens:
            return _page("login.html", 401, error=f"{guard.setting} is not set")
        if token is None:
            return _page(
                "login.html",
                401,
                error=f"token: this is not {guard.setting} (or the api_token file of the "
                "data directory, which healthgate init writes)",
            )
        answer = RedirectResponse("/", status_code=303)
        answer.set_cookie(
            access.SESSION_COOKIE,
            guard.sessions.issue(token, time.time()),
            max_age=access.SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            secure=_secure(request),
        )
        return answer

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        answer = RedirectResponse("/login", status_code=303)
        answer.delete_cookie(
            access.SESSION_COOKIE, httponly=True, samesite="strict", secure=_secure(request)
        )
        return answer


def _secure(request: Request) -> bool:
    """The cookie goes over HTTPS only, unless the page is plain HTTP on loopback."""
    return not (request.url.scheme == "http" and access.is_loopback(request.url.hostname or ""))


__all__ = ["chart", "status_routes"]
