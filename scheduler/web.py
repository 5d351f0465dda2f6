"""The web process: Linq webhooks in, read-only JSON out. Built from settings by a factory.

Run it with ``uvicorn --factory scheduler.web:create_app`` or ``healthgate web``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from policies.errors import InvalidInput
from policies.statuses import ChatHealth
from scheduler import constants
from scheduler.client import Healthgate
from scheduler.runtime import Runtime, utcnow
from scheduler.settings import Settings
from scheduler.signals.webhooks.inbox import LinqInbox, Outcome
from scheduler.store import listing, reports
from scheduler.store.models import MessageState

Limit = Query(constants.LIST_LIMIT, ge=1, le=constants.LIST_LIMIT_MAX)


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app over the store the settings name; its engine is closed at shutdown."""
    settings = settings or Settings()
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

    app = FastAPI(
        title="healthgate",
        summary="Provider webhooks in; lines, chats and messages out (read-only).",
        lifespan=lifespan,
    )

    @app.exception_handler(InvalidInput)
    async def _invalid(_request: Request, exc: InvalidInput) -> JSONResponse:
        return JSONResponse({"error": str(exc), "field": exc.field}, status_code=422)

    _webhook_routes(app, inbox)
    _read_routes(app, runtime)
    return app


def _webhook_routes(app: FastAPI, inbox: LinqInbox) -> None:
    @app.post("/webhooks/linq", tags=["webhooks"])
    async def linq_webhook(request: Request) -> JSONResponse:
        """A Linq event, signed per Standard Webhooks; 401 unless the signature verifies."""
        body = await request.body()
        if len(body) > constants.WEBHOOK_MAX_BYTES:
            limit = constants.WEBHOOK_MAX_BYTES
            return JSONResponse({"error": f"body: larger than {limit} bytes"}, status_code=413)
        receipt = await run_in_threadpool(inbox.receive, body, dict(request.headers))
        return JSONResponse(receipt.body, status_code=receipt.status_code)


def _read_routes(app: FastAPI, runtime: Runtime) -> None:
    @app.get("/healthz", tags=["ops"])
    def healthz() -> JSONResponse:
        """200 when the database answers, 503 otherwise."""
        try:
            with runtime.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # any database failure means "not ready"
            return JSONResponse({"status": "down", "error": type(exc).__name__}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/lines", tags=["read"])
    def lines() -> list[dict[str, Any]]:
        """Every line with its reputation, runtime status and sends in the last 24 h."""
        with runtime.sessions() as session:
            found: list[dict[str, Any]] = reports.status(session, utcnow())["lines"]
        return found

    @app.get("/chats", tags=["read"])
    def chats(
        health: ChatHealth | None = None, line: str | None = None, limit: int = Limit
    ) -> list[dict[str, Any]]:
        """Chats, newest first, optionally of one health and one line."""
        with runtime.sessions() as session:
            return listing.chats(session, health, line, limit)

    @app.get("/messages", tags=["read"])
    def messages(state: MessageState | None = None, limit: int = Limit) -> list[dict[str, Any]]:
        """Messages, newest first, optionally in one state (bodies are not shown)."""
        with runtime.sessions() as session:
            return listing.messages(session, state.value if state else None, limit)

    @app.get("/messages/{message_id}", tags=["read"])
    def message(message_id: str) -> JSONResponse:
        """Every decision taken on one message: why it was or was not sent."""
        try:
            with runtime.sessions() as session:
                return JSONResponse(reports.explain(session, message_id))
        except InvalidInput as exc:
            return JSONResponse({"error": str(exc), "field": exc.field}, status_code=404)

    @app.get("/events", tags=["read"])
    def events(outcome: Outcome | None = None, limit: int = Limit) -> list[dict[str, Any]]:
        """Webhook events received, newest first (rejected ones say why)."""
        with runtime.sessions() as session:
            return listing.events(session, outcome.value if outcome else None, limit)
