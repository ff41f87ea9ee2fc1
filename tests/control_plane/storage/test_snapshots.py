from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from alembic import command
from sqlalchemy import Engine, event, inspect, select

from control_plane.storage.migrate import alembic_config, migrate
from control_plane.storage.schema import snapshots
from control_plane.storage.store import SnapshotMeta, Store
from tests.factories import NOW, UNIT_KEY, spec


def snapshot_row(version: int, summary: Any, experiment: str = "hero") -> dict[str, Any]:
    return {
        "experiment": experiment,
        "version": version,
        "created_ms": NOW + version,
        "kv_key": f"perch:snap:{experiment}",
        "size": 3,
        "sha256": "0" * 64,
        "digest": f"1:{version}",
        "spec_version": 1,
        "data": b"\x01\x02\x03",
        "summary": summary,
    }


def as_stored(summary: Any) -> str | None:
    """A summary column's text (an odd string is stored as it is)."""
    return summary if summary is None or isinstance(summary, str) else json.dumps(summary)


def summary_of(allocation: dict[str, float], **extra: Any) -> dict[str, Any]:
    global_segment = {"key": "", "features": {}, "allocation": allocation, **extra}
    other = {"key": "mobile", "features": {"device": "mobile"}, "allocation": {"a": 0.0, "b": 1.0}}
    return {"model": "segments", "segments": [global_segment, other], "effects": []}


def global_allocations(store: Store, experiment: str = "hero") -> dict[int, Any]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(snapshots.c.version, snapshots.c.global_allocation).where(
                snapshots.c.experiment == experiment
            )
        )
        return {int(v): json.loads(a) if a is not None else None for v, a in rows}


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """Every SQL statement ``engine`` runs inside the block."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def bulky_columns_read(seen: list[str]) -> list[str]:
    """Statements that read a snapshot's bytes or summary; fails if none read snapshots at all (so a
    test of what is not read cannot pass by reading nothing)."""
    reads = [s for s in seen if "FROM snapshots" in s]
    assert reads, seen
    return [s for s in reads if "snapshots.data" in s or "snapshots.summary" in s]


def test_the_latest_snapshot_is_its_metadata_without_bytes_or_summary(store: Store) -> None:
    store.create_experiment(spec(), NOW)
    assert store.latest_snapshot("hero") is None
    store.record_snapshot(snapshot_row(1, summary_of({"a": 0.5, "b": 0.5})))
    store.record_snapshot(snapshot_row(2, summary_of({"a": 0.4, "b": 0.6})))
    with statements(store.engine) as seen:
        latest = store.latest_snapshot("hero")
    assert bulky_columns_read(seen) == []
    assert latest == SnapshotMeta("hero", 2, NOW + 2, "perch:snap:hero", 3, "0" * 64, "1:2", 1)
    assert {f.name for f in dataclasses.fields(SnapshotMeta)}.isdisjoint({"data", "summary"})
    assert store.snapshot_data("hero", 1) == b"\x01\x02\x03"
    assert store.snapshot_data("hero", 3) is None


def test_recording_a_snapshot_stores_its_global_allocation(store: Store) -> None:
    store.create_experiment(spec(), NOW)
    # Arm order is kept: reports list arms in the order the learner wrote them.
    store.record_snapshot(snapshot_row(1, summary_of({"b": 0.7, "a": 0.3})))
    store.record_snapshot(snapshot_row(2, None))
    store.record_snapshot(snapshot_row(3, {"model": "segments", "segments": [], "effects": []}))
    assert global_allocations(store) == {1: {"b": 0.7, "a": 0.3}, 2: None, 3: None}
    assert list(global_allocations(store)[1]) == ["b", "a"]


def test_upgrading_to_0006_fills_the_global_allocation_of_existing_snapshots(blank_db_url: str) -> None:
    # The database as release 0005 left it, with more snapshots than one page of the backfill.
    store = Store.from_url(blank_db_url, UNIT_KEY)
    migrate(store.engine, "0005")
    assert "global_allocation" not in {c["name"] for c in inspect(store.engine).get_columns("snapshots")}
    expected: dict[str, dict[int, Any]] = {"hero": {}, "other": {}}
    rows = []
    for version in range(1, 131):
        for experiment, allocations in expected.items():
            share = round(version / 1000, 3)
            rows.append(snapshot_row(version, summary_of({"a": share, "b": 1 - share}), experiment))
            allocations[version] = {"a": share, "b": 1 - share}
    odd = {
        131: (None, None),  # written before summaries existed
        132: ({"model": "segments", "segments": [], "effects": []}, None),
        133: ("{not json", None),
        # A global segment far longer than the prefix reports used to read.
        134: (summary_of(long := {"c": 0.5, "a": 0.25, "b": 0.25}, note="x" * 5000), long),
    }
    for version, (summary, allocation) in odd.items():
        rows.append(snapshot_row(version, summary))
        expected["hero"][version] = allocation
    with store.engine.begin() as conn:  # as 0005 stored them: the summary as JSON text
        conn.execute(snapshots.insert(), [{**r, "summary": as_stored(r["summary"])} for r in rows])

    store.migrate()

    assert global_allocations(store, "hero") == expected["hero"]
    assert global_allocations(store, "other") == expected["other"]
    assert list(global_allocations(store, "hero")[134]) == ["c", "a", "b"]
    with store.engine.connect() as conn:  # the rest of each row is untouched
        assert conn.execute(select(snapshots.c.summary).where(snapshots.c.version == 133)).scalar() == (
            "{not json"
        )
    config = alembic_config()
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0005")
    assert "global_allocation" not in {c["name"] for c in inspect(store.engine).get_columns("snapshots")}
    store.engine.dispose()
