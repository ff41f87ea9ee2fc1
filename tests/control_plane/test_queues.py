"""Message sources of `perch consume`: the directory queue (also across processes) and Cloudflare's pull API.

The Cloudflare side runs against a fake of the API served for real: a Starlette app with leases,
visibility timeouts, the batch-size cap and ack/retry, reached by a plain ``httpx.Client`` whose
transport hands each request to the app through httpx's ASGI transport (in-process, no network).
"""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing
import os
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from control_plane.queues import (
    CloudflareQueue,
    DirectoryQueue,
    Message,
    MessageSource,
    QueueDepth,
    QueueError,
)
from core.errors import PerchError
from core.queue import MAX_MESSAGE_BYTES

# ---------------------------------------------------------------------------------------------
# DirectoryQueue, in one process


class Clock:
    """Wall-clock stand-in for the lease expiry, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_780_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(tmp_path: Path, clock: Clock) -> DirectoryQueue:
    return DirectoryQueue(tmp_path / "q", clock=clock)


def bodies(messages: list[Message]) -> list[str]:
    return [m.body.decode("utf-8") for m in messages]


def test_send_pull_ack_round_trip(queue: DirectoryQueue) -> None:
    sent = ["t=1,v1=ab\n{}", "zweite Nachricht \N{SNOWMAN}"]
    queue.send_batch(sent)
    assert queue.depth() == QueueDepth(ready=2, leased=0)
    got = queue.pull()
    assert bodies(got) == sent
    assert [m.attempts for m in got] == [1, 1]
    assert len({m.id for m in got}) == 2 and len({m.lease for m in got}) == 2
    assert queue.depth() == QueueDepth(ready=0, leased=2)
    queue.ack([m.lease for m in got])
    assert queue.depth().total == 0
    assert queue.pull() == []
    assert os.listdir(queue.tmp) == []


def test_directory_queue_is_a_message_source(queue: DirectoryQueue) -> None:
    assert isinstance(queue, MessageSource)


def test_oldest_first_and_at_most_max_messages(queue: DirectoryQueue) -> None:
    for i in range(4):
        queue.send_batch([f"m{i}a", f"m{i}b"])
    assert bodies(queue.pull(max_messages=3)) == ["m0a", "m0b", "m1a"]
    assert bodies(queue.pull(max_messages=1)) == ["m1b"]
    assert bodies(queue.pull(max_messages=100)) == ["m2a", "m2b", "m3a", "m3b"]


def test_a_leased_message_is_not_delivered_again_while_the_lease_holds(
    queue: DirectoryQueue, clock: Clock
) -> None:
    queue.send_batch(["one", "two"])
    first = queue.pull(max_messages=1, visibility_timeout_s=30)
    assert bodies(first) == ["one"]
    clock.now += 29.9
    assert bodies(queue.pull(visibility_timeout_s=30)) == ["two"]
    assert queue.pull() == []
    assert queue.depth() == QueueDepth(ready=0, leased=2)


def test_an_expired_lease_is_delivered_again_with_attempts_2(queue: DirectoryQueue, clock: Clock) -> None:
    queue.send_batch(["crashy"])
    (first,) = queue.pull(visibility_timeout_s=30)
    clock.now += 30.0
    (again,) = queue.pull(visibility_timeout_s=30)
    assert (again.id, again.body, again.attempts) == (first.id, b"crashy", 2)
    assert again.lease != first.lease
    clock.now += 31.0
    (third,) = queue.pull()
    assert third.attempts == 3


def test_ack_of_a_stale_lease_is_a_no_op_and_the_message_still_delivered(
    queue: DirectoryQueue, clock: Clock
) -> None:
    queue.send_batch(["slow"])
    (old,) = queue.pull(visibility_timeout_s=10)
    clock.now += 11
    (new,) = queue.pull(visibility_timeout_s=10)  # another consumer's, after the old lease ended
    queue.ack([old.lease])
    queue.retry([old.lease])
    assert queue.depth() == QueueDepth(ready=0, leased=1)
    clock.now += 11
    (redelivered,) = queue.pull()
    assert (redelivered.id, redelivered.body, redelivered.attempts) == (new.id, b"slow", 3)
    queue.ack([redelivered.lease])
    assert queue.depth().total == 0


def test_ack_twice_is_harmless(queue: DirectoryQueue) -> None:
    queue.send_batch(["x", "y"])
    got = queue.pull(max_messages=1)
    queue.ack([got[0].lease])
    queue.ack([got[0].lease])
    assert bodies(queue.pull()) == ["y"]


def test_retry_puts_the_message_back_at_once(queue: DirectoryQueue) -> None:
    queue.send_batch(["a", "b"])
    got = queue.pull()
    queue.retry([got[0].lease])
    (back,) = queue.pull()
    assert (back.id, back.body, back.attempts) == (got[0].id, b"a", 2)
    queue.ack([got[0].lease])  # the retried lease is gone: this acks nothing
    assert queue.depth() == QueueDepth(ready=0, leased=2)


def test_retry_with_a_delay_waits_that_long(queue: DirectoryQueue, clock: Clock) -> None:
    queue.send_batch(["later"])
    (got,) = queue.pull(visibility_timeout_s=5)
    queue.retry([got.lease], delay_s=60)
    clock.now += 59
    assert queue.pull() == []
    clock.now += 1
    (back,) = queue.pull()
    assert (back.id, back.attempts) == (got.id, 2)


def test_a_retried_message_keeps_its_place_before_newer_ones(queue: DirectoryQueue) -> None:
    queue.send_batch(["old"])
    (got,) = queue.pull()
    queue.send_batch(["new"])
    queue.retry([got.lease])
    assert bodies(queue.pull()) == ["old", "new"]


def test_leases_that_are_not_ours_are_refused_before_anything_is_done(queue: DirectoryQueue) -> None:
    queue.send_batch(["keep"])
    (got,) = queue.pull()
    ready_name = os.listdir(queue.leased)[0]
    for bad in ["../ready/x.0.msg", "", "lease-id-from-cloudflare", f"../leased/{ready_name}"]:
        with pytest.raises(ValueError, match="not a directory-queue lease"):
            queue.ack([got.lease, bad])
    assert queue.depth() == QueueDepth(ready=0, leased=1)
    with pytest.raises(ValueError):
        queue.retry([got.lease, "nope"])
    assert queue.depth() == QueueDepth(ready=0, leased=1)


def test_bad_arguments(queue: DirectoryQueue) -> None:
    with pytest.raises(ValueError, match="max_messages"):
        queue.pull(max_messages=0)
    with pytest.raises(ValueError, match="visibility"):
        queue.pull(visibility_timeout_s=0)
    with pytest.raises(ValueError, match="delay_s"):
        queue.retry([], delay_s=-1)


def test_an_oversize_message_is_refused_before_anything_is_written(queue: DirectoryQueue) -> None:
    with pytest.raises(ValueError, match="message 1 is"):
        queue.send_batch(["fine", "x" * (MAX_MESSAGE_BYTES + 1)])
    assert queue.depth().total == 0
    queue.send_batch(["x" * MAX_MESSAGE_BYTES])
    assert queue.depth().ready == 1


def test_files_foreign_to_the_queue_are_ignored(queue: DirectoryQueue) -> None:
    (queue.ready / "notes.txt").write_text("hi")
    (queue.leased / "junk.lease").write_text("hi")
    queue.send_batch(["real"])
    assert queue.depth() == QueueDepth(ready=1, leased=0)
    assert bodies(queue.pull()) == ["real"]


def test_asend_batch_enqueues_like_send_batch(queue: DirectoryQueue) -> None:
    asyncio.run(queue.asend_batch(["from", "async"]))
    assert bodies(queue.pull()) == ["from", "async"]


def test_a_second_handle_on_the_directory_sees_the_same_queue(tmp_path: Path, clock: Clock) -> None:
    producer = DirectoryQueue(tmp_path / "shared", clock=clock)
    consumer = DirectoryQueue(tmp_path / "shared", clock=clock)
    producer.send_batch(["hello"])
    (got,) = consumer.pull()
    producer.ack([got.lease])
    assert consumer.depth().total == 0


# ---------------------------------------------------------------------------------------------
# DirectoryQueue, across processes


def _drain(path: str, out: str, done: Any, start: Any) -> None:
    """A consumer process: pull, record, ack, until the producer is done and the queue empty."""
    queue = DirectoryQueue(path)
    start.wait()
    with open(out, "w", encoding="utf-8") as f:
        while True:
            got = queue.pull(max_messages=25, visibility_timeout_s=120)
            if not got:
                if done.is_set() and queue.depth().total == 0:
                    return
                time.sleep(0.001)
                continue
            for m in got:
                f.write(f"{m.id} {m.attempts} {m.body.decode('utf-8')}\n")
            f.flush()
            queue.ack([m.lease for m in got])


@pytest.mark.process
def test_three_processes_drain_2000_messages_exactly_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    path = tmp_path / "q"
    queue = DirectoryQueue(path)
    done, start = ctx.Event(), ctx.Event()
    outs = [tmp_path / f"consumer-{i}.txt" for i in range(3)]
    procs = [ctx.Process(target=_drain, args=(str(path), str(o), done, start)) for o in outs]
    for p in procs:
        p.start()
    sent = [f"message {i}" for i in range(2_000)]
    queue.send_batch(sent[:200])
    start.set()
    for i in range(200, 2_000, 100):  # the rest while the consumers drain
        queue.send_batch(sent[i : i + 100])
    done.set()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    lines = [line.split(" ", 2) for o in outs for line in o.read_text(encoding="utf-8").splitlines()]
    assert sorted(body for _, _, body in lines) == sorted(sent)  # none lost, none twice
    assert len({mid for mid, _, _ in lines}) == 2_000
    assert {attempts for _, attempts, _ in lines} == {"1"}
    assert all(o.read_text(encoding="utf-8") for o in outs), "every consumer took a share"
    assert queue.depth().total == 0


def _pull_and_hang(path: str, out: str) -> None:
    queue = DirectoryQueue(path)
    got = queue.pull(max_messages=2, visibility_timeout_s=0.5)
    Path(out).write_text(" ".join(m.id for m in got), encoding="utf-8")
    time.sleep(600)


@pytest.mark.process
def test_a_consumer_killed_before_its_ack_has_its_messages_redelivered(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = DirectoryQueue(tmp_path / "q")
    queue.send_batch(["a", "b", "c"])
    marker = tmp_path / "pulled.txt"
    proc = ctx.Process(target=_pull_and_hang, args=(str(queue.path), str(marker)))
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text(encoding="utf-8")) and time.monotonic() < deadline:
            time.sleep(0.01)
        taken = marker.read_text(encoding="utf-8").split()
        assert len(taken) == 2
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL
    assert bodies(queue.pull()) == ["c"]  # the dead consumer's leases still hold
    time.sleep(0.6)
    again = queue.pull()
    assert [m.id for m in again] == taken
    assert bodies(again) == ["a", "b"]
    assert [m.attempts for m in again] == [2, 2]


# ---------------------------------------------------------------------------------------------
# CloudflareQueue against a fake of the API

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
