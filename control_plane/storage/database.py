"""The connection to the control plane's database, and how writers take turns on it.

SQLAlchemy Core over SQLite (embedded default) or PostgreSQL (production); the schema is created
and changed only by Alembic migrations (:mod:`control_plane.storage.migrate`).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:  # POSIX; elsewhere SQLite's own busy handler serialises writers
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite

from control_plane.storage.migrate import migrate

__all__ = ["Database", "engine_for"]


def engine_for(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///...`` or ``postgresql://...``), set up for this store."""
    if not url.startswith("sqlite"):
        return create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), pool_pre_ping=True)
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

    return engine


class Database:
    """An engine and its write transactions; the store's parts build on it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        # SQLite allows one writer; serialising writers here avoids "database is locked".
        self.write_lock = threading.RLock()

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


_INGEST_LOCK_KEY = int.from_bytes(hashlib.sha256(b"perch-ingest").digest()[:8], "big", signed=True)
