from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Connection, func, select

from control_plane.events import group_commit
from control_plane.events.group_commit import Batch, IngestWriter, ReplayedBatch, ingest_group
from control_plane.events.ingest import IngestResult, ingest
from control_plane.storage.schema import exposures, seen_batches, stat_deltas, stats
from control_plane.storage.store import Store
from tests.factories import NOW, exposure, outcome, spec


@pytest.fixture
def hero(store: Store) -> Store:
    store.create_experiment(spec(), NOW)
    return store


def _stored(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(exposures)).scalar_one())


def test_a_group_stores_every_batch_as_if_one_by_one(hero: Store) -> None:
    batches = [Batch([exposure(i)], f"{i:064x}", NOW) for i in range(1, 6)]
    # The third batch's outcome joins the second batch's exposure, stored earlier in the same transaction.
    batches[2] = Batch([exposure(3), outcome(2)], f"{3:064x}", NOW)
    results = ingest_group(hero, batches)
    assert all(isinstance(r, IngestResult) for r in results)
    assert [r.accepted["exposure"] for r in results if isinstance(r, IngestResult)] == [1] * 5
    assert isinstance(results[2], IngestResult) and results[2].joined == 1
    assert _stored(hero) == 5
    with hero.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(seen_batches)).scalar_one() == 5


def test_replays_are_refused_alone(hero: Store) -> None:
    ingest(hero, [exposure(1)], "a" * 64, NOW)
    results = ingest_group(
        hero,
        [
            Batch([exposure(2)], "b" * 64, NOW),
            Batch([exposure(1)], "a" * 64, NOW),  # replays a stored batch
            Batch([exposure(3)], "b" * 64, NOW),  # replays one earlier in this group
            Batch([exposure(4)], None, NOW),
        ],
    )
    assert [type(r).__name__ for r in results] == [
        "IngestResult",
        "ReplayedBatch",
        "ReplayedBatch",
        "IngestResult",
    ]
    assert _stored(hero) == 3  # 1, 2 and 4


def test_a_failing_batch_does_not_take_the_group_down(hero: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    real = group_commit.ingest_into

    def poisoned(
        store: Store, conn: Any, events: list[dict[str, Any]], *args: Any, **kwargs: Any
    ) -> IngestResult:
        if events[0]["decision_id"] == f"{2:032x}":
            raise RuntimeError("disk full")
        return real(store, conn, events, *args, **kwargs)

    monkeypatch.setattr(group_commit, "ingest_into", poisoned)
    monkeypatch.setattr("control_plane.events.ingest.ingest_into", poisoned)
    results = ingest_group(hero, [Batch([exposure(i)], f"{i:064x}", NOW) for i in (1, 2, 3)])
    assert isinstance(results[1], RuntimeError) and str(results[1]) == "disk full"
    assert isinstance(results[0], IngestResult) and isinstance(results[2], IngestResult)
    assert _stored(hero) == 2
    # The failed batch left nothing behind, not even its signature: the edge's resend goes through.
    monkeypatch.setattr("control_plane.events.ingest.ingest_into", real)
    assert ingest(hero, [exposure(2)], f"{2:064x}", NOW).accepted["exposure"] == 1


class HeldCommit:
    """Holds the store's first ingest transaction until released: what a slow fsync does, so the
    batches submitted meanwhile queue for the next group."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        real = store.ingest_write

        @contextmanager
        def held() -> Iterator[Connection]:
            if not self.started.is_set():
                self.started.set()
                self.release.wait(10)
            with real() as conn:
                yield conn

        monkeypatch.setattr(store, "ingest_write", held)

    async def submit_during_it(
        self,
        writer: IngestWriter,
        first: list[dict[str, Any]],
        *batches: tuple[list[dict[str, Any]], str | None],
    ) -> list[Any]:
        """Submits ``first``, then ``batches`` while its commit is held; every outcome, in order."""
        started = asyncio.create_task(writer.submit(first, None, NOW))
        while not self.started.is_set():
            await asyncio.sleep(0.005)
        rest = [asyncio.create_task(writer.submit(events, signature, NOW)) for events, signature in batches]
        await asyncio.sleep(
            0
        )  # one turn of the loop: each submit has queued its batch behind the held commit
        self.release.set()
        return await asyncio.gather(started, *rest, return_exceptions=True)


def test_batches_that_arrive_during_a_commit_share_the_next_one(
    hero: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldCommit(hero, monkeypatch)
    groups: list[int] = []
    writer = IngestWriter(hero, on_commit=lambda batches, events: groups.append(batches))
    batches = [([exposure(i)], f"{i:064x}") for i in range(2, 12)]
    batches.append(([exposure(5)], f"{5:064x}"))  # a replay
    started = time.monotonic()
    results = asyncio.run(held.submit_during_it(writer, [exposure(1)], *batches))
    assert time.monotonic() - started < 10
    assert groups == [1, 11]  # everything that queued during the first commit went in one
    assert all(isinstance(r, IngestResult) for r in results[:-1])
    assert isinstance(results[-1], ReplayedBatch)
    assert _stored(hero) == 11


@pytest.mark.parametrize(
    ("max_events", "sizes", "groups"),
    [
        (3, [2, 2, 2, 2, 2], [2, 2, 2, 2, 2]),  # two batches would be 4 > 3
        (4, [2, 2, 2, 2, 2], [4, 4, 2]),
        (3, [1, 5, 1], [1, 5, 1]),  # a lone batch over the bound still goes
    ],
)
def test_groups_are_bounded_in_events(
    hero: Store, monkeypatch: pytest.MonkeyPatch, max_events: int, sizes: list[int], groups: list[int]
) -> None:
    held = HeldCommit(hero, monkeypatch)
    committed: list[int] = []
    writer = IngestWriter(
        hero, max_events=max_events, on_commit=lambda batches, events: committed.append(events)
    )
    ids = iter(range(1, 1 + sum(sizes) + 1))
    first = [exposure(next(ids))]
    batches = [([exposure(next(ids)) for _ in range(size)], None) for size in sizes]
    results = asyncio.run(asyncio.wait_for(held.submit_during_it(writer, first, *batches), 30))
    assert committed == [1, *groups]
    assert [r.accepted["exposure"] for r in results if isinstance(r, IngestResult)] == [1, *sizes]
    assert _stored(hero) == 1 + sum(sizes)


def test_a_group_writes_each_cell_once(hero: Store) -> None:
    # Three batches on one cell: one appended delta row for the group, no statistics row touched.
    ingest_group(hero, [Batch([exposure(i)], f"{i:064x}", NOW) for i in (1, 2, 3)])
    with hero.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(stat_deltas)).scalar() == 1
        assert conn.execute(select(func.count()).select_from(stats)).scalar() == 0
    (arms,) = hero.cells(spec(), NOW).values()
    assert arms["b"].exposures == 3


def test_a_failing_metrics_hook_neither_hangs_nor_fails_a_batch(hero: Store) -> None:
    def broken(batches: int, events: int) -> None:
        raise ValueError("metrics backend down")

    writer = IngestWriter(hero, on_commit=broken)

    async def scenario() -> list[IngestResult]:
        return list(await asyncio.gather(*(writer.submit([exposure(i)], None, NOW) for i in (1, 2))))

    results = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert [r.accepted["exposure"] for r in results] == [1, 1]
    # A writer used from a new event loop (a second test client) starts afresh there.
    again = asyncio.run(asyncio.wait_for(writer.submit([exposure(3)], None, NOW), 30))
    assert again.accepted["exposure"] == 1 and _stored(hero) == 3
