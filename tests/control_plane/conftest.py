"""Store fixtures: every store test runs on SQLite and on PostgreSQL.

PostgreSQL is the one on 127.0.0.1:5432 (trust auth, database ``test``); without
it these tests skip on a developer's machine and fail in CI (CI=true).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from control_plane.experiments import ExperimentSpec
from control_plane.store import Store

PG_URL = os.environ.get("PERCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
NOW = 1_780_000_000_000
UNIT_KEY = "test-unit-key"


def reset_postgres(url: str) -> None:
    try:
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()
    except Exception as exc:  # no server: loud in CI, a skip elsewhere
        message = f"PostgreSQL at {url} is not reachable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'perch.db'}"
    reset_postgres(PG_URL)
    return PG_URL


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
