"""What the edge handler needs from its runtime, and the values it trades.

The handler (``edge.routing`` and the modules it routes to) is plain async Python; everything that
differs between workerd, Pyodide under Node and CPython (KV, subrequests,
``waitUntil``, clocks, event queues) is reached through a :class:`Platform`.  Slots are filled by
``edge.rewrite`` on every runtime alike.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

__all__ = ["EdgeRequest", "EdgeResponse", "OriginResponse", "Platform", "SlotContent", "SlotFill"]


@dataclass(frozen=True, slots=True)
class SlotContent:
    """What goes into a slot: the variant's HTML, and attributes for the slot's own start tag."""

    html: str
    attributes: Mapping[str, str] = field(default_factory=dict)  # e.g. data-perch-token


# Called for each slot's experiment key when the slot is complete; returns its content,
# or None to leave the origin's own content there.
SlotFill = Callable[[str], Awaitable[SlotContent | None]]


@dataclass(frozen=True, slots=True)
class EdgeRequest:
    method: str
    url: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes = b""
    cf: Mapping[str, Any] = field(default_factory=dict)
    # Parsed once here: routing, context and the decision all read them.
    path: str = field(init=False)
    query: tuple[tuple[str, str], ...] = field(init=False)
    hostname: str = field(init=False)

    def __post_init__(self) -> None:
        try:
            parts = urlsplit(self.url)
            hostname = (parts.hostname or "").lower()
        except ValueError:  # e.g. a bad IPv6 host from a raw local request: a page, no query
            parts, hostname = urlsplit("/"), ""
        object.__setattr__(self, "path", parts.path or "/")
        object.__setattr__(self, "query", tuple(parse_qsl(parts.query, keep_blank_values=True)))
        object.__setattr__(self, "hostname", hostname)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(slots=True)
class OriginResponse:
    status: int
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]


@dataclass(slots=True)
class EdgeResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes | AsyncIterator[bytes] = b""

    @classmethod
    def json(cls, status: int, doc: Any, headers: list[tuple[str, str]] | None = None) -> EdgeResponse:
        body = json.dumps(doc, separators=(",", ":")).encode()
        return cls(status, [("content-type", "application/json"), *(headers or [])], body)

    @classmethod
    def error(cls, status: int, message: str) -> EdgeResponse:
        """An API error: ``{"error": message}``, never cached."""
        return cls.json(status, {"error": message}, [("cache-control", "no-store")])


class Platform(Protocol):
    async def kv_get(self, key: str) -> bytes | None:
        """The KV value of ``key`` or None; raises on KV errors."""

    async def fetch_origin(self, request: EdgeRequest, url: str) -> OriginResponse:
        """Forward ``request`` to ``url`` at the origin."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        """POST to the control plane; returns the HTTP status and the response body."""

    def queue_names(self) -> tuple[str, ...]:
        """The event queues this runtime can send to, in route order (index = position); () if none.

        The same on every isolate of a deployment: ``core.route`` picks a queue by its index.
        """

    async def queue_send(self, index: int, messages: list[str]) -> None:
        """Send text ``messages`` to event queue ``index`` in one call; raises if it failed.

        ``messages`` are one group of ``core.send_batches`` (within one ``sendBatch``'s limits).
        """

    def wait_until(self, task: Awaitable[Any]) -> None:
        """Run ``task`` after the response is sent, without delaying it."""

    def now_ms(self) -> int:
        """Wall-clock time, ms since the epoch."""

    def perf_s(self) -> float:
        """A monotonic clock for durations, in seconds."""
