"""The read-only JSON: lines, chats, messages, a message's decisions, webhook events."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from policies.errors import InvalidInput
from policies.statuses import ChatHealth
from scheduler import constants
from scheduler.runtime import Runtime, utcnow
from scheduler.signals.webhooks.inbox import Outcome
from scheduler.store import listing, reports
from scheduler.store.models import MessageState

Limit = Query(constants.LIST_LIMIT, ge=1, le=constants.LIST_LIMIT_MAX)


def read_routes(app: APIRouter, runtime: Runtime) -> None:
    @app.get("/lines", tags=["read"])
    def lines() -> list[dict[str, Any]]:
        """Every line with its reputation, runtime status and sends in the last 24 h."""
        with runtime.reads() as session:
            found: list[dict[str, Any]] = reports.status(session, utcnow(), runtime.policy)["lines"]
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
