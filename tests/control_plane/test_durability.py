"""kill -9 of a real `perch serve` mid-ingest loses no acknowledged event."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from control_plane.storage.schema import exposures
from control_plane.storage.store import Store
from core import encode_batch, sign
from tests.factories import UNIT_KEY, exposure
from tests.procs import NotUp, free_port, start_perch, stop, wait_http

pytestmark = pytest.mark.process

TOKEN = "admin-token-0123456789"
SECRET = "edge-secret-0123456789"


def _start(db_url: str, data: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        "PERCH_DATABASE_URL": db_url,
        "PERCH_DATA_DIR": str(data),
        "PERCH_ADMIN_TOKEN": TOKEN,
        "PERCH_EDGE_SECRET": SECRET,
        "PERCH_UNIT_SALT": UNIT_KEY,
        "PERCH_PUBLISH_INTERVAL_S": "3600",
    }
    log = data / "serve.log"
    proc = start_perch(["serve", "--port", str(port)], env, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, status=200, log=log)
    except NotUp:
        stop(proc)
        raise
    return proc


def test_acknowledged_events_survive_kill_9(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(db_url, tmp_path, port)
    acked: set[str] = set()
    sent: list[list[str]] = []
    lock = threading.Lock()
    halt = threading.Event()

    def sender(worker: int) -> None:
        batch_no = 0
        with httpx.Client(timeout=5) as client:
            while not halt.is_set():
                ids = [worker * 10**9 + batch_no * 100 + i for i in range(50)]
                batch_no += 1
                body = encode_batch([exposure(i) for i in ids])
                with lock:
                    sent.append([f"{i:032x}" for i in ids])
                try:
                    r = client.post(
                        f"{base}/v1/events",
                        content=body,
                        headers={"X-Perch-Signature": sign(SECRET, body, int(time.time()))},
                    )
                except httpx.TransportError:
                    return  # the server died under us: this batch was never acknowledged
                if r.status_code == 200:
                    with lock:
                        acked.update(f"{i:032x}" for i in ids)

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 2000 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # mid-ingest: the senders are still going
    proc.wait()
    halt.set()
    for t in threads:
        t.join()
    assert len(acked) >= 2000, "the server acknowledged too little before the kill to prove anything"

    store = Store.from_url(db_url, UNIT_KEY)
    with store.engine.connect() as conn:
        stored = {row.decision_id for row in conn.execute(select(exposures.c.decision_id))}
    store.engine.dispose()
    assert acked <= stored, f"{len(acked - stored)} acknowledged events lost"

    # After a restart the edge's resends fill in whatever was not acknowledged, without duplicates.
    # A resend is signed anew, later than the original (an identical body and timestamp is a replay).
    resent_at = int(time.time()) + 1
    proc = _start(db_url, tmp_path, port)
    try:
        with httpx.Client(timeout=10) as client:
            for ids in sent:
                body = encode_batch([exposure(int(i, 16)) for i in ids])
                r = client.post(
                    f"{base}/v1/events",
                    content=body,
                    headers={"X-Perch-Signature": sign(SECRET, body, resent_at)},
                )
                assert r.status_code == 200, r.text
    finally:
        stop(proc)
    store = Store.from_url(db_url, UNIT_KEY)
    with store.engine.connect() as conn:
        count = len(conn.execute(select(exposures.c.decision_id)).all())
    store.engine.dispose()
    assert count == sum(len(ids) for ids in sent)
