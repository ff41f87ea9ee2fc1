"""KV publishers: Workers KV's bulk REST API against a real local HTTP server, and the local store."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from control_plane.distribution.kv_publishers import (
    KV_VALUE_MAX_BYTES,
    CloudflareKVPublisher,
    LocalKVPublisher,
    PublishError,
)
from core import LocalKV, snapshot_key

ACCOUNT = "acc123"
NAMESPACE = "ns456"
TOKEN = "cf-token-xyz"
BULK_PATH = f"/client/v4/accounts/{ACCOUNT}/storage/kv/namespaces/{NAMESPACE}/bulk"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def pairs(self) -> dict[str, bytes]:
        """The request's key/value pairs, after checking the body's shape."""
        doc = json.loads(self.body)
        assert isinstance(doc, list)
        out: dict[str, bytes] = {}
        for item in doc:
            assert set(item) == {"key", "value", "base64"}, item
            assert item["base64"] is True
            assert item["key"] not in out
            out[item["key"]] = base64.b64decode(item["value"], validate=True)
        return out


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON document; None: a successful bulk result for every key sent
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering


def ok(unsuccessful: list[str] | None = None, count: int = 0) -> Reply:
    result = {"successful_key_count": count, "unsuccessful_keys": unsuccessful or []}
    return Reply(200, {"success": True, "errors": [], "messages": [], "result": result})


class FakeCloudflare:
    """Records every request and answers from a script; an empty script means success."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.script: list[Reply] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with fake.lock:
                    fake.seen.append(
                        Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    reply = fake.script.pop(0) if fake.script else Reply()
                if reply.drop:
                    self.close_connection = True
                    return
                doc = reply.body if reply.body is not None else ok().body
                data = json.dumps(doc).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/client/v4"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)

    def check(self, seen: Seen) -> dict[str, bytes]:
        assert seen.method == "PUT"
        assert seen.path == BULK_PATH
        assert seen.headers["authorization"] == f"Bearer {TOKEN}"
        assert seen.headers["content-type"] == "application/json"
        return seen.pairs()


@pytest.fixture
def cloudflare() -> Iterator[FakeCloudflare]:
    fake = FakeCloudflare()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    fake.thread.join()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def publisher(
    cloudflare: FakeCloudflare, client: httpx.Client, sleeps: list[float], **kwargs: Any
) -> CloudflareKVPublisher:
    return CloudflareKVPublisher(
        ACCOUNT, NAMESPACE, TOKEN, client=client, base_url=cloudflare.base_url, sleep=sleeps.append, **kwargs
    )


ITEMS = {snapshot_key("hero"): b"\x00\x01snapshot\xff", snapshot_key("cta"): b"", "perch:other": b"x" * 1000}


def test_success_sends_every_pair_base64_encoded(
    cloudflare: FakeCloudflare, client: httpx.Client, sleeps: list[float]
) -> None:
    publisher(cloudflare, client, sleeps).put_many(ITEMS)
    assert len(cloudflare.seen) == 1
    assert cloudflare.check(cloudflare.seen[0]) == ITEMS
    assert sleeps == []


def test_nothing_to_write_sends_nothing(
    cloudflare: FakeCloudflare, client: httpx.Client, sleeps: list[float]
) -> None:
    publisher(cloudflare, client, sleeps).put_many({})
    assert cloudflare.seen == []


def test_429_waits_for_retry_after_then_succeeds(
    cloudflare: FakeCloudflare, client: httpx.Client, sleeps: list[float]
) -> None:
    limited = {"success": False, "errors": [{"code": 10013, "message": "rate limited"}], "result": None}
    cloudflare.script = [Reply(429, limited, {"Retry-After": "7"})]
    publisher(cloudflare, client, sleeps).put_many(ITEMS)
    assert len(cloudflare.seen) == 2
    assert [cloudflare.check(s) for s in cloudflare.seen] == [ITEMS, ITEMS]
    assert sleeps == [7.0]


def test_500_backs_off_then_succeeds(
    cloudflare: FakeCloudflare, client: httpx.Client, sleeps: list[float]
) -> None:
    cloudflare.script = [Reply(500, {"success": False, "errors": [{"code": 10001, "message": "boom"}]})]
    publisher(cloudflare, client, sleeps, backoff_s=0.25).put_many(ITEMS)
    assert [cloudflare.check(s) for s in cloudflare.seen] == [ITEMS, ITEMS]
    assert sleeps == [0.25]


def test_a_dropped_connection_is_retried(
    cloudflare: FakeCloudflare, client: httpx.Client, sleeps: list[float]
) -> None:
    cloudflare.script = [Reply(drop=True)]
    publisher(cloudflare, client, sleeps).put_many(ITEMS)
    assert [cloudflare.check(s) for s in cloudflare.seen] == [ITEMS, ITEMS]
    assert sleeps == [0.5]


def test_unsuccessful_keys_and_only_those_are_sent_again(
    cloudflare: FakeCloudflare, client: httpx.Client, sleeps: list[float]
) -> None:
    again = [snapshot_key("hero"), "perch:other"]
    cloudflare.script = [ok(unsuccessful=again, count=1)]
    publisher(cloudflare, client, sleeps).put_many(ITEMS)
    assert len(cloudflare.seen) == 2
    assert cloudflare.check(cloudflare.seen[0]) == ITEMS
    assert cloudflare.check(cloudflare.seen[1]) == {k: ITEMS[k] for k in again}
    assert sleeps == [0.5]


def test_gives_up_after_max_attempts_with_exponential_backoff(
    cloudflare: FakeCloudflare, client: httpx.Client, sleeps: list[float]
) -> None:
    cloudflare.script = [Reply(503, {"success": False, "errors": [{"code": 1, "message": "down"}]})] * 4
    with pytest.raises(PublishError, match=r"gave up after 4 attempts: HTTP 503: 1: down"):
        publisher(cloudflare, client, sleeps, max_attempts=4).put_many(ITEMS)
    assert len(cloudflare.seen) == 4
    assert sleeps == [0.5, 1.0, 2.0]


def test_keys_that_keep_failing_are_named(
    cloudflare: FakeCloudflare, client: httpx.Client, sleeps: list[float]
) -> None:
    cloudflare.script = [ok(unsuccessful=["perch:other"])] * 3
    with pytest.raises(PublishError, match=r"1 keys not written \('perch:other'\)"):
        publisher(cloudflare, client, sleeps, max_attempts=3).put_many(ITEMS)
    assert len(cloudflare.seen) == 3


def test_403_fails_at_once_with_cloudflares_message(
    cloudflare: FakeCloudflare, client: httpx.Client, sleeps: list[float]
) -> None:
    denied = {
        "success": False,
        "errors": [{"code": 10000, "message": "Authentication error"}],
        "result": None,
    }
    cloudflare.script = [Reply(403, denied)]
    with pytest.raises(PublishError, match=r"refused \(403\): 10000: Authentication error"):
        publisher(cloudflare, client, sleeps).put_many(ITEMS)
    assert len(cloudflare.seen) == 1
    assert sleeps == []


def test_success_false_on_200_is_a_failure(
    cloudflare: FakeCloudflare, client: httpx.Client, sleeps: list[float]
) -> None:
    cloudflare.script = [Reply(200, {"success": False, "errors": [{"code": 10021, "message": "bad value"}]})]
    with pytest.raises(PublishError, match="10021: bad value"):
        publisher(cloudflare, client, sleeps).put_many(ITEMS)


def test_more_than_10000_keys_go_in_several_requests(
    cloudflare: FakeCloudflare, client: httpx.Client, sleeps: list[float]
) -> None:
    items = {f"k{i}": str(i).encode() for i in range(10_001)}
    publisher(cloudflare, client, sleeps).put_many(items)
    sent = [cloudflare.check(s) for s in cloudflare.seen]
    assert [len(batch) for batch in sent] == [10_000, 1]
    assert {k: v for batch in sent for k, v in batch.items()} == items


def test_batches_stay_under_the_body_limit(
    cloudflare: FakeCloudflare, client: httpx.Client, sleeps: list[float]
) -> None:
    items = {f"k{i}": bytes([i]) * 3000 for i in range(10)}  # ~4 kB per encoded pair
    publisher(cloudflare, client, sleeps, batch_max_bytes=10_000).put_many(items)
    assert all(len(s.body) <= 10_000 for s in cloudflare.seen)
    sent = [cloudflare.check(s) for s in cloudflare.seen]
    assert [len(batch) for batch in sent] == [2, 2, 2, 2, 2]
    assert {k: v for batch in sent for k, v in batch.items()} == items


def test_an_oversize_value_is_refused_before_any_request(
    cloudflare: FakeCloudflare, client: httpx.Client, sleeps: list[float]
) -> None:
    items = {"small": b"ok", "perch:snapshot:huge": b"\0" * (KV_VALUE_MAX_BYTES + 1)}
    with pytest.raises(PublishError, match=r"'perch:snapshot:huge': value is 26214401 bytes"):
        publisher(cloudflare, client, sleeps).put_many(items)
    assert cloudflare.seen == []


@pytest.mark.parametrize("key", ["", "k" * 513, ".", "é" * 257])
def test_bad_keys_are_refused_before_any_request(
    cloudflare: FakeCloudflare, client: httpx.Client, sleeps: list[float], key: str
) -> None:
    with pytest.raises(PublishError, match="must be 1-512 bytes"):
        publisher(cloudflare, client, sleeps).put_many({"fine": b"", key: b"v"})
    assert cloudflare.seen == []


def test_local_publisher_writes_what_local_kv_reads(tmp_path: Path) -> None:
    LocalKVPublisher(LocalKV(tmp_path)).put_many(ITEMS)
    reader = LocalKV(tmp_path)  # a separate instance, as `perch edge dev` would have
    assert {k: reader.get(k) for k in ITEMS} == ITEMS
    assert reader.keys("perch:snapshot:") == sorted([snapshot_key("cta"), snapshot_key("hero")])


def test_local_publisher_checks_kv_limits_before_writing(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="must be 1-512 bytes"):
        LocalKVPublisher(LocalKV(tmp_path)).put_many({"fine": b"1", "x" * 600: b"2"})
    assert LocalKV(tmp_path).keys() == []


def test_local_publisher_reports_write_failures(tmp_path: Path) -> None:
    (tmp_path / "kv").write_text("a file where the directory should be")
    with pytest.raises(PublishError, match="writing KV key 'fine'"):
        LocalKVPublisher(LocalKV(tmp_path)).put_many({"fine": b"1"})


def test_bulk_delete_posts_the_keys_and_retries_the_ones_that_failed(
    cloudflare: FakeCloudflare, client: httpx.Client, sleeps: list[float]
) -> None:
    keys = [snapshot_key("hero"), snapshot_key("cta")]
    cloudflare.script = [Reply(503), ok(unsuccessful=[keys[1]]), ok()]
    publisher(cloudflare, client, sleeps).delete_many(keys)
    assert [(s.method, s.path) for s in cloudflare.seen] == [("POST", BULK_PATH + "/delete")] * 3
    assert [json.loads(s.body) for s in cloudflare.seen] == [keys, keys, [keys[1]]]
    assert len(sleeps) == 2


def test_local_publisher_deletes_what_it_wrote(tmp_path: Path) -> None:
    kv = LocalKV(tmp_path)
    publisher = LocalKVPublisher(kv)
    publisher.put_many({snapshot_key("hero"): b"x"})
    publisher.delete_many([snapshot_key("hero"), snapshot_key("never-written")])
    assert kv.get(snapshot_key("hero")) is None
