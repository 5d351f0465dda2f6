"""The web process: Linq webhooks in, read-only JSON out. Built from settings by a factory.

Run it with ``uvicorn --factory scheduler.web:create_app`` or ``healthgate web``. Webhooks
are signed by the provider and ``/healthz`` tells nothing; every other route needs the
API token (``scheduler.access``), and only the ``Host`` names of the settings are answered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from policies.errors import InvalidInput
from scheduler import access
from scheduler.client import Healthgate
from scheduler.runtime import Runtime
from scheduler.settings import Settings
from scheduler.signals.webhooks.inbox import LinqInbox
from scheduler.web.metrics import metrics_routes
from scheduler.web.ops import docs_routes, ops_routes
from scheduler.web.reads import read_routes
from scheduler.web.status import status_routes
from scheduler.web.webhooks import webhook_routes

__all__ = ["create_app"]


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

    webhook_routes(app, inbox)
    ops_routes(app, runtime)
    metrics_routes(app, runtime, settings)
    # Every other route goes on this router, before it is included: it takes the API
    # token (``/metrics`` takes ``access.metrics_guard`` instead).
    guard = access.api_guard(settings)
    reads = APIRouter(dependencies=[Depends(guard)])
    read_routes(reads, runtime)
    status_routes(app, reads, runtime, guard)
    if settings.web_docs:
        docs_routes(reads, app)
    app.include_router(reads)
    return app
