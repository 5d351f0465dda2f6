"""What operators and tools reach: ``/healthz``, and the API docs when enabled."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from scheduler.runtime import Runtime


def ops_routes(app: FastAPI, runtime: Runtime) -> None:
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


def docs_routes(reads: APIRouter, app: FastAPI) -> None:
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
