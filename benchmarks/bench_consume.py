"""Ingestion through ``perch consume``: events/s from a local directory queue into SQLite and PostgreSQL.

The queue holds what a busy edge sends: signed messages of ``per_message`` events (exposures
with a third of them converting, half of the conversions by a tokened beacon; one message per
isolate drain), made here before the clock starts. ``consumers`` real ``perch consume``
processes are started on the empty queue; once each is polling, the whole backlog is put in
(one rename per message), and the clock runs until every event is in the database. Afterwards the
rows are counted and the statistics compared with a recomputation from them: a figure only
counts if nothing was lost or counted twice.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from benchmarks.bench_ingest import PG_BENCH_URL, prepare_postgres
from benchmarks.common import ROOT, load_average, start_perch
from benchmarks.shapes import SEED, leaf_features
from benchmarks.targets import TARGETS
from control_plane.events.queues import DirectoryQueue
from control_plane.experiments import ExperimentSpec
from control_plane.storage import stats
from control_plane.storage.schema import exposures, outcomes
from control_plane.storage.store import Store
from core import DecisionToken, encode_messages, mint_token

__all__ = ["run"]

SECRET = "bench-edge-secret-0123456789"
TOKEN = "bench-admin-token-0123456789"
UNIT_SALT = "bench-unit-salt"
EXPERIMENT = "consume-bench"
ARMS = 10


def _events(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    out: list[dict[str, Any]] = []
    while len(out) < n:
        decision = f"{rng.getrandbits(128):032x}"
        segment = rng.randrange(1, 50)
        arm = f"a{rng.randrange(ARMS)}"
        context = leaf_features(segment)
        ts = now - rng.randrange(0, 3_600_000)
        out.append(
            {
                "type": "exposure",
                "id": f"x-{decision}",
                "ts": ts,
                "decision_id": decision,
                "experiment": EXPERIMENT,
                "arm": arm,
                "unit": decision,
                "propensity": 0.1,
                "reason": "personalized",
                "segment": f"seg-{segment}",
                "snapshot_version": 1,
                "context": context,
            }
        )
        if rng.random() < 1 / 3:
            outcome: dict[str, Any] = {
                "type": "outcome",
                "id": f"o-{decision}",
                "ts": ts + 30_000,
                "decision_id": decision,
                "experiment": EXPERIMENT,
                "value": 1.0,
                "unit": decision,
            }
            if rng.random() < 0.5:
                token = DecisionToken(decision, EXPERIMENT, arm, context, ts, 1, "", "personalized")
                outcome["token"] = mint_token(SECRET, token)
            out.append(outcome)
    return out


def _spec() -> ExperimentSpec:
    return ExperimentSpec.from_dict(
        {
            "key": EXPERIMENT,
            "arms": [{"key": f"a{i}"} for i in range(ARMS)],
            "default_arm": "a0",
            "features": ["device", "source"],
            "holdout": 0.0,
            "floor": 0.05,
        }
    )


def _stage(root: Path, events: list[dict[str, Any]], per_message: int) -> tuple[DirectoryQueue, Path, int]:
    """The backlog, written through the queue's own producer, then parked beside it."""
    staging = DirectoryQueue(root / "staging")
    for start in range(0, len(events), per_message):
        (messages,) = encode_messages(
            SECRET, events[start : start + per_message], now_s=int(time.time()), batch_id=f"b{start}"
        )
        staging.send_batch(messages)
    return DirectoryQueue(root / "queue"), staging.ready, len(os.listdir(staging.ready))


def _consumer(
    root: Path, url: str, queue: DirectoryQueue, k: int, max_events: int, *, events_url: str = ""
) -> subprocess.Popen[bytes]:
    env = {
        "PERCH_DATABASE_URL": url,
        "PERCH_EVENTS_URL": events_url,
        "PERCH_DATA_DIR": str(root / f"c{k}"),
        "PERCH_ADMIN_TOKEN": TOKEN,
        "PERCH_EDGE_SECRET": SECRET,
        "PERCH_UNIT_SALT": UNIT_SALT,
    }
    args = ["consume", "--queue-dir", str(queue.path), "--max-events", str(max_events)]
    return start_perch(args, env, root / f"c{k}" / "consume.log", cwd=ROOT)


def _stored(store: Store) -> int:
    with store.engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(exposures)).scalar() or 0
        return int(n) + int(conn.execute(select(func.count()).select_from(outcomes)).scalar() or 0)


def _drain(
    root: Path,
    url: str,
    events: list[dict[str, Any]],
    *,
    consumers: int,
    per_message: int,
    max_events: int,
    events_url: str = "",
) -> dict[str, Any]:
    store = Store.from_url(url, UNIT_SALT)
    store.migrate()
    store.create_experiment(_spec(), int(time.time() * 1000))
    queue, parked, messages = _stage(root, events, per_message)
    procs = [_consumer(root, url, queue, k, max_events, events_url=events_url) for k in range(consumers)]
    try:
        logs = [root / f"c{k}" / "consume.log" for k in range(consumers)]
        deadline = time.monotonic() + 60
        while not all("perch consume:" in log.read_text() for log in logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(
                    "a consumer did not start: " + " | ".join(log.read_text()[-500:] for log in logs)
                )
            time.sleep(0.02)
        started = time.perf_counter()
        for name in sorted(os.listdir(parked)):
            os.rename(parked / name, queue.ready / name)
        # Every message acknowledged means every group committed (consumers ack after commit);
        # watching the directory costs the database nothing.
        while queue.depth().total:
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"{queue.depth()} messages left after 600 s")
            time.sleep(0.005)
        seconds = time.perf_counter() - started
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
    if events_url:
        exact, stored, extra = _clickhouse_check(events_url, events)
    else:
        with store.engine.connect() as conn:
            kept, recomputed = stats.totals(conn, EXPERIMENT), stats.recompute(conn, EXPERIMENT)
        exact = {k: (round(v.exposures, 6), round(v.reward, 6)) for k, v in kept.items()} == {
            k: (round(v.exposures, 6), round(v.reward, 6)) for k, v in recomputed.items()
        }
        stored, extra = _stored(store), {}
        exact = exact and stored == len(events)
    store.engine.dispose()
    return {
        "consumers": consumers,
        "events": len(events),
        "messages": messages,
        "seconds": seconds,
        "events_per_s": len(events) / seconds,
        "stored": stored,
        "exact": exact,
        **extra,
    }


def _clickhouse_check(events_url: str, events: list[dict[str, Any]]) -> tuple[bool, int, dict[str, Any]]:
    """Every event stored once, the views' cells equal a recomputation from the rows (FINAL); and
    the bytes a stored exposure takes once its parts are merged."""
    from control_plane.storage.clickhouse import executor_for
    from control_plane.storage.clickhouse_events import EventLog

    log = EventLog(executor_for(events_url))
    try:
        counts = log.counts(EXPERIMENT)
        stored = sum(counts.values())
        rounded = [
            {k: (round(v.exposures, 6), round(v.reward, 6)) for k, v in sums.items()}
            for sums in (log.totals(EXPERIMENT), log.recompute(EXPERIMENT))
        ]
        log.ch.command(f"OPTIMIZE TABLE `{log.ch.database}`.exposures FINAL")
        extra = {"bytes_per_exposure": log.bytes_per_exposure()}
    finally:
        log.ch.close()
    return rounded[0] == rounded[1] and stored == len(events), stored, extra


def run(
    *,
    events: int = 200_000,
    consumers: tuple[int, ...] = (1, 2),
    per_message: int = 300,
    max_events: int = 5_000,
    backends: tuple[str, ...] = ("sqlite", "postgresql", "chdb"),
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="perch-bench-consume-"))
    out: dict[str, Any] = {
        "load_before": load_average(),
        "per_message": per_message,
        "max_events": max_events,
        "backends": {},
    }
    try:
        for backend in backends:
            runs = []
            for k in consumers:
                where = root / f"{backend}-{k}"
                where.mkdir(parents=True)
                events_url = ""
                if backend == "chdb":
                    if k > 1:  # chDB: one process per data path
                        continue
                    url, events_url = f"sqlite:///{where / 'perch.db'}", f"chdb://{where / 'ch'}"
                elif backend == "postgresql":
                    try:
                        out["postgresql_version"] = prepare_postgres()
                    except Exception as exc:  # no server here: say so in the report, measure the rest
                        runs = [{"skipped": f"PostgreSQL not reachable: {exc}"[:300]}]
                        break
                    url = PG_BENCH_URL
                else:
                    url = f"sqlite:///{where / 'perch.db'}"
                batch = _events(events, SEED * 10 + k)
                runs.append(
                    _drain(
                        where,
                        url,
                        batch,
                        consumers=k,
                        per_message=per_message,
                        max_events=max_events,
                        events_url=events_url,
                    )
                )
            out["backends"][backend] = runs
        out["load_after"] = load_average()
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


TARGET = TARGETS["consume.events_per_s"]
CHDB_TARGET = TARGETS["consume.chdb_events_per_s"]


def verdicts(data: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(figure, measured, target, met) per database: its best run, which must also be exact."""
    out = []
    for backend, runs in data.get("backends", {}).items():
        measured = [r for r in runs if "events_per_s" in r]
        if not measured:
            out.append(
                (
                    f"`perch consume` into {backend}",
                    "not measured",
                    TARGET.text,
                    False,
                )
            )
            continue
        best = max(measured, key=lambda r: r["events_per_s"])
        exact = all(r["exact"] for r in measured)
        target = CHDB_TARGET if backend == "chdb" else TARGET
        value = f"{best['events_per_s']:,.0f} events/s ({best['consumers']} consumers)" + (
            "" if exact else ", **not exact**"
        )
        out.append(
            (
                f"`perch consume` into {backend}, local queue",
                value,
                f"{target.text}, exact",
                exact and target.met(best["events_per_s"]),
            )
        )
    return out


def section(data: dict[str, Any]) -> list[str]:
    """The report's section: one row per (database, consumers)."""
    lines = [
        "## 5b. Ingestion through `perch consume`",
        "",
        f"A backlog of signed queue messages of {data['per_message']} events each (exposures; a third "
        "convert, half of those by a tokened beacon) in a local directory queue, drained by real "
        f"`perch consume` processes (groups of up to {data['max_events']:,} events, one transaction each) "
        "started on the empty queue before the backlog lands; timed until every message is "
        "acknowledged, i.e. committed. *Exact*: every event stored once and the statistics equal a "
        "recomputation from the stored rows. Ingest transactions take turns (SQLite's writer, a "
        "PostgreSQL advisory lock): consumers add parallel parsing and verification, not parallel writes.",
        "",
    ]
    rows = []
    for backend, runs in data.get("backends", {}).items():
        for r in runs:
            if "skipped" in r:
                rows.append([backend, "—", "—", "—", "—", r["skipped"]])
                continue
            rows.append(
                [
                    backend,
                    r["consumers"],
                    f"{r['events']:,} in {r['messages']:,} messages",
                    f"{r['seconds']:.1f}",
                    f"**{r['events_per_s']:,.0f}**",
                    "yes" if r["exact"] else "**no**",
                ]
            )
    lines += [
        "| database | consumers | backlog | seconds | events/s | exact |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
        "",
    ]
    return lines


if __name__ == "__main__":  # python -m benchmarks.bench_consume: the section alone, as JSON
    print(json.dumps(run(), indent=2))
