"""Published snapshots, the alerts about them, and the publish lock: what the publisher records
and what reports, /metrics and ingestion read back.

A snapshot's bytes and its summary can each be megabytes: ``latest_snapshot`` reads neither,
``snapshot_history`` no bytes; only ``snapshot_data`` and ``snapshot_at`` read the bytes.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection, Engine, func, select, text

from control_plane.storage.database import Database
from control_plane.storage.schema import alerts, snapshots
from core import Snapshot, SnapshotError, decode_snapshot

__all__ = ["SnapshotMeta", "SnapshotStore", "global_allocation", "publish_lock_key"]


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """A published snapshot's row without its bytes and summary (each can be megabytes)."""

    experiment: str
    version: int
    created_ms: int
    kv_key: str
    size: int
    sha256: str
    digest: str
    spec_version: int


_META_COLUMNS = [snapshots.c[field.name] for field in fields(SnapshotMeta)]


class SnapshotStore(Database):
    """The snapshot tables' reads and writes (the store's part that publishing uses)."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._publish_mutexes: dict[str, threading.Lock] = {}
        self._mutexes_guard = threading.Lock()
        # Ingestion computes a contextual exposure's propensity from the snapshot that decided:
        # decoded once per version, for the few versions in flight.
        self._decoded: OrderedDict[tuple[str, int], Snapshot | None] = OrderedDict()

    def snapshot_at(self, conn: Connection, experiment: str, version: int) -> Snapshot | None:
        """The published snapshot ``version`` of ``experiment``, decoded (None if unknown or unreadable)."""
        key = (experiment, version)
        if key in self._decoded:
            self._decoded.move_to_end(key)
            return self._decoded[key]
        data = conn.execute(
            select(snapshots.c.data).where(
                snapshots.c.experiment == experiment, snapshots.c.version == version
            )
        ).scalar()
        try:
            found = decode_snapshot(data) if data is not None else None
        except SnapshotError:
            found = None
        if found is not None:  # an unknown version may still be published: ask again next time
            self._decoded[key] = found
            if len(self._decoded) > 16:
                self._decoded.popitem(last=False)
        return found

    def latest_snapshot(self, experiment: str) -> SnapshotMeta | None:
        """The latest published snapshot's metadata: neither its bytes nor its summary are read."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(*_META_COLUMNS)
                .where(snapshots.c.experiment == experiment)
                .order_by(snapshots.c.version.desc())
                .limit(1)
            ).first()
        return SnapshotMeta(**row._mapping) if row else None

    def snapshot_data(self, experiment: str, version: int) -> bytes | None:
        """Snapshot ``version``'s encoded bytes (None if unknown, or written before 0002 kept them)."""
        with self.engine.connect() as conn:
            data: bytes | None = conn.execute(
                select(snapshots.c.data).where(
                    snapshots.c.experiment == experiment, snapshots.c.version == version
                )
            ).scalar()
        return data

    def snapshot_history(self, experiment: str, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first, without the bytes; ``summary`` is parsed JSON (or None for old rows)."""
        columns = [c for c in snapshots.c if c.name != "data"]
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(*columns)
                .where(snapshots.c.experiment == experiment)
                .order_by(snapshots.c.version.desc())
                .limit(limit)
            )
            out = [dict(r._mapping) for r in rows]
        for row in out:
            row["summary"] = json.loads(row["summary"]) if row["summary"] else None
        return out

    def add_alert(self, experiment: str, at_ms: int, kind: str, message: str, details: Any = None) -> None:
        with self.write() as conn:
            conn.execute(
                alerts.insert().values(
                    experiment=experiment,
                    at_ms=at_ms,
                    kind=kind,
                    message=message,
                    details=json.dumps(details) if details is not None else None,
                )
            )

    def alerts(self, experiment: str, limit: int = 50) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(alerts)
                .where(alerts.c.experiment == experiment)
                .order_by(alerts.c.id.desc())
                .limit(limit)
            )
            return [
                {
                    "at_ms": r.at_ms,
                    "kind": r.kind,
                    "message": r.message,
                    "details": json.loads(r.details) if r.details else None,
                }
                for r in rows
            ]

    def next_snapshot_version(self, experiment: str) -> int:
        with self.engine.connect() as conn:
            current = conn.execute(
                select(func.max(snapshots.c.version)).where(snapshots.c.experiment == experiment)
            ).scalar()
        return int(current or 0) + 1

    def record_snapshot(self, row: Mapping[str, Any]) -> None:
        """Store a published snapshot's row; ``summary`` (a dict, or None) is stored as JSON and its
        global allocation in a column of its own, taken from the dict rather than re-parsed."""
        summary = row.get("summary")
        values = {
            **row,
            "summary": json.dumps(summary) if summary is not None else None,
            "global_allocation": global_allocation(summary),
        }
        with self.write() as conn:
            conn.execute(snapshots.insert().values(**values))

    @contextmanager
    def publish_lock(self, key: str = "", wait: bool = False) -> Iterator[bool]:
        """True for the one publisher of ``key`` (an experiment; "" for the live index) allowed now:
        in this process (the schedule and on-demand publishes share a mutex per key) and across
        processes (a PostgreSQL advisory lock per key), so several publishers share many
        experiments, each published by one at a time.

        ``wait=False`` (the schedule) gives up at once when another holds it; ``wait=True``
        (an operator's publish) queues behind it.
        """
        with self._mutexes_guard:
            mutex = self._publish_mutexes.setdefault(key, threading.Lock())
        if not mutex.acquire(blocking=wait):
            yield False
            return
        try:
            if self.dialect != "postgresql":
                yield True  # SQLite is one process's database
                return
            lock_key = publish_lock_key(key)
            with self.engine.connect() as conn:
                if wait:
                    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock_key})
                    got = True
                else:
                    got = bool(
                        conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_key}).scalar()
                    )
                try:
                    yield got
                finally:
                    if got:
                        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key})
                    conn.commit()
        finally:
            mutex.release()


def global_allocation(summary: Mapping[str, Any] | None) -> str | None:
    """A summary's global segment (segment 0) allocation as JSON; None if it has none."""
    segments = summary.get("segments") if summary is not None else None
    first = segments[0] if isinstance(segments, list) and segments else None
    allocation = first.get("allocation") if isinstance(first, dict) else None
    return json.dumps(allocation) if isinstance(allocation, dict) else None


def publish_lock_key(key: str) -> int:
    """``key``'s publish lock as a signed 64-bit key for pg_advisory_lock."""
    return int.from_bytes(
        hashlib.sha256(b"perch-publish\x00" + key.encode()).digest()[:8], "big", signed=True
    )
