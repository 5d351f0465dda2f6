"""Provider webhooks in: bodies bounded while read, then verified and recorded."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from scheduler import constants
from scheduler.signals.webhooks.inbox import LinqInbox


def webhook_routes(app: FastAPI, inbox: LinqInbox) -> None:
    @app.post("/webhooks/linq", tags=["webhooks"])
    async def linq_webhook(request: Request) -> Response:
        """A Linq event, signed per Standard Webhooks; 401 unless the signature verifies."""
        limit = constants.WEBHOOK_MAX_BYTES
        try:
            body = await bounded_body(request, limit)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read an answer
        if body is None:
            return JSONResponse({"error": f"body: larger than {limit} bytes"}, status_code=413)
        receipt = await run_in_threadpool(inbox.receive, body, dict(request.headers))
        headers = {}
        if receipt.retry_after is not None:
            headers["Retry-After"] = str(receipt.retry_after)
        return JSONResponse(receipt.body, status_code=receipt.status_code, headers=headers)


async def bounded_body(request: Request, limit: int) -> bytes | None:
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
