"""Ingestion: events/s accepted through ``POST /v1/events`` of a real ``perch serve``.

For each database (SQLite file; PostgreSQL in its own ``perch_bench``
database, so the test suite's ``test`` database is never touched), a fresh
``perch serve`` process; a few sender threads post signed batches on
loopback for a bounded time, as the edge does: one event per batch (one
page view's exposure) and 50 per batch (45 exposures and 5 outcomes joining
earlier ones).  Counted are the events the server acknowledged (200 after
commit), checked afterwards against the rows in the database.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, func, select, text

from benchmarks.common import free_port, load_average, perch_process, summarize
from benchmarks.shapes import SEED, leaf_features
from control_plane.storage.schema import exposures, outcomes
from core import SIGNATURE_HEADER, encode_batch, sign

__all__ = ["PG_ADMIN_URL", "PG_BENCH_URL", "run"]

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_BENCH_URL = "postgresql://postgres@127.0.0.1:5432/perch_bench"
TOKEN = "bench-admin-token-0123456789"
SECRET = "bench-edge-secret-0123456789"
EXPERIMENT = "ingest-bench"
ARMS = 10
OUTCOMES_PER_50 = 5


def _psycopg(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def prepare_postgres(admin_url: str = PG_ADMIN_URL, bench_url: str = PG_BENCH_URL) -> str:
    """Create ``perch_bench`` if needed and empty its schema; returns the server's version."""
    admin = create_engine(_psycopg(admin_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            name = bench_url.rsplit("/", 1)[1]
            if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar():
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            version = str(conn.execute(text("SHOW server_version")).scalar())
    finally:
        admin.dispose()
    bench = create_engine(_psycopg(bench_url))
    try:
        with bench.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    finally:
        bench.dispose()
    return version


def _spec() -> dict[str, Any]:
    return {
        "key": EXPERIMENT,
        "arms": [{"key": f"a{i}"} for i in range(ARMS)],
        "default_arm": "a0",
        "features": ["device", "source"],
        "holdout": 0.0,
        "floor": 0.05,
    }


class _Sender:
    """One edge's worth of traffic: signed batches of fresh exposures (and outcomes)."""

    def __init__(self, base: str, worker: int, batch_size: int) -> None:
        self.base, self.batch_size = base, batch_size
        self.rng = random.Random(SEED * 100 + worker)
        self.worker = worker
        self.latencies_ns: list[int] = []
        self.accepted = {"exposure": 0, "outcome": 0}
        self.failed: dict[str, int] = {}
        self.recent: list[str] = []

    def _decision(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def _batch(self) -> list[dict[str, Any]]:
        now = time.time_ns() // 1_000_000
        exposures_wanted = self.batch_size if self.batch_size < 50 else self.batch_size - OUTCOMES_PER_50
        events: list[dict[str, Any]] = []
        for _ in range(exposures_wanted):
            decision = self._decision()
            segment = self.rng.randrange(1, 50)
            events.append(
                {
                    "type": "exposure",
                    "id": f"x-{decision}",
                    "ts": now,
                    "decision_id": decision,
                    "experiment": EXPERIMENT,
                    "arm": f"a{self.rng.randrange(ARMS)}",
                    "unit": decision[:32],
                    "propensity": 0.1,
                    "reason": "personalized",
                    "segment": f"seg-{segment}",
                    "snapshot_version": 1,
                    "context": leaf_features(segment),
                }
            )
        if self.batch_size >= 50:
            for decision in self.recent[:OUTCOMES_PER_50]:
                events.append(
                    {
                        "type": "outcome",
                        "id": f"o-{decision}",
                        "ts": now,
                        "decision_id": decision,
                        "experiment": EXPERIMENT,
                        "value": 1.0,
                        "unit": decision[:32],
                    }
                )
            self.recent = [e["decision_id"] for e in events[:OUTCOMES_PER_50]]
        return events

    def run(self, stop: threading.Event) -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                body = encode_batch(self._batch())
                headers = {
                    SIGNATURE_HEADER: sign(SECRET, body, int(time.time())),
                    "content-type": "application/json",
                }
                started = time.perf_counter_ns()
                try:
                    response = client.post(f"{self.base}/v1/events", content=body, headers=headers)
                except httpx.TransportError as exc:
                    self.failed[type(exc).__name__] = self.failed.get(type(exc).__name__, 0) + 1
                    continue
                self.latencies_ns.append(time.perf_counter_ns() - started)
                if response.status_code != 200:
                    key = str(response.status_code)
                    self.failed[key] = self.failed.get(key, 0) + 1
                    continue
                for kind, count in response.json()["accepted"].items():
                    if kind in self.accepted:
                        self.accepted[kind] += count


def _group_commits(base: str) -> tuple[float, float]:
    """(batches, transactions) so far, from the server's group-commit histogram."""
    text = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).text
    values = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("perch_ingest_group_batches_")
    )
    return float(values.get("perch_ingest_group_batches_sum", 0)), float(
        values.get("perch_ingest_group_batches_count", 0)
    )


def _load(base: str, batch_size: int, senders: int, duration_s: float, run_no: int) -> dict[str, Any]:
    stop = threading.Event()
    # Distinct seeds per run: a decision id sent twice would be counted as a duplicate, not accepted.
    workers = [_Sender(base, run_no * 1000 + w, batch_size) for w in range(senders)]
    batches_before, commits_before = _group_commits(base)
    threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in workers]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(duration_s)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    elapsed = time.perf_counter() - started
    accepted = {k: sum(w.accepted[k] for w in workers) for k in ("exposure", "outcome")}
    failed: dict[str, int] = {}
    for w in workers:
        for k, v in w.failed.items():
            failed[k] = failed.get(k, 0) + v
    latencies = [x for w in workers for x in w.latencies_ns]
    total = sum(accepted.values())
    batches_after, commits_after = _group_commits(base)
    commits = commits_after - commits_before
    return {
        "batch_size": batch_size,
        "senders": senders,
        "batches_per_commit": (batches_after - batches_before) / commits if commits else None,
        "seconds": elapsed,
        "batches": len(latencies),
        "accepted": accepted,
        "failed": failed,
        "events_per_s": total / elapsed,
        "batches_per_s": len(latencies) / elapsed,
        "latency": summarize(latencies),
    }


def _count(url: str) -> dict[str, int]:
    engine = create_engine(_psycopg(url) if url.startswith("postgresql") else url)
    try:
        with engine.connect() as conn:
            return {
                "exposure": int(conn.execute(select(func.count()).select_from(exposures)).scalar() or 0),
                "outcome": int(conn.execute(select(func.count()).select_from(outcomes)).scalar() or 0),
            }
    finally:
        engine.dispose()


def _backend(
    name: str, url: str, root: Path, *, loads: tuple[tuple[int, int], ...], duration_s: float
) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "PERCH_DATABASE_URL": url,
        "PERCH_DATA_DIR": str(root / name),
        "PERCH_ADMIN_TOKEN": TOKEN,
        "PERCH_EDGE_SECRET": SECRET,
        "PERCH_PUBLISH_INTERVAL_S": "3600",
    }
    runs = []
    with perch_process(["serve", "--port", str(port)], env, f"{base}/healthz", root / f"serve-{name}.log"):
        created = httpx.post(
            f"{base}/v1/experiments", json=_spec(), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        )
        created.raise_for_status()
        for run_no, (size, senders) in enumerate(loads, start=1):
            runs.append(_load(base, size, senders, duration_s, run_no))
    stored = _count(url)
    acknowledged = {k: sum(r["accepted"][k] for r in runs) for k in ("exposure", "outcome")}
    return {"runs": runs, "stored": stored, "acknowledged": acknowledged}


def run(
    *,
    duration_s: float = 8.0,
    # (events per batch, concurrent senders): one page view's exposure per batch from 4 and from 16
    # edges at once (group commit shares transactions between them), and fuller batches.
    loads: tuple[tuple[int, int], ...] = ((1, 4), (1, 16), (50, 4)),
    backends: tuple[str, ...] = ("sqlite", "postgresql"),
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="perch-bench-ingest-"))
    out: dict[str, Any] = {"load_before": load_average(), "backends": {}}
    try:
        for backend in backends:
            if backend == "postgresql":
                try:
                    out["postgresql_version"] = prepare_postgres()
                except Exception as exc:  # no server here: say so in the report, measure the rest
                    out["backends"][backend] = {"skipped": f"PostgreSQL not reachable: {exc}"[:300]}
                    continue
                url = PG_BENCH_URL
            else:
                (root / backend).mkdir(parents=True, exist_ok=True)
                url = f"sqlite:///{root / backend / 'perch.db'}"
            out["backends"][backend] = _backend(backend, url, root, loads=loads, duration_s=duration_s)
        out["load_after"] = load_average()
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)
