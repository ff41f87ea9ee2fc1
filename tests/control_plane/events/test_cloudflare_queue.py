"""Cloudflare Queues' HTTP pull consumer, against a fake of the API served for real.

A Starlette app with leases, visibility timeouts, the batch-size cap and ack/retry, reached by a
plain ``httpx.Client`` whose transport hands each request to the app through httpx's ASGI
transport (in-process, no network).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from control_plane.events.cloudflare_queue import CloudflareQueue
from control_plane.events.queues import (
    Message,
    MessageSource,
    QueueError,
)
from core.errors import PerchError
from tests.control_plane.events.test_queues import bodies

ACCOUNT = "acc123"
QUEUE_ID = "q456"
TOKEN = "cf-queues-token"
BASE = "https://api.cloudflare.com/client/v4"
PATH = f"/client/v4/accounts/{ACCOUNT}/queues/{QUEUE_ID}/messages"


@dataclass
class Stored:
    id: str
    body: str
    content_type: str
    timestamp_ms: int
    attempts: int = 0
    available_ms: int = 0
    lease_id: str | None = None
    lease_until_ms: int = 0


@dataclass
class FakeQueues:
    """Cloudflare Queues' pull and ack endpoints, with their documented semantics."""

    now_ms: int = 1_780_000_000_000
    messages: dict[str, Stored] = field(default_factory=dict)
    leases: dict[str, str] = field(default_factory=dict)  # every lease ever issued -> message id
    requests: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    fail_next: list[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=list)

    def publish(self, body: str, content_type: str = "text") -> str:
        mid = secrets.token_hex(16)
        self.messages[mid] = Stored(mid, body, content_type, self.now_ms + len(self.messages))
        return mid

    def app(self) -> Starlette:
        async def pull(request: Request) -> JSONResponse:
            return await self._handle(request, self._pull)

        async def ack(request: Request) -> JSONResponse:
            return await self._handle(request, self._ack)

        return Starlette(
            routes=[
                Route(f"{PATH}/pull", pull, methods=["POST"]),
                Route(f"{PATH}/ack", ack, methods=["POST"]),
            ]
        )

    async def _handle(self, request: Request, action: Any) -> JSONResponse:
        body = json.loads(await request.body())
        self.requests.append((request.url.path, dict(request.headers), body))
        if self.fail_next:
            status, doc, headers = self.fail_next.pop(0)
            return JSONResponse(doc, status_code=status, headers=headers)
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return error(403, 10000, "Authentication error")
        result = action(body)
        if isinstance(result, JSONResponse):
            return result
        return JSONResponse({"success": True, "errors": [], "messages": [], "result": result})

    def _pull(self, body: dict[str, Any]) -> dict[str, Any] | JSONResponse:
        batch_size = body.get("batch_size", 5)
        visibility_ms = body.get("visibility_timeout_ms", 30_000)
        if not 1 <= batch_size <= 100:
            return error(400, 11003, "batch_size must be between 1 and 100")
        if not 0 < visibility_ms <= 12 * 3600 * 1000:
            return error(400, 11004, "visibility_timeout_ms out of range")
        free = sorted(
            (
                m
                for m in self.messages.values()
                if m.available_ms <= self.now_ms and (m.lease_id is None or m.lease_until_ms <= self.now_ms)
            ),
            key=lambda m: m.timestamp_ms,
        )
        out = []
        for m in free[:batch_size]:
            m.attempts += 1
            m.lease_id = "eyJ." + secrets.token_urlsafe(24)
            m.lease_until_ms = self.now_ms + visibility_ms
            self.leases[m.lease_id] = m.id
            payload = m.body if m.content_type == "text" else base64.b64encode(m.body.encode()).decode()
            out.append(
                {
                    "body": payload,
                    "id": m.id,
                    "timestamp_ms": m.timestamp_ms,
                    "attempts": m.attempts,
                    "metadata": {"CF-sourceMessageSource": "api", "CF-Content-Type": m.content_type},
                    "lease_id": m.lease_id,
                }
            )
        return {"messages": out, "message_backlog_count": len(self.messages)}

    def _ack(self, body: dict[str, Any]) -> dict[str, Any]:
        acked = retried = 0
        # Cloudflare accepts an ack even after the visibility timeout (the docs: "permissive").
        for item in body.get("acks", []):
            if self.messages.pop(self.leases.get(item["lease_id"], ""), None) is not None:
                acked += 1
        for item in body.get("retries", []):
            m = self.messages.get(self.leases.get(item["lease_id"], ""))
            if m is not None:
                m.lease_id = None
                m.available_ms = self.now_ms + 1000 * item.get("delay_seconds", 0)
                retried += 1
        return {"ackCount": acked, "retryCount": retried, "warnings": {}}


def error(status: int, code: int, message: str) -> JSONResponse:
    doc = {"success": False, "errors": [{"code": code, "message": message}], "messages": [], "result": None}
    return JSONResponse(doc, status_code=status)


@pytest.fixture
def fake() -> FakeQueues:
    return FakeQueues()


class SyncASGI(httpx.BaseTransport):
    """A synchronous transport onto an ASGI app, as the queue's own ``httpx.Client`` needs."""

    def __init__(self, app: Starlette) -> None:
        self.asgi = httpx.ASGITransport(app=app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def go() -> httpx.Response:
            response = await self.asgi.handle_async_request(request)
            return httpx.Response(
                response.status_code, headers=response.headers, content=await response.aread()
            )

        request.read()
        return asyncio.run(go())


@pytest.fixture
def http(fake: FakeQueues) -> Iterator[httpx.Client]:
    with httpx.Client(transport=SyncASGI(fake.app())) as client:
        yield client


@pytest.fixture
def cf(http: httpx.Client) -> CloudflareQueue:
    return CloudflareQueue(ACCOUNT, QUEUE_ID, TOKEN, client=http)


def test_cloudflare_queue_is_a_message_source(cf: CloudflareQueue) -> None:
    assert isinstance(cf, MessageSource)


def test_pull_sends_the_documented_request(fake: FakeQueues, cf: CloudflareQueue) -> None:
    mid = fake.publish('t=1,v1=ab\n{"schema": 1}')
    (got,) = cf.pull(max_messages=10, visibility_timeout_s=30)
    path, headers, body = fake.requests[-1]
    assert path == f"{PATH}/pull"
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["content-type"] == "application/json"
    assert body == {"batch_size": 10, "visibility_timeout_ms": 30_000}
    assert got == Message(
        lease=fake.messages[mid].lease_id or "", body=b't=1,v1=ab\n{"schema": 1}', attempts=1, id=mid
    )


def test_pull_ack_pull_returns_nothing(fake: FakeQueues, cf: CloudflareQueue) -> None:
    for i in range(3):
        fake.publish(f"m{i}")
    got = cf.pull()
    assert bodies(got) == ["m0", "m1", "m2"]
    assert [m.attempts for m in got] == [1, 1, 1]
    cf.ack([m.lease for m in got])
    assert fake.requests[-1][2] == {"acks": [{"lease_id": m.lease} for m in got], "retries": []}
    assert fake.messages == {}
    assert cf.pull() == []


def test_leased_messages_are_not_pulled_again_until_the_timeout(
    fake: FakeQueues, cf: CloudflareQueue
) -> None:
    fake.publish("only")
    (first,) = cf.pull(visibility_timeout_s=60)
    fake.now_ms += 59_999
    assert cf.pull() == []
    fake.now_ms += 1
    (again,) = cf.pull()
    assert (again.id, again.attempts) == (first.id, 2)
    assert again.lease != first.lease


def test_retry_then_pull_returns_it_with_one_more_attempt(fake: FakeQueues, cf: CloudflareQueue) -> None:
    fake.publish("retry me")
    (got,) = cf.pull()
    cf.retry([got.lease])
    assert fake.requests[-1][2] == {"acks": [], "retries": [{"lease_id": got.lease, "delay_seconds": 0}]}
    (back,) = cf.pull()
    assert (back.id, back.body, back.attempts) == (got.id, b"retry me", 2)


def test_retry_delay_goes_up_to_whole_seconds(fake: FakeQueues, cf: CloudflareQueue) -> None:
    fake.publish("later")
    (got,) = cf.pull()
    cf.retry([got.lease], delay_s=1.5)
    assert fake.requests[-1][2]["retries"] == [{"lease_id": got.lease, "delay_seconds": 2}]
    fake.now_ms += 1_999
    assert cf.pull() == []
    fake.now_ms += 1
    assert [m.attempts for m in cf.pull()] == [2]
    with pytest.raises(ValueError, match="delay_s"):
        cf.retry([got.lease], delay_s=24 * 3600 + 1)


def test_batch_size_is_capped_at_100_and_acks_go_100_a_request(fake: FakeQueues, cf: CloudflareQueue) -> None:
    for i in range(250):
        fake.publish(f"m{i}")
    got = cf.pull(max_messages=1_000)
    assert fake.requests[-1][2]["batch_size"] == 100
    assert len(got) == 100
    got += cf.pull(max_messages=1_000) + cf.pull(max_messages=1_000)
    assert len({m.id for m in got}) == 250
    before = len(fake.requests)
    cf.ack([m.lease for m in got])
    assert [len(r[2]["acks"]) for r in fake.requests[before:]] == [100, 100, 50]
    assert fake.messages == {}


def test_nothing_to_ack_sends_nothing(fake: FakeQueues, cf: CloudflareQueue) -> None:
    cf.ack([])
    cf.retry([])
    assert fake.requests == []


def test_base64_bodies_are_decoded_by_content_type(fake: FakeQueues, cf: CloudflareQueue) -> None:
    fake.publish("plain text", "text")
    fake.publish("raw bytes", "bytes")
    fake.publish('{"a": 1}', "json")
    assert bodies(cf.pull()) == ["plain text", "raw bytes", '{"a": 1}']


def test_a_500_is_a_retriable_queue_error(fake: FakeQueues, cf: CloudflareQueue) -> None:
    doc = {"success": False, "errors": [{"code": 10001, "message": "Internal error"}], "result": None}
    fake.fail_next.append((500, doc, {}))
    with pytest.raises(QueueError, match=r"HTTP 500.*Internal error") as info:
        cf.pull()
    assert (info.value.status, info.value.retriable) == (500, True)
    assert isinstance(info.value, PerchError) and isinstance(info.value, RuntimeError)


def test_a_429_is_retriable_and_carries_retry_after(fake: FakeQueues, cf: CloudflareQueue) -> None:
    doc = {"success": False, "errors": [{"code": 971, "message": "Too many requests"}], "result": None}
    fake.fail_next.append((429, doc, {"Retry-After": "7"}))
    with pytest.raises(QueueError) as info:
        cf.ack(["lease"])
    assert (info.value.status, info.value.retriable, info.value.retry_after_s) == (429, True, 7.0)


def test_a_403_is_final_with_cloudflares_message(fake: FakeQueues, http: httpx.Client) -> None:
    cf = CloudflareQueue(ACCOUNT, QUEUE_ID, "wrong-token", client=http)
    with pytest.raises(QueueError, match=r"HTTP 403.*10000: Authentication error") as info:
        cf.pull()
    assert (info.value.status, info.value.retriable) == (403, False)


def test_success_false_on_200_is_a_final_error(fake: FakeQueues, cf: CloudflareQueue) -> None:
    fake.fail_next.append((200, {"success": False, "errors": [{"code": 1, "message": "odd"}]}, {}))
    with pytest.raises(QueueError, match="1: odd") as info:
        cf.pull()
    assert info.value.retriable is False


def test_pull_arguments_are_checked_before_any_request(fake: FakeQueues, cf: CloudflareQueue) -> None:
    with pytest.raises(ValueError, match="12 h"):
        cf.pull(visibility_timeout_s=12 * 3600 + 1)
    with pytest.raises(ValueError, match="max_messages"):
        cf.pull(max_messages=0)
    assert fake.requests == []


def _mock_queue(handler: Any, **kwargs: Any) -> tuple[CloudflareQueue, httpx.Client]:
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return CloudflareQueue(ACCOUNT, QUEUE_ID, TOKEN, client=client, **kwargs), client


def test_a_dropped_connection_is_retriable_with_no_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    cf, client = _mock_queue(handler)
    with client, pytest.raises(QueueError, match="ConnectError") as info:
        cf.pull()
    assert (info.value.status, info.value.retriable) == (None, True)


def test_every_request_carries_explicit_timeouts() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json={"success": True, "errors": [], "result": {"messages": []}})

    cf, client = _mock_queue(handler, timeout_s=12.0)
    with client:
        assert cf.pull() == []
        cf.ack(["x"])
    assert seen == [{"connect": 10.0, "read": 12.0, "write": 12.0, "pool": 12.0}] * 2
    with CloudflareQueue(ACCOUNT, QUEUE_ID, TOKEN) as own:
        assert own._client.timeout == httpx.Timeout(30.0, connect=10.0)
