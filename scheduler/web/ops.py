"""What operators and tools reach: ``/healthz``, and the OpenAPI schema when enabled."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse

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
    """The OpenAPI schema, behind the token (``HEALTHGATE_WEB_DOCS``).

    FastAPI's two HTML viewers load their scripts from a CDN, which a page of healthgate
    never does: the schema is served alone, for any OpenAPI tool to read.
    """

    @reads.get("/openapi.json", include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())
