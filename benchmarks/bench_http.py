"""HTTP at the local edge runner: ``perch edge dev`` under concurrent load on loopback.

A real ``perch edge dev`` process reads a snapshot from the local KV store
and sends its exposures to :mod:`benchmarks.sink` (a stand-in control plane
in its own process).  A small asyncio HTTP/1.1 client with keep-alive
connections sends ``GET /v1/decide`` from returning visitors at a few
concurrency levels, each bounded in requests and in seconds, and records
the wall time of every request beside the ``Server-Timing: perch;dur=``
the handler reports for its decisions.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from benchmarks.common import ROOT, cpu_seconds, free_port, load_average, perch_process, summarize, wait_http
from benchmarks.shapes import HEADLINE, SEED, context_for, snapshot_of_shape
from core import LocalKV, encode_snapshot, snapshot_key

__all__ = ["run"]

SECRET = "bench-edge-secret-0123456789"
USER_AGENT = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148"


class _Result:
    def __init__(self, port: int, path: str, units: list[str], requests: int, deadline: float) -> None:
        self.port, self.path, self.units, self.deadline = port, path, units, deadline
        self.counter = iter(range(requests))
        self.wall_ns: list[int] = []
        self.server_ns: list[int] = []
        self.statuses: dict[int, int] = {}
        self.reasons: dict[str, int] = {}
        self.errors: dict[str, int] = {}


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(p[:-2] for p in parts)
    else:
        body = await reader.read()
    return status, headers, body


def _server_timing_ns(value: str | None) -> int | None:
    if not value or "dur=" not in value:
        return None
    return round(float(value.partition("dur=")[2].split(";")[0].split(",")[0]) * 1e6)


async def _connection(result: _Result) -> None:
    port, path, units = result.port, result.path, result.units
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (i := next(result.counter, None)) is not None and time.monotonic() < result.deadline:
            request = (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: {USER_AGENT}\r\n"
                f"Cookie: perch_uid={units[i % len(units)]}\r\nAccept: application/json\r\n\r\n"
            ).encode()
            started = time.perf_counter_ns()
            writer.write(request)
            await writer.drain()
            try:
                status, headers, body = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                result.errors[type(exc).__name__] = result.errors.get(type(exc).__name__, 0) + 1
                return
            result.wall_ns.append(time.perf_counter_ns() - started)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            dur = _server_timing_ns(headers.get("server-timing"))
            if dur is not None:
                result.server_ns.append(dur)
            if i % 100 == 0:
                for decision in json.loads(body).get("decisions", []):
                    result.reasons[decision["reason"]] = result.reasons.get(decision["reason"], 0) + 1
    finally:
        writer.close()


async def _level(port: int, path: str, concurrency: int, requests: int, seconds: float) -> dict[str, Any]:
    rng = random.Random(SEED + concurrency)
    units = [f"{rng.getrandbits(128):032x}" for _ in range(4096)]
    result = _Result(port, path, units, requests, time.monotonic() + seconds)
    started = time.perf_counter()
    await asyncio.gather(*(_connection(result) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": len(result.wall_ns),
        "seconds": elapsed,
        "requests_per_s": len(result.wall_ns) / elapsed,
        "wall": summarize(result.wall_ns),
        "server_timing": summarize(result.server_ns),
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "reasons_checked": result.reasons,
        "errors": result.errors,
    }


def _received(sink_port: int) -> tuple[int, int]:
    """(batches, events) the stand-in control plane has received so far."""
    counts = httpx.get(f"http://127.0.0.1:{sink_port}/", timeout=5).json()
    return int(counts["posts"]), int(counts["events"])


def _drain(sink_port: int, events: int, timeout_s: float = 30.0) -> tuple[float, int, int]:
    """Wait until the sink holds ``events`` events (one exposure per decision request), or
    nothing more arrives for 2 s; returns the seconds waited and the sink's (batches, events)."""
    started = last_change = time.monotonic()
    seen = _received(sink_port)
    while seen[1] < events and time.monotonic() - started < timeout_s:
        time.sleep(0.05)
        now = _received(sink_port)
        if now != seen:
            seen, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > 2.0:
            break
    return time.monotonic() - started, *seen


def run(
    *,
    concurrency: tuple[int, ...] = (1, 8, 32),
    requests: int = 4_000,
    seconds: float = 15.0,
    warmup: int = 300,
    shape: tuple[int, int] = HEADLINE,
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="perch-bench-http-"))
    sink_port, edge_port = free_port(), free_port()
    sink = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.sink", str(sink_port), "900"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{sink_port}/", sink)
        snap = snapshot_of_shape(*shape, created_at=time.time_ns() // 1_000_000, max_age_s=6 * 3600.0)
        LocalKV(root).put(snapshot_key(snap.experiment), encode_snapshot(snap))
        query = [("experiment", snap.experiment)] + [
            (f"ctx.{k}", v) for k, v in context_for(shape[1]).items()
        ]
        path = f"/v1/decide?{urlencode(query)}"
        env = {
            "PERCH_DATA_DIR": str(root),
            "CONTROL_PLANE_URL": f"http://127.0.0.1:{sink_port}",
            "PERCH_EDGE_SECRET": SECRET,
        }
        base = f"http://127.0.0.1:{edge_port}"
        out: dict[str, Any] = {"shape": "{}x{}".format(*shape), "load_before": load_average(), "levels": []}
        with perch_process(
            ["edge", "dev", "--port", str(edge_port)], env, f"{base}/v1/health", root / "edge.log"
        ) as edge:
            _drain(sink_port, asyncio.run(_level(edge_port, path, 4, warmup, seconds))["requests"])
            batches, events = _received(sink_port)
            for level in concurrency:
                cpu = cpu_seconds(edge.pid)
                result = asyncio.run(_level(edge_port, path, level, requests, seconds))
                # Each decision's exposure goes home in the background: wait until the
                # sink has them all, so no backlog spills into the next level.
                result["drain_s"], now_batches, now_events = _drain(sink_port, events + result["requests"])
                result["exposures_delivered"] = now_events - events
                result["exposure_batches"] = now_batches - batches
                batches, events = now_batches, now_events
                used_ms = (cpu_seconds(edge.pid) - cpu) * 1000
                result["edge_cpu_ms_per_request"] = used_ms / max(1, result["requests"])
                out["levels"].append(result)
        out["load_after"] = load_average()
        return out
    finally:
        sink.terminate()
        sink.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)
