"""`perch edge dev` as a real process on loopback, with a real origin and control plane."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from core import LocalKV, encode_snapshot, snapshot_key, verify
from edge.config import Var
from tests.factories import build_snapshot
from tests.procs import free_port, perch_process

pytestmark = pytest.mark.process

SECRET = "local-secret"
PAGE = b'<html><body><div data-perch-slot="local-hero">default</div></body></html>'


class _Upstream:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.cookies: list[bytes] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                upstream.cookies.append((self.headers.get("cookie") or "").encode("latin-1"))
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(PAGE)))
                self.end_headers()
                self.wfile.write(PAGE)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                try:
                    verify(SECRET, self.headers.get("x-perch-signature"), body, now=int(time.time()))
                except ValueError:
                    upstream.bad_signatures += 1
                upstream.events += json.loads(body)["events"]
                self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, _Upstream]]:
    data = tmp_path_factory.mktemp("perch-data")
    snap = build_snapshot(
        experiment="local-hero",
        holdout=0.0,
        floor=0.0,
        created_at=int(time.time() * 1000),
        alpha=[1.0, 500.0, 1.0] * 4,
        beta=[500.0, 1.0, 500.0] * 4,
    )
    LocalKV(data).put(snapshot_key("local-hero"), encode_snapshot(snap))
    upstream = _Upstream()
    port = free_port()
    env = {
        "PERCH_DATA_DIR": str(data),
        Var.ORIGIN_URL: upstream.url,
        Var.CONTROL_PLANE_URL: upstream.url,
        Var.EDGE_SECRET: SECRET,
    }
    base = f"http://127.0.0.1:{port}"
    try:
        with perch_process(["edge", "dev", "--port", str(port)], env, f"{base}/v1/health", data / "edge.log"):
            yield base, upstream
    finally:
        upstream.http.shutdown()
        upstream.http.server_close()


def _wait_for_events(upstream: _Upstream, count: int) -> None:
    for _ in range(50):
        if len(upstream.events) >= count:
            return
        time.sleep(0.05)


def test_decide_over_http_sets_cookie_and_logs_signed_exposure(running: tuple[str, _Upstream]) -> None:
    base, upstream = running
    with httpx.Client(base_url=base) as client:
        r = client.get("/v1/decide", params={"experiment": "local-hero", "ctx.device": "mobile"})
        assert r.status_code == 200
        (decision,) = r.json()["decisions"]
        assert (decision["arm"], decision["segment"], decision["reason"]) == (
            "bold",
            "mobile",
            "personalized",
        )
        assert r.headers["server-timing"].startswith("perch;dur=")
        uid = r.cookies["perch_uid"]
        # httpx holds Secure cookies back over http (browsers treat localhost as secure): send it by hand.
        again = client.get(
            "/v1/decide", params={"experiment": "local-hero"}, headers={"cookie": f"perch_uid={uid}"}
        )
        # No new id for a returning visitor: only their session's cookie (edge.session).
        assert [c.split("=")[0] for c in again.headers.get_list("set-cookie")] == ["perch_session"]
    _wait_for_events(upstream, 2)
    assert upstream.bad_signatures == 0
    assert [e["unit"] for e in upstream.events[-2:]] == [uid, uid]


def test_page_is_rendered_through_the_local_runner(running: tuple[str, _Upstream]) -> None:
    base, _ = running
    r = httpx.get(f"{base}/some/page")
    assert r.status_code == 200
    token = re.search(r'data-perch-token="(t1\.[A-Za-z0-9_\-]+\.[0-9a-f]{32})" ', r.text)
    assert token, r.text  # the filled slot carries its decision's token, for the beacon
    assert r.text.replace(token.group(0), "") == PAGE.decode().replace(">default<", "><h1>Go</h1><")
    assert r.headers["cache-control"] == "private, no-store"


def test_bad_input_is_a_4xx_over_http(running: tuple[str, _Upstream]) -> None:
    base, _ = running
    r = httpx.post(f"{base}/v1/events", content=b"not json")
    assert r.status_code == 400 and "body must be JSON" in r.json()["error"]


def test_missing_kv_dir_is_a_fallback_not_an_error(running: tuple[str, _Upstream]) -> None:
    base, _ = running
    r = httpx.get(f"{base}/v1/decide", params={"experiment": "never-published"})
    assert r.status_code == 200 and r.json()["decisions"][0]["reason"] == "fallback"


def test_health_reports_the_snapshot_held(running: tuple[str, _Upstream]) -> None:
    base, _ = running
    httpx.get(f"{base}/v1/decide", params={"experiment": "local-hero"})  # what makes the isolate hold it
    health = httpx.get(f"{base}/v1/health").json()
    assert health["snapshots"]["local-hero"]["version"] == 7


def _raw_get(base: str, path: str, header_lines: list[bytes]) -> tuple[int, bytes]:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        request = (
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n"
        )
        sock.sendall(request + b"".join(line + b"\r\n" for line in header_lines) + b"\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize(
    "line",
    [
        "cookie: theme=caf\u00e9; perch_consent=1".encode(),  # UTF-8 bytes another app's cookie holds
        b"x-trailing: value   ",
        b"x-perch-dev-cf: " + b"[" * 5000 + b"]" * 5000,
        b'x-perch-dev-cf: {"country": ' + b"9" * 5000 + b"}",
        b"referer: http://[::1/x",
    ],
    ids=["utf8-cookie", "trailing-space", "deep-dev-cf", "huge-dev-cf", "bad-referer"],
)
def test_m6_odd_headers_never_cost_the_page(running: tuple[str, _Upstream], line: bytes) -> None:
    base, upstream = running
    status, body = _raw_get(base, "/some/page", [line])
    assert status == 200, body[:300]
    assert b"<h1>Go</h1>" in body or b"default" in body
    if line.startswith(b"cookie"):
        assert upstream.cookies[-1] == "theme=caf\u00e9; perch_consent=1".encode()  # forwarded byte for byte
    status, body = _raw_get(base, "/v1/decide?experiment=local-hero", [line])
    assert status == 200, body[:300]
