"""The edge handler on CPython: ``perch edge dev``, the demo and end-to-end tests.

Same handler as the Worker, over a :class:`LocalPlatform`: KV is the
on-disk :class:`core.LocalKV` that the control plane publishes to, the
origin and the control plane are reached with httpx, ``waitUntil`` is an
asyncio task, and event queues are whatever producers the caller passes in
(:class:`QueueProducer`; ``perch edge dev`` passes a directory queue's).
Served as a small ASGI app by uvicorn.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import httpx

from core import JSONInputError, LocalKV, parse_json
from edge.config import EVENT_QUEUE_PREFIX
from edge.platform import EdgeRequest, OriginResponse
from edge.routing import handle
from edge.visit import Edge

__all__ = ["LocalPlatform", "QueueProducer", "asgi_app"]

MAX_REQUEST_BYTES = 1024 * 1024
# Lets local tests and the demo pose as visitors from elsewhere: JSON that
# stands in for workerd's request.cf. Only this dev runner reads it.
DEV_CF_HEADER = "x-perch-dev-cf"
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")  # bytes no HTTP client will send in a header value

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class QueueProducer(Protocol):
    """One event queue, as the local runner sends to it (what a Queues binding is on Workers)."""

    def send_batch(self, messages: list[str]) -> Awaitable[None] | None:
        """Store ``messages`` (signed text, one ``sendBatch``'s worth) or raise; may be async.

        A raise sends these messages' events by POST instead. A sync producer runs on the event
        loop, so it should be quick (appending a file is).
        """


class LocalPlatform:
    def __init__(self, kv: LocalKV, client: httpx.AsyncClient, queues: Sequence[QueueProducer] = ()) -> None:
        """``queues``: event queue producers; the position in the list is the queue's route index."""
        self.kv, self.client = kv, client
        self.queues = list(queues)
        self.tasks: set[asyncio.Future[Any]] = set()

    def queue_names(self) -> tuple[str, ...]:
        return tuple(f"{EVENT_QUEUE_PREFIX}{i}" for i in range(len(self.queues)))

    async def queue_send(self, index: int, messages: list[str]) -> None:
        result = self.queues[index].send_batch(messages)
        if inspect.isawaitable(result):
            await result

    async def kv_get(self, key: str) -> bytes | None:
        return self.kv.get(key)

    async def fetch_origin(self, request: EdgeRequest, url: str) -> OriginResponse:
        # The bytes as they came (a UTF-8 cookie another app set is not ASCII), without the
        # surrounding whitespace HTTP does not count as part of a value; a value with control
        # characters could not be sent on, so that header alone is dropped.
        headers = []
        for name, value in request.headers.items():
            raw = value.encode("latin-1", "replace").strip(b" \t")
            if name in ("host", "content-length", DEV_CF_HEADER) or _CONTROL.search(raw):
                continue
            headers.append((name.encode("latin-1", "replace"), raw))
        upstream = self.client.build_request(
            request.method, url, headers=headers, content=request.body or None
        )
        response = await self.client.send(upstream, stream=True)

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_bytes():
                    yield chunk
            finally:
                await response.aclose()

        return OriginResponse(response.status_code, list(response.headers.multi_items()), body())

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        response = await self.client.post(url, content=body, headers=dict(headers))
        return response.status_code, response.content

    def wait_until(self, task: Awaitable[Any]) -> None:
        future = asyncio.ensure_future(task)
        self.tasks.add(future)
        future.add_done_callback(self.tasks.discard)

    async def drain(self) -> None:
        """Wait for background work (tests, and shutdown)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def perf_s(self) -> float:
        return time.perf_counter()


def _edge_request(scope: Scope, body: bytes) -> EdgeRequest:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    host = headers.get("host") or f"{scope['server'][0]}:{scope['server'][1]}"
    query = scope.get("query_string", b"").decode("latin-1")
    url = f"{scope.get('scheme', 'http')}://{host}{scope['path']}" + (f"?{query}" if query else "")
    cf: dict[str, Any] = {}
    raw_cf = headers.get(DEV_CF_HEADER)
    if raw_cf:
        try:
            loaded = parse_json(raw_cf.encode("latin-1", "replace"))
            cf = loaded if isinstance(loaded, dict) else {}
        except JSONInputError:
            cf = {}
    return EdgeRequest(scope["method"], url, headers, body, cf)


def asgi_app(edge: Edge, platform: LocalPlatform, rng: Callable[[], Any] = random.SystemRandom) -> Any:
    """An ASGI app serving ``edge`` on ``platform``; ``rng`` makes one generator per request."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await platform.drain()
                    await platform.client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_REQUEST_BYTES:
                await _send_simple(send, 413, b'{"error":"request body larger than 1 MiB"}')
                return
            if not message.get("more_body"):
                break
        response = await handle(edge, platform, _edge_request(scope, body), rng())
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        if isinstance(response.body, bytes):
            await send({"type": "http.response.body", "body": response.body})
            return
        async for chunk in response.body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


async def _send_simple(send: Send, status: int, body: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})
