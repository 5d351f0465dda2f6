"""The web process: Linq webhooks in, read-only JSON out. Built from settings by a factory.

Run it with ``uvicorn --factory scheduler.web:create_app`` or ``healthgate web``. Webhooks
are signed by the provider and ``/healthz`` tells nothing; every other route needs the
API token (``scheduler.access``), and only the ``Host`` names of the settings are answered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect

from policies.errors import InvalidInput
from policies.statuses import ChatHealth
from scheduler import access, constants
from scheduler.client import Healthgate
from scheduler.runtime import Runtime, utcnow
from scheduler.settings import Settings
from scheduler.signals.webhooks.inbox import LinqInbox, Outcome
from scheduler.store import listing, reports
from scheduler.store.models import MessageState

Limit = Query(constants.LIST_LIMIT, ge=1, le=constants.LIST_LIMIT_MAX)


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app over the store the settings name; its engine is closed at shutdown.

    Refuses (``InvalidInput`` naming the setting) to face the network without an API token.
    """
    settings = settings or Settings()
    access.check_exposure(settings)
    runtime = Runtime.build(settings)
    try:
        inbox = LinqInbox(runtime, settings.linq_webhook_secret)
    except InvalidInput:
        runtime.close()
        raise

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The same schema step as the CLI: upgrade on SQLite, never silently on PostgreSQL.
        await run_in_threadpool(Healthgate(runtime=runtime).ensure_schema)
        try:
            yield
        finally:
            runtime.close()

    # The built-in docs routes take no dependency: ours below take the token like any read.
    app = FastAPI(
        title="healthgate",
        summary="Provider webhooks in; lines, chats and messages out (read-only).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    # A page of another site reaching us through a DNS name rebound to our address sends
    # that name as Host: answered 400 before any route runs.
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts))

    @app.exception_handler(InvalidInput)
    async def _invalid(_request: Request, exc: InvalidInput) -> JSONResponse:
        return JSONResponse({"error": str(exc), "field": exc.field}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _unreadable(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer quotes each refused value whole; ours shows 100 characters.
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"] if part not in ("query", "path"))
        bad = InvalidInput(field, error.get("input"), error["msg"])
        return JSONResponse({"error": str(bad), "field": field}, status_code=422)

    app.add_exception_handler(access.Unauthorized, access.unauthorized)

    _webhook_routes(app, inbox)
    _ops_routes(app, runtime)
    # Every other route goes on this router, before it is included: it takes the API
    # token (``/metrics`` takes ``access.metrics_guard`` instead).
    reads = APIRouter(dependencies=[Depends(access.api_guard(settings))])
    _read_routes(reads, runtime)
    if settings.web_docs:
        _docs_routes(reads, app)
    app.include_router(reads)
    return app


def _webhook_routes(app: FastAPI, inbox: LinqInbox) -> None:
    @app.post("/webhooks/linq", tags=["webhooks"])
    async def linq_webhook(request: Request) -> Response:
        """A Linq event, signed per Standard Webhooks; 401 unless the signature verifies."""
        limit = constants.WEBHOOK_MAX_BYTES
        try:
            body = await _bounded_body(request, limit)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read an answer
        if body is None:
            return JSONResponse({"error": f"body: larger than {limit} bytes"}, status_code=413)
        receipt = await run_in_threadpool(inbox.receive, body, dict(request.headers))
        headers = {}
        if receipt.retry_after is not None:
            headers["Retry-After"] = str(receipt.retry_after)
        return JSONResponse(receipt.body, status_code=receipt.status_code, headers=headers)


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it is known to pass ``limit`` bytes: never buffered past it.

    A declared ``Content-Length`` over the limit is refused before a byte is read; a
    chunked body is read piece by piece and given up as soon as it passes the limit.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _ops_routes(app: FastAPI, runtime: Runtime) -> None:
    @app.get("/healthz", tags=["ops"])
    def healthz() -> JSONResponse:
        """200 when the database answers, 503 otherwise."""
        # A plain DBAPI connection: no transaction, so on SQLite it does not wait for the
        # write lock a long enqueue holds (the database answers; it is busy, not down).
        try:
            connection = runtime.engine.raw_connection()
            try:
                connection.cursor().execute("SELECT 1")
            finally:
                connection.close()
        except Exception as exc:  # any database failure means "not ready"
            return JSONResponse({"status": "down", "error": type(exc).__name__}, 503)
        return JSONResponse({"status": "ok"})


def _docs_routes(reads: APIRouter, app: FastAPI) -> None:
    """The OpenAPI schema and its two viewers, behind the token (``HEALTHGATE_WEB_DOCS``)."""

    @reads.get("/openapi.json", include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @reads.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} docs")

    @reads.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} docs")


def _read_routes(app: APIRouter, runtime: Runtime) -> None:
    @app.get("/lines", tags=["read"])
    def lines() -> list[dict[str, Any]]:
        """Every line with its reputation, runtime status and sends in the last 24 h."""
        with runtime.reads() as session:
            found: list[dict[str, Any]] = reports.status(session, utcnow())["lines"]
        return found

    @app.get("/chats", tags=["read"])
    def chats(
        health: ChatHealth | None = None, line: str | None = None, limit: int = Limit
    ) -> list[dict[str, Any]]:
        """Chats, newest first, optionally of one health and one line."""
        with runtime.reads() as session:
            return listing.chats(session, health, line, limit)

    @app.get("/messages", tags=["read"])
    def messages(state: MessageState | None = None, limit: int = Limit) -> list[dict[str, Any]]:
        """Messages, newest first, optionally in one state (bodies are not shown)."""
        with runtime.reads() as session:
            return listing.messages(session, state.value if state else None, limit)

    @app.get("/messages/{message_id}", tags=["read"])
    def message(message_id: str) -> JSONResponse:
        """Every decision taken on one message: why it was or was not sent."""
        try:
            with runtime.reads() as session:
                return JSONResponse(reports.explain(session, message_id))
        except InvalidInput as exc:
            return JSONResponse({"error": str(exc), "field": exc.field}, status_code=404)

    @app.get("/events", tags=["read"])
    def events(outcome: Outcome | None = None, limit: int = Limit) -> list[dict[str, Any]]:
        """Webhook events received, newest first (rejected ones say why)."""
        with runtime.reads() as session:
            return listing.events(session, outcome.value if outcome else None, limit)
