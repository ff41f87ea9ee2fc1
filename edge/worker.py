"""The Cloudflare Python Worker: ``Default.fetch`` over :mod:`edge.routing`.

Only this module knows about workerd (and Pyodide's ``js``/``pyodide``
modules): it adapts the JS Request, KV binding, Queues producer bindings,
``fetch``, ``waitUntil`` and Response to the handler's
:class:`~edge.platform.Platform`.  It is imported by the bundle's ``entry.py``
and by the Pyodide test suite, never by CPython.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any
from urllib.parse import urlsplit

import js
from pyodide.ffi import create_proxy, to_js
from workers import WorkerEntrypoint

from edge.config import EVENT_QUEUE_PREFIX, KV_BINDING, EdgeConfig, Var, event_queue_names
from edge.pages import origin_url_for
from edge.platform import EdgeRequest, EdgeResponse, OriginResponse
from edge.routing import handle
from edge.visit import Edge

__all__ = ["Default"]

log = logging.getLogger("perch.edge")

# Per isolate: built on the first request (vars only arrive with a request),
# then shared by every request this isolate serves. No randomness here.
_ISOLATE: dict[str, Edge] = {}
_NULL_BODY_STATUSES = frozenset({101, 204, 205, 304})
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
        self._queues: tuple[str, ...] | None = None

    def queue_names(self) -> tuple[str, ...]:
        if self._queues is None:
            self._queues = event_queue_names(_queue_bindings(self.env))
        return self._queues

    async def queue_send(self, index: int, messages: list[str]) -> None:
        binding = getattr(self.env, self.queue_names()[index])
        # Text bodies, as the contract with `perch consume` has them (core.queue): the signed text
        # must reach the pull consumer as it was signed. Plain JS objects, not Maps, for sendBatch.
        batch = [{"body": text, "contentType": "text"} for text in messages]
        await binding.sendBatch(to_js(batch, dict_converter=js.Object.fromEntries))

    async def kv_get(self, key: str) -> bytes | None:
        # The JS binding itself, not the SDK's wrapper around it: a profile is read on most requests,
        # and the wrapper's conversions cost more than the read (measured in Pyodide).
        binding = getattr(getattr(self.env, "_env", self.env), KV_BINDING)
        value = await binding.get(key, _kv_options())
        # A missing key is JS null: None, or Pyodide's jsnull (which has no to_bytes).
        return bytes(value.to_bytes()) if hasattr(value, "to_bytes") else None

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
        return OriginResponse(int(response.status), out_headers, _chunks(response))

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        init = {
            "method": "POST",
            "headers": js.Headers.new(to_js(list(headers.items()))),
            "body": to_js(body),
        }
        response = await js.fetch(url, _js_options(init))
        text = await response.text()
        return int(response.status), str(text).encode("utf-8", "replace")

    def wait_until(self, task: Awaitable[Any]) -> None:
        self.ctx.waitUntil(task)

    def now_ms(self) -> int:
        # Python's clock is Date.now() underneath (frozen per request on workerd),
        # without a trip through the JS proxy.
        return time.time_ns() // 1_000_000

    def perf_s(self) -> float:
        return time.perf_counter()


_KV_READ: list[Any] = []


def _kv_options() -> Any:
    """The KV read's options as a JS object, made once per isolate (not at import: no JS then)."""
    if not _KV_READ:
        _KV_READ.append(_js_options({"type": "arrayBuffer", "cacheTtl": KV_CACHE_TTL_S}))
    return _KV_READ[0]


def _queue_bindings(env: Any) -> list[str]:
    """Names of the env's ``PERCH_EVENTS_*`` bindings that can ``sendBatch``."""
    # The SDK wraps env in a Python object that only answers getattr; the JS object lists the names.
    raw = getattr(env, "_env", env)
    try:
        names = [str(name) for name in js.Object.keys(raw)]
    except Exception:  # not a JS object: no bindings to find
        log.exception("cannot list the Worker's bindings; events go by POST")
        return []
    found = []
    for name in names:
        if name.startswith(EVENT_QUEUE_PREFIX):
            if hasattr(_env_var(env, name), "sendBatch"):
                found.append(name)
            else:  # e.g. a var of that name: sending to it would fail on every drain
                log.warning("%s is not a Queues producer binding; ignored", name)
    return found


async def _edge_request(request: Any) -> EdgeRequest:
    # Read straight off the JS Request: the SDK's `headers` builds an email
    # HTTPMessage per request, which costs more than the decision.
    native = getattr(request, "js_object", request)
    method = str(native.method).upper()
    headers = js.Object.fromEntries(native.headers).to_py()  # Fetch Headers: names come lower-cased
    body = (await native.arrayBuffer()).to_bytes() if method not in ("GET", "HEAD") else b""
    return EdgeRequest(method, str(native.url), headers, body, _cf(native))


def _cf(native: Any) -> dict[str, Any]:
    """``request.cf`` as a dict; absent, null (``jsnull``) or odd, it is simply empty."""
    cf = getattr(native, "cf", None)
    to_py = getattr(cf, "to_py", None)
    value = to_py() if callable(to_py) else None
    return value if isinstance(value, dict) else {}


def _js_response(response: EdgeResponse) -> Any:
    """A JS Response built directly (a third of the cost of the SDK's ``Response``)."""
    body: Any = None  # a null-body status (a 304 passed through from the origin) must have none at all
    if response.status not in _NULL_BODY_STATUSES:
        body = to_js(response.body) if isinstance(response.body, bytes) else _readable(response.body)
    init = {"status": response.status, "headers": [[k, v] for k, v in response.headers]}
    return js.Response.new(body, _js_options(init))


def _env_var(env: Any, name: str) -> Any:
    try:
        return getattr(env, name)
    except AttributeError:
        return None


async def _last_resort(env: Any, request: Any) -> Any:
    """The adapter itself failed (a bad var, a runtime surprise): pages go out as the origin made them."""
    native = getattr(request, "js_object", request)
    method = str(native.method).upper()
    origin = _env_var(env, Var.ORIGIN_URL)
    url = str(native.url)
    if origin and method in ("GET", "HEAD") and not urlsplit(url).path.startswith("/v1/"):
        url = origin_url_for(str(origin), url)
        try:
            return await js.fetch(url, _js_options({"method": method, "headers": native.headers}))
        except Exception:
            log.exception("origin fetch failed too")
    init = {"status": 500, "headers": [["content-type", "application/json"], ["cache-control", "no-store"]]}
    return js.Response.new('{"error":"internal error in the Perch edge"}', _js_options(init))


class Default(WorkerEntrypoint):  # type: ignore[misc]  # the SDK ships no types
    async def fetch(self, request: Any) -> Any:
        try:
            edge = _ISOLATE.get("edge")
            if edge is None:
                config = EdgeConfig.from_vars({name: _env_var(self.env, name) for name in Var})
                edge = _ISOLATE["edge"] = Edge(config)
            platform = WorkersPlatform(self.env, self.ctx)
            # Fresh OS entropy per request: ids and anonymous draws differ across isolates.
            rng = random.SystemRandom()
            response: EdgeResponse = await handle(edge, platform, await _edge_request(request), rng)
            return _js_response(response)
        except Exception:  # handle() never raises: this is the adapter or the configuration
            log.exception("Perch edge failed outside its handler")
            return await _last_resort(self.env, request)
