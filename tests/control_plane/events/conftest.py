"""Shared by the event-path tests: an experiment to ingest into, and its cells in short."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.storage.store import Store
from tests.factories import NOW, spec


def cells(
    store: Store, now: int = NOW, **overrides: Any
) -> dict[tuple[str, ...], dict[str, tuple[float, float]]]:
    return {
        path: {arm: (round(c.exposures, 6), round(c.reward, 6)) for arm, c in arms.items()}
        for path, arms in store.cells(spec(**overrides), now).items()
    }


@pytest.fixture
def hero(store: Store) -> Store:
    store.create_experiment(spec(), NOW)
    return store


@pytest.fixture
def any_hero(any_store: Store) -> Store:
    """The experiment on every event store (tests/control_plane/event_stores.py)."""
    any_store.create_experiment(spec(), NOW)
    return any_store
