from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from typing import Any

import pytest

from core import INDEX_KEY, Snapshot, encode_snapshot, snapshot_key
from edge.config import EVENT_QUEUE_PREFIX, EdgeConfig
from edge.platform import EdgeRequest, EdgeResponse, OriginResponse
from edge.routing import handle
from edge.visit import Edge
from tests.factories import NOW, build_snapshot

SECRET = "edge-secret"
IDENTITY_SECRET = "site-identity-secret-0123"
CONFIG = EdgeConfig(
    origin_url="https://origin.test",
    control_plane_url="https://cp.test",
    edge_secret=SECRET,
    identity_secret=IDENTITY_SECRET,
)


class FakePlatform:
    """An in-memory Platform with failure injection and a hand-driven clock."""

    def __init__(self) -> None:
        self.kv: dict[str, bytes] = {}
        self.kv_error: Exception | None = None
        self.kv_delay_s = 0.0
        self.kv_reads = 0
        self.index_reads = 0
        self.pages: dict[str, tuple[int, list[tuple[str, str]], list[bytes]]] = {}
        self.origin_error: Exception | None = None
        self.origin_fetches: list[tuple[str, str]] = []
        self.posts: list[tuple[str, bytes, dict[str, str]]] = []
        self.post_status = [202]
        self.post_answer = b'{"rejected": []}'
        self.tasks: list[Awaitable[Any]] = []
        # Event queues: none unless a test adds some; each sendBatch call as (queue, messages).
        self.queue_count = 0
        self.queue_calls: list[tuple[int, list[str]]] = []
        self.queue_error: dict[int, Exception] = {}  # queue index -> what its sendBatch raises
        self.clock_ms = NOW
        self.perf = 0.0

    def put(self, snapshot: Snapshot) -> None:
        self.kv[snapshot_key(snapshot.experiment)] = encode_snapshot(snapshot)

    async def kv_get(self, key: str) -> bytes | None:
        if key == INDEX_KEY:
            self.index_reads += 1
        else:
            self.kv_reads += 1  # snapshot reads: what the cache tests count
        if self.kv_delay_s:
            await asyncio.sleep(self.kv_delay_s)
        if self.kv_error is not None:
            raise self.kv_error
        return self.kv.get(key)

    async def fetch_origin(self, request: EdgeRequest, url: str) -> OriginResponse:
        self.origin_fetches.append((request.method, url))
        if self.origin_error is not None:
            raise self.origin_error
        status, headers, chunks = self.pages.get(url, (404, [("content-type", "text/plain")], [b"not found"]))

        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        return OriginResponse(status, list(headers), body())

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        self.posts.append((url, body, dict(headers)))
        status = self.post_status.pop(0) if len(self.post_status) > 1 else self.post_status[0]
        return status, self.post_answer

    def queue_names(self) -> tuple[str, ...]:
        return tuple(f"{EVENT_QUEUE_PREFIX}{i}" for i in range(self.queue_count))

    async def queue_send(self, index: int, messages: list[str]) -> None:
        self.queue_calls.append((index, list(messages)))
        if index in self.queue_error:
            raise self.queue_error[index]

    def wait_until(self, task: Awaitable[Any]) -> None:
        self.tasks.append(task)

    def background(self) -> list[Awaitable[Any]]:
        """Scheduled work other than the index refresh every isolate does."""
        return [t for t in self.tasks if "_load_index" not in repr(t)]

    async def drain(self) -> None:
        while self.tasks:
            task = self.tasks.pop(0)
            await task

    def now_ms(self) -> int:
        return self.clock_ms

    def perf_s(self) -> float:
        self.perf += 0.0001
        return self.perf


def request(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    cf: dict[str, Any] | None = None,
) -> EdgeRequest:
    return EdgeRequest(method, url, {k.lower(): v for k, v in (headers or {}).items()}, body, cf or {})


async def read_body(response: EdgeResponse) -> bytes:
    if isinstance(response.body, bytes):
        return response.body
    return b"".join([chunk async for chunk in response.body])


def header(response: EdgeResponse, name: str) -> list[str]:
    return [v for k, v in response.headers if k.lower() == name]


@pytest.fixture
def platform() -> Iterator[FakePlatform]:
    p = FakePlatform()
    p.put(build_snapshot())
    yield p
    for task in p.tasks:  # background work a test chose not to run
        if inspect.iscoroutine(task):
            task.close()


@pytest.fixture
def edge() -> Edge:
    return Edge(CONFIG)


def serve(edge: Edge, platform: FakePlatform, req: EdgeRequest, seed: int = 1) -> EdgeResponse:
    return asyncio.run(handle(edge, platform, req, random.Random(seed)))
