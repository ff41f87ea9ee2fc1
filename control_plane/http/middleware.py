"""A bug of ours answers one clean JSON 500, logged once.

Starlette's ``ServerErrorMiddleware`` sends the 500 from an ``Exception`` handler and then
re-raises, so uvicorn logs a second traceback and resets the connection: a keep-alive client
loses the connection on top of the error. This middleware sits inside it, catches what no
other handler took, logs it with the request line, and answers; only a response that had
already started (nothing can be said cleanly any more) is left to propagate.
"""

from __future__ import annotations

import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["InternalErrorMiddleware"]

log = logging.getLogger("perch.control_plane")

_BODY = json.dumps({"error": "internal error; see the control plane's log"}).encode()


class InternalErrorMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:
                raise
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(_BODY)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _BODY})
