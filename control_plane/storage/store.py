"""The control plane's database: experiments, snapshots, statistics, locks.

SQLAlchemy Core over SQLite (embedded default) or PostgreSQL (production);
the schema is created and changed only by Alembic migrations.  Event
ingestion lives in :mod:`control_plane.events.ingest`, on top of this store.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

try:  # POSIX; elsewhere SQLite's own busy handler serialises writers
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

from sqlalchemy import Connection, Engine, create_engine, event, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from control_plane.experiments import ExperimentError, ExperimentSpec
from control_plane.propensity import PropensityCache
from control_plane.storage import stats
from control_plane.storage.migrate import migrate
from control_plane.storage.schema import (
    audit,
    counters,
    experiments,
    exposures,
    outcomes,
    revoked_sessions,
    snapshots,
)
from control_plane.storage.stats import CellStats
from core import PerchError, Snapshot, SnapshotError, decode_snapshot

__all__ = ["Conflict", "ExperimentRecord", "NotFound", "SnapshotMeta", "Store", "publish_lock_key"]

# An exposure may follow its outcome by a little (edges send on their own schedules).
EXPIRY_GRACE_MS = 3_600_000
MAX_WINDOW_MS = 90 * 86_400_000  # the longest reward window an experiment may have


class NotFound(PerchError, LookupError):
    pass


class Conflict(PerchError, ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ExperimentRecord:
    spec: ExperimentSpec
    version: int
    archived: bool
    created_ms: int
    updated_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.spec.to_dict(),
            "version": self.version,
            "archived": self.archived,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
        }


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


class Store:
    def __init__(self, engine: Engine, unit_key: str) -> None:
        self.engine = engine
        self.unit_key = unit_key.encode()
        self.dialect = engine.dialect.name
        # SQLite allows one writer; serialising writers here avoids "database is locked".
        self.write_lock = threading.RLock()
        self._publish_mutexes: dict[str, threading.Lock] = {}
        self._mutexes_guard = threading.Lock()
        # Ingestion's per-batch shortcuts: specs parsed once per (key, version), and
        # expired replay signatures purged once a minute rather than on every batch.
        self.parsed_specs: dict[str, tuple[int, ExperimentSpec]] = {}
        self.replays_purged_s = 0
        # The live experiment keys this process last wrote to KV's index (publish.publish_index).
        self.published_live: frozenset[str] | None = None
        # Contextual exposures arrive without a propensity: ingestion computes it from the
        # snapshot that decided (decoded once per version) and caches it per context.
        self.propensities = PropensityCache(size=32_768)
        self._decoded: OrderedDict[tuple[str, int], Snapshot | None] = OrderedDict()

    @classmethod
    def from_url(cls, url: str, unit_key: str) -> Store:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_connection: Any, _: Any) -> None:
                cursor = dbapi_connection.cursor()
                # WAL keeps readers off the writer's back; FULL syncs each commit so an
                # acknowledged batch survives a crash (kill -9 or power).
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=FULL")
                cursor.execute("PRAGMA foreign_keys=ON")
                # Decision ids are random, so every ingested group touches pages all over the id
                # indexes: 64 MiB of page cache (the default is 2 MiB) keeps them in memory.
                cursor.execute("PRAGMA cache_size=-65536")
                cursor.close()
        else:
            engine = create_engine(
                url.replace("postgresql://", "postgresql+psycopg://", 1),
                pool_pre_ping=True,
            )
        return cls(engine, unit_key)

    def migrate(self) -> None:
        migrate(self.engine)

    def insert(self, table: Any) -> Any:
        """A dialect insert that knows ON CONFLICT."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self.write_lock, self._writer_across_processes(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def ingest_write(self) -> Iterator[Connection]:
        """A write transaction that stores events: one at a time across every process.

        An exposure and an outcome of one decision stored by two concurrent transactions would each
        miss the other (neither is committed when the other looks), leaving the exposure without
        its reward, or the outcome pending forever. SQLite has one writer anyway; on PostgreSQL
        a transaction-level advisory lock does the same. Consumers still parse and verify in
        parallel; measured (benchmarks/RESULTS.md) the lock costs less than the race would.
        """
        with self.write() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _INGEST_LOCK_KEY})
            yield conn

    @contextmanager
    def _writer_across_processes(self) -> Iterator[None]:
        """On SQLite, writers of several processes (``perch serve`` beside ``perch consume``s) take
        turns on an advisory file lock: the waiter wakes the moment it is free, where SQLite's own
        busy handler would sleep in steps of up to 100 ms. PostgreSQL needs none."""
        path = self.engine.url.database if self.dialect == "sqlite" else None
        if not path or path == ":memory:" or fcntl is None:
            yield
            return
        with open(f"{path}.writer", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def hash_unit(self, unit: str | None) -> str | None:
        """Units are stored keyed, never raw (a salted HMAC, 128 bits)."""
        if unit is None:
            return None
        # hmac.digest: the one-shot C path, a third of hmac.new's cost (one per ingested event).
        return hmac.digest(self.unit_key, unit.encode(), "sha256").hex()[:32]

    # --- experiments -------------------------------------------------------------------------

    def _record(self, row: Any) -> ExperimentRecord:
        spec = ExperimentSpec.from_dict(json.loads(row.spec))
        return ExperimentRecord(spec, row.version, bool(row.archived), row.created_ms, row.updated_ms)

    def get_experiment(self, key: str) -> ExperimentRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(experiments).where(experiments.c.key == key)).first()
        return self._record(row) if row else None

    def list_experiments(self, include_archived: bool = False) -> list[ExperimentRecord]:
        query = select(experiments).order_by(experiments.c.key)
        if not include_archived:
            query = query.where(experiments.c.archived.is_(False))
        with self.engine.connect() as conn:
            return [self._record(row) for row in conn.execute(query)]

    def _audit(self, conn: Connection, spec: ExperimentSpec, version: int, action: str, now_ms: int) -> None:
        conn.execute(
            audit.insert().values(
                experiment=spec.key,
                version=version,
                action=action,
                spec=json.dumps(spec.to_dict(), sort_keys=True),
                at_ms=now_ms,
            )
        )

    def create_experiment(self, spec: ExperimentSpec, now_ms: int) -> ExperimentRecord:
        doc = json.dumps(spec.to_dict(), sort_keys=True)
        try:
            with self.write() as conn:
                conn.execute(
                    experiments.insert().values(
                        key=spec.key,
                        spec=doc,
                        version=1,
                        archived=False,
                        created_ms=now_ms,
                        updated_ms=now_ms,
                    )
                )
                self._audit(conn, spec, 1, "create", now_ms)
        except IntegrityError:
            recreated = self._recreate(spec, doc, now_ms)
            if recreated is None:
                raise Conflict(f"experiment {spec.key!r} exists; PATCH it instead") from None
            return recreated
        return ExperimentRecord(spec, 1, False, now_ms, now_ms)

    def _recreate(self, spec: ExperimentSpec, doc: str, now_ms: int) -> ExperimentRecord | None:
        """Creating an archived key brings it back as its next version, with the new definition.

        Its history stays (audit, snapshots, events): statistics carry over where arms and
        features match, and cells that no longer fit are skipped and counted by the learner. A
        clean slate is a new key. None if the key is live.
        """
        with self.write() as conn:
            row = conn.execute(
                select(experiments).where(experiments.c.key == spec.key).with_for_update()
            ).first()
            if row is None or not row.archived:
                return None
            version = row.version + 1
            conn.execute(
                experiments.update()
                .where(experiments.c.key == spec.key)
                .values(spec=doc, version=version, archived=False, updated_ms=now_ms)
            )
            self._audit(conn, spec, version, "recreate", now_ms)
        self.parsed_specs.pop(spec.key, None)
        return ExperimentRecord(spec, version, False, row.created_ms, now_ms)

    # Fixed at creation: changing them would reshuffle visitors or orphan statistics.
    IMMUTABLE = ("key", "salt", "features")

    def update_experiment(
        self, key: str, changes: Mapping[str, Any], now_ms: int, expected_version: int | None = None
    ) -> ExperimentRecord:
        with self.write() as conn:
            row = conn.execute(select(experiments).where(experiments.c.key == key).with_for_update()).first()
            if row is None or row.archived:
                raise NotFound(f"no experiment {key!r}")
            if expected_version is not None and row.version != expected_version:
                raise Conflict(f"experiment {key!r} is at version {row.version}, not {expected_version}")
            current = json.loads(row.spec)
            if "arms" in changes and not isinstance(changes["arms"], list):
                raise ExperimentError("arms must be a list of {key, payload?, html?} objects")
            for name in self.IMMUTABLE:
                if name in changes and changes[name] != current.get(name):
                    raise ExperimentError(f"{name} cannot change after creation (create a new experiment)")
            removed = {a["key"] for a in current["arms"]} - {
                a.get("key") for a in changes.get("arms", current["arms"]) if isinstance(a, Mapping)
            }
            if removed:
                raise ExperimentError(
                    f"arms {sorted(removed)} cannot be removed (their data would be orphaned)"
                )
            spec = ExperimentSpec.from_dict({**current, **changes})
            version = row.version + 1
            conn.execute(
                experiments.update()
                .where(experiments.c.key == key)
                .values(spec=json.dumps(spec.to_dict(), sort_keys=True), version=version, updated_ms=now_ms)
            )
            self._audit(conn, spec, version, "update", now_ms)
        return ExperimentRecord(spec, version, False, row.created_ms, now_ms)

    def archive_experiment(self, key: str, now_ms: int) -> ExperimentRecord:
        """DELETE keeps the data (events, statistics, history); the experiment stops being published."""
        with self.write() as conn:
            row = conn.execute(select(experiments).where(experiments.c.key == key)).first()
            if row is None or row.archived:
                raise NotFound(f"no experiment {key!r}")
            record = self._record(row)
            conn.execute(
                experiments.update()
                .where(experiments.c.key == key)
                .values(archived=True, version=row.version + 1, updated_ms=now_ms)
            )
            self._audit(conn, record.spec, row.version + 1, "archive", now_ms)
        return ExperimentRecord(record.spec, row.version + 1, True, row.created_ms, now_ms)

    def history(self, key: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(audit).where(audit.c.experiment == key).order_by(audit.c.id))
            return [
                {"version": r.version, "action": r.action, "at_ms": r.at_ms, "spec": json.loads(r.spec)}
                for r in rows
            ]

    # --- statistics --------------------------------------------------------------------------

    def bump(self, conn: Connection, experiment: str, name: str, by: int = 1) -> None:
        stmt = self.insert(counters).values(experiment=experiment, name=name, value=by)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["experiment", "name"], set_={"value": counters.c.value + by}
            )
        )

    def counters(self, experiment: str) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(counters.c.name, counters.c.value).where(counters.c.experiment == experiment)
            )
            return {name: int(value) for name, value in rows}

    def outcome_statuses(self, experiment: str) -> dict[str, int]:
        """Outcomes by what became of them; ``pending`` ones are orphans so far."""
        query = (
            select(outcomes.c.status, func.count())
            .where(outcomes.c.experiment == experiment)
            .group_by(outcomes.c.status)
        )
        with self.engine.connect() as conn:
            return {status: int(count) for status, count in conn.execute(query)}

    def cells(self, spec: ExperimentSpec, now_ms: int) -> dict[tuple[str, ...], dict[str, CellStats]]:
        """The learner's input: every (path, arm) cell, decayed to ``now_ms`` (see ``stats.cells``)."""
        with self.engine.connect() as conn:
            return stats.cells(conn, spec.key, spec.half_life_s, now_ms)

    def data_mark(self, experiment: str) -> int:
        """Changes whenever the experiment's statistics do (the publisher's digest)."""
        with self.engine.connect() as conn:
            return stats.data_mark(conn, experiment)

    def rollup(self, spec: ExperimentSpec) -> int:
        """Fold the experiment's appended deltas into its base statistics (hold its publish lock)."""
        with self.write() as conn:
            return stats.rollup(conn, spec.key, spec.half_life_s, upsert=self.insert)

    def expire_pending(self, now_ms: int) -> int:
        """Delete outcomes still waiting for their exposure past the reward window; how many.

        An exposure arriving after its outcome's window could only make it ``late``, so a pending
        outcome that old can never be learnt from; kept, they would only fill the database. Each
        experiment counts its own in ``expired_outcomes``. Outcomes of experiments the store does
        not know wait the longest window an experiment may have.
        """
        windows = {r.spec.key: r.spec.reward.window_s for r in self.list_experiments(include_archived=True)}
        pending = (outcomes.c.status == "pending") & (
            outcomes.c.ts_ms < now_ms - MAX_WINDOW_MS - EXPIRY_GRACE_MS
        )
        total = 0
        with self.ingest_write() as conn:
            for key, window_s in sorted(windows.items()):
                cutoff = now_ms - window_s * 1000 - EXPIRY_GRACE_MS
                gone = conn.execute(
                    outcomes.delete().where(
                        outcomes.c.experiment == key,
                        outcomes.c.status == "pending",
                        outcomes.c.ts_ms < cutoff,
                    )
                ).rowcount
                if gone:
                    self.bump(conn, key, "expired_outcomes", gone)
                total += gone
            total += conn.execute(
                outcomes.delete().where(pending, outcomes.c.experiment.not_in(list(windows) or [""]))
            ).rowcount
        return total

    def units_per_path(self, experiment: str) -> dict[tuple[str, ...], int]:
        """Distinct (hashed) visitors per full feature path among personalized exposures."""
        query = (
            select(exposures.c.path, func.count(func.distinct(exposures.c.unit_hash)))
            .where(
                exposures.c.experiment == experiment,
                exposures.c.reason == "personalized",
                exposures.c.unit_hash.is_not(None),
            )
            .group_by(exposures.c.path)
        )
        with self.engine.connect() as conn:
            return {tuple(json.loads(path)): int(n) for path, n in conn.execute(query)}

    # --- dashboard sessions ------------------------------------------------------------------

    def revoke_session(self, nonce: str, expires_s: int, now_s: int) -> None:
        """Remember a logged-out session until it would have expired (and forget expired ones)."""
        with self.write() as conn:
            conn.execute(revoked_sessions.delete().where(revoked_sessions.c.expires_s < now_s))
            conn.execute(
                self.insert(revoked_sessions)
                .values(nonce=nonce, expires_s=expires_s)
                .on_conflict_do_nothing()
            )

    def session_revoked(self, nonce: str) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(select(revoked_sessions.c.nonce).where(revoked_sessions.c.nonce == nonce))
            return found.first() is not None

    # --- snapshots ---------------------------------------------------------------------------

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
        from control_plane.storage.schema import alerts

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
        from control_plane.storage.schema import alerts

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
        """Store a published snapshot's row; its ``global_allocation`` comes from its ``summary``."""
        values = {**row, "global_allocation": global_allocation(row.get("summary"))}
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


_INGEST_LOCK_KEY = int.from_bytes(hashlib.sha256(b"perch-ingest").digest()[:8], "big", signed=True)


def global_allocation(summary: str | None) -> str | None:
    """A summary's global segment (segment 0) allocation as JSON; None if it has none."""
    doc: Any = json.loads(summary) if summary else None
    segments = doc.get("segments") if isinstance(doc, dict) else None
    first = segments[0] if isinstance(segments, list) and segments else None
    allocation = first.get("allocation") if isinstance(first, dict) else None
    return json.dumps(allocation) if isinstance(allocation, dict) else None


def publish_lock_key(key: str) -> int:
    """``key``'s publish lock as a signed 64-bit key for pg_advisory_lock."""
    return int.from_bytes(
        hashlib.sha256(b"perch-publish\x00" + key.encode()).digest()[:8], "big", signed=True
    )
