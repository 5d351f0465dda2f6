"""The read-only JSON: lines, chats, messages, a message's decisions, webhook events."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from policies.errors import InvalidInput
from policies.statuses import ChatHealth
from scheduler import constants
from scheduler.operate import find_messages
from scheduler.runtime import Runtime, utcnow
from scheduler.signals.webhooks.inbox import Outcome
from scheduler.store import listing, reports

Limit = Query(constants.LIST_LIMIT, ge=1, le=constants.LIST_LIMIT_MAX)


def read_routes(app: APIRouter, runtime: Runtime) -> None:
    @app.get("/lines", tags=["read"])
    def lines() -> list[dict[str, Any]]:
        """Every line with its reputation, runtime status and sends in the last 24 h."""
        with runtime.reads() as session:
            found: list[dict[str, Any]] = reports.status(
                session, utcnow(), runtime.policy, runtime.settings.tick
            )["lines"]
        return found

    @app.get("/chats", tags=["read"])
    def chats(
        health: ChatHealth | None = None, line: str | None = None, limit: int = Limit
    ) -> list[dict[str, Any]]:
        """Chats, newest first, optionally of one health and one line."""
        with runtime.reads() as session:
            return listing.chats(session, health, line, limit)

    @app.get("/messages", tags=["read"])
    def messages(
        state: str | None = None,
        to: str | None = None,
        line: str | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
        newer_than: str | None = None,
        older_than: str | None = None,
        limit: int = Limit,
    ) -> list[dict[str, Any]]:
        """Messages, newest first, matching every filter given (bodies are not shown).

        ``state`` in any case; ``to`` and ``line`` in E.164; ``reason`` the last
        decision's code (``cap_sends_per_minute``); ``newer_than`` and ``older_than`` an
        age (``30m``, ``2d``) or an ISO 8601 time. Bad input is a 422 naming the field.
        """
        with runtime.reads() as session:
            return find_messages(
                session,
                utcnow(),
                to=to,
                line=line,
                state=state,
                reason=reason,
                idempotency_key=idempotency_key,
                newer_than=newer_than,
                older_than=older_than,
                limit=limit,
            )

    @app.get("/messages/{message_id}", tags=["read"])
    def message(message_id: str) -> JSONResponse:
        """Every decision taken on one message: why it was or was not sent."""
        try:
            with runtime.reads() as session:
                return JSONResponse(reports.explain(session, message_id, runtime.policy, utcnow()))
        except InvalidInput as exc:
            return JSONResponse({"error": str(exc), "field": exc.field}, status_code=404)

    @app.get("/events", tags=["read"])
    def events(outcome: Outcome | None = None, limit: int = Limit) -> list[dict[str, Any]]:
        """Webhook events received, newest first (rejected ones say why)."""
        with runtime.reads() as session:
            return listing.events(session, outcome.value if outcome else None, limit)
