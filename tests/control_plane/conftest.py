"""Store fixtures: every store test runs on SQLite and on PostgreSQL.

PostgreSQL is the server on 127.0.0.1:5432 (trust auth, database ``test``). Each
test run (each xdist worker) works in a database of its own on it, created here and
dropped at the end, so two runs at once (CI beside a developer's run) never reset
each other's tables. Without the server these tests skip on a developer's machine
and fail in CI (CI=true).

Migrating costs far more than any store test, so each backend is migrated once per
session: SQLite tests get a copy of a migrated template file, PostgreSQL tests the
run's database with every table emptied. A test that needs another schema state
(an upgrade from an older revision) asks for ``blank_db_url`` instead.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, create_engine, make_url, text

from control_plane.storage.clickhouse import Chdb
from control_plane.storage.clickhouse_events import EventLog
from control_plane.storage.migrate import migrate
from control_plane.storage.store import Store
from tests.factories import UNIT_KEY

PG_SERVER_URL = os.environ.get("PERCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# A test that leaves a transaction open would otherwise hang the next one's clean-up.
_LOCK_TIMEOUT = "10s"


def _psycopg(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def _engine(url: str) -> Engine:
    return Store.from_url(url, UNIT_KEY).engine


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine]:
    """The server's maintenance connection, which creates and drops this run's databases."""
    admin = create_engine(_psycopg(PG_SERVER_URL), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # no server: loud in CI, a skip elsewhere
        admin.dispose()
        message = f"PostgreSQL at {PG_SERVER_URL} is not reachable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    yield admin
    admin.dispose()


@contextmanager
def _own_database(admin: Engine, role: str) -> Iterator[str]:
    name = f"perch_test_{os.getpid()}_{role}_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_SERVER_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_url(pg_admin: Engine) -> Iterator[str]:
    """This run's own database on the PostgreSQL server, migrated to head (dropped afterwards)."""
    with _own_database(pg_admin, "store") as url:
        engine = _engine(url)
        try:
            migrate(engine)
        finally:
            engine.dispose()
        yield url


@pytest.fixture(scope="session")
def pg_blank_url(pg_admin: Engine) -> Iterator[str]:
    """A second database of this run's, for tests that build their own schema state."""
    with _own_database(pg_admin, "blank") as url:
        yield url


@functools.cache
def _emptying_plan(url: str) -> tuple[list[str], list[str]]:
    """The migrated schema's tables, children before parents, and its sequences."""
    engine = create_engine(_psycopg(url))
    try:
        reflected = MetaData()
        reflected.reflect(engine)
        with engine.connect() as conn:
            sequences = conn.execute(
                text("SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'")
            ).scalars()
            names = sorted(sequences)
    finally:
        engine.dispose()
    tables = [t.name for t in reversed(reflected.sorted_tables) if t.name != "alembic_version"]
    return tables, names


def empty_postgres(url: str) -> None:
    """Delete every row but Alembic's version and restart every sequence: the migrated database as
    good as new. Not TRUNCATE: measured here it takes ~0.2 s (a new file per table and index, as
    long as migrating afresh), where DELETE of a test's few rows takes ~0.01 s."""
    tables, sequences = _emptying_plan(url)
    engine = create_engine(_psycopg(url))
    try:
        with engine.begin() as conn:
            conn.execute(text(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'"))
            for table in tables:
                conn.execute(text(f'DELETE FROM "{table}"'))
            for sequence in sequences:
                conn.execute(text(f'ALTER SEQUENCE "{sequence}" RESTART'))
    finally:
        engine.dispose()


def reset_postgres(url: str) -> None:
    """Drop everything: an empty database for a test that migrates it itself."""
    engine = create_engine(_psycopg(url))
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file migrated to head; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "perch.db"
    engine = _engine(f"sqlite:///{path}")
    try:
        migrate(engine)
    finally:
        # Closing the last connection checkpoints the WAL into the file and removes it, so the
        # file alone is the whole database.
        engine.dispose()
    assert not path.with_name("perch.db-wal").exists()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database migrated to head."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "perch.db"
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_url")
    empty_postgres(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def blank_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with no schema at all, for tests that migrate it (from an older revision)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'blank.db'}"
    url: str = request.getfixturevalue("pg_blank_url")
    reset_postgres(url)
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store.from_url(db_url, UNIT_KEY)
    yield s
    s.engine.dispose()


# chDB for the ClickHouse tests: one data path per test process (chDB serves one), one database per test.
_PATH: list[Path] = []


@pytest.fixture
def chdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chdb]:
    if not _PATH:
        _PATH.append(tmp_path_factory.mktemp("chdb"))
    ch = Chdb(str(_PATH[0]), database=f"t_{uuid.uuid4().hex}")
    yield ch
    ch.command(f"DROP DATABASE IF EXISTS `{ch.database}`")


@pytest.fixture(params=["sqlite", "postgresql", "chdb"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store on each place events are kept: SQLite, PostgreSQL, and ClickHouse (chDB) beside SQLite
    for the experiments, as ``perch consume --events-url`` runs it. Write and read its events with
    tests/control_plane/event_stores.py."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        empty_postgres(url)
    else:
        template: Path = request.getfixturevalue("sqlite_template")
        shutil.copyfile(template, tmp_path / "perch.db")
        url = f"sqlite:///{tmp_path / 'perch.db'}"
    s = Store.from_url(url, UNIT_KEY)
    if request.param == "chdb":
        s.events = EventLog(request.getfixturevalue("chdb"))
        s.events.migrate()
    yield s
    s.engine.dispose()
