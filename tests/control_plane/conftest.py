"""Store fixtures: every store test runs on SQLite and on PostgreSQL.

PostgreSQL is the server on 127.0.0.1:5432 (trust auth, database ``test``). Each
test run works in a database of its own on it, created here and dropped at the
end, so two runs at once (CI beside a developer's run) never reset each other's
tables. Without the server these tests skip on a developer's machine and fail in
CI (CI=true).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from control_plane.experiments import ExperimentSpec
from control_plane.storage.store import Store

PG_SERVER_URL = os.environ.get("PERCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
NOW = 1_780_000_000_000
UNIT_KEY = "test-unit-key"


def _psycopg(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """This run's own database on the PostgreSQL server (dropped afterwards)."""
    name = f"perch_test_{os.getpid()}_{secrets.token_hex(4)}"
    admin = create_engine(_psycopg(PG_SERVER_URL), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # no server: loud in CI, a skip elsewhere
        admin.dispose()
        message = f"PostgreSQL at {PG_SERVER_URL} is not reachable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    yield make_url(PG_SERVER_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def reset_postgres(url: str) -> None:
    engine = create_engine(_psycopg(url))
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'perch.db'}"
    url: str = request.getfixturevalue("pg_url")
    reset_postgres(url)
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store.from_url(db_url, UNIT_KEY)
    s.migrate()
    yield s
    s.engine.dispose()


def spec(**overrides: object) -> ExperimentSpec:
    doc: dict[str, object] = {
        "key": "hero",
        "arms": [{"key": "a", "html": "<b>A</b>"}, {"key": "b", "payload": {"x": 1}}, {"key": "c"}],
        "default_arm": "a",
        "features": ["device", "source"],
        "holdout": 0.1,
        "floor": 0.05,
    }
    doc.update(overrides)
    return ExperimentSpec.from_dict(doc)
