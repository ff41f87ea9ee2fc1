"""chDB for the ClickHouse tests: one data path per test process (chDB serves one), one database per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.storage.clickhouse import Chdb

_PATH: list[Path] = []


@pytest.fixture
def chdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chdb]:
    if not _PATH:
        _PATH.append(tmp_path_factory.mktemp("chdb"))
    ch = Chdb(str(_PATH[0]), database=f"t_{uuid.uuid4().hex}")
    yield ch
    ch.command(f"DROP DATABASE IF EXISTS `{ch.database}`")
