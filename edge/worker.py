"""The Cloudflare Python Worker: ``Default.fetch`` over :mod:`edge.handler`.

Only this module knows about workerd (and Pyodide's ``js``/``pyodide``
modules): it adapts the JS Request, KV binding, ``fetch``, ``waitUntil`` and
Response to the handler's :class:`~edge.platform.Platform`.  It is imported by
the bundle's ``entry.py`` and by the Pyodide test suite, never by CPython.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any

import js
from pyodide.ffi import create_proxy, to_js
from workers import Response, WorkerEntrypoint

from edge.config import EdgeConfig
from edge.handler import Edge, handle
from edge.platform import EdgeRequest, EdgeResponse, OriginResponse

__all__ = ["Default"]

# Per isolate: built on the first request (vars only arrive with a request),
# then shared by every request this isolate serves. No randomness here.
_ISOLATE: dict[str, Edge] = {}
_VARS = (
    "ORIGIN_URL",
    "CONTROL_PLANE_URL",
    "PERCH_EDGE_SECRET",
    "PERCH_USER_HEADER",
    "PERCH_CACHE_TTL_S",
    "PERCH_RETRY_AFTER_S",
    "PERCH_KV_TIMEOUT_S",
    "PERCH_EVENT_LINGER_MS",
)
# KV's own edge cache: the minimum Cloudflare allows; our isolate cache sits on top.
KV_CACHE_TTL_S = 30


def _js_options(options: Mapping[str, Any]) -> Any:
    return to_js(dict(options), dict_converter=js.Object.fromEntries)


async def _chunks(js_response: Any) -> AsyncIterator[bytes]:
    body = js_response.body
    if body is None or not body:
        return
    reader = body.getReader()
    while True:
        result = await reader.read()
        if result.done:
            return
        yield result.value.to_bytes()


def _readable(chunks: AsyncIterator[bytes]) -> Any:
    """A JS ReadableStream pulling from a Python async iterator."""

    async def pull(controller: Any) -> None:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            controller.close()
            proxy.destroy()
            return
        except Exception as exc:  # the origin broke off mid-page
            controller.error(str(exc))
            proxy.destroy()
            return
        controller.enqueue(to_js(chunk))

    proxy = create_proxy(pull)
    return js.ReadableStream.new(_js_options({"pull": proxy}))


class WorkersPlatform:
    """:class:`edge.platform.Platform` on workerd (and Pyodide under Node in tests)."""

    def __init__(self, env: Any, ctx: Any) -> None:
        self.env, self.ctx = env, ctx

    async def kv_get(self, key: str) -> bytes | None:
        value = await self.env.PERCH_KV.get(key, type="arrayBuffer", cacheTtl=KV_CACHE_TTL_S)
        return None if value is None else bytes(value)

    async def fetch_origin(self, request: EdgeRequest, url: str) -> OriginResponse:
        headers = [(k, v) for k, v in request.headers.items() if k not in ("host", "content-length")]
        init: dict[str, Any] = {
            "method": request.method,
            "headers": js.Headers.new(to_js(headers)),
            "redirect": "manual",
        }
        if request.body and request.method not in ("GET", "HEAD"):
            init["body"] = to_js(request.body)
        response = await js.fetch(url, _js_options(init))
        out_headers = [(str(k), str(v)) for k, v in response.headers.entries()]
        return OriginResponse(int(response.status), out_headers, _chunks(response), native=response)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        init = {
            "method": "POST",
            "headers": js.Headers.new(to_js(list(headers.items()))),
            "body": to_js(body),
        }
        response = await js.fetch(url, _js_options(init))
        return int(response.status)

    def wait_until(self, task: Awaitable[Any]) -> None:
        self.ctx.waitUntil(task)

    def now_ms(self) -> int:
        return int(js.Date.now())

    def perf_s(self) -> float:
        return time.perf_counter()


async def _edge_request(request: Any) -> EdgeRequest:
    method = str(getattr(request.method, "value", request.method)).upper()
    headers = {k.lower(): v for k, v in request.headers.items()}
    body = await request.bytes() if method not in ("GET", "HEAD") else b""
    cf = request.cf
    return EdgeRequest(method, str(request.url), headers, body, cf.to_py() if cf is not None else {})


def _env_var(env: Any, name: str) -> Any:
    try:
        return getattr(env, name)
    except AttributeError:
        return None


class Default(WorkerEntrypoint):  # type: ignore[misc]  # the SDK ships no types
    async def fetch(self, request: Any) -> Any:
        edge = _ISOLATE.get("edge")
        if edge is None:
            edge = _ISOLATE["edge"] = Edge(EdgeConfig.from_vars({n: _env_var(self.env, n) for n in _VARS}))
        platform = WorkersPlatform(self.env, self.ctx)
        # Fresh OS entropy per request: ids and anonymous draws differ across isolates.
        rng = random.SystemRandom()
        response: EdgeResponse = await handle(edge, platform, await _edge_request(request), rng)
        body: Any = response.body if isinstance(response.body, bytes) else _readable(response.body)
        return Response(body, status=response.status, headers=response.headers)
