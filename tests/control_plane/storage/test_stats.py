"""Append-only statistics: deltas, reads, rollup, erasure's subtraction, recomputation.

On every event store (``any_store``: SQLite, PostgreSQL, ClickHouse), but for the SQL rollup's own
concurrency."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest
from sqlalchemy import func, select

from control_plane.events.ingest import ingest
from control_plane.storage import privacy, stats
from control_plane.storage.schema import stat_deltas
from control_plane.storage.store import Store
from tests.control_plane.event_stores import fold, on_clickhouse, put, recompute, totals
from tests.factories import HOUR, NOW, exposure, outcome, spec

HALF_LIFE = 3 * 3600.0


@pytest.fixture
def hero(any_store: Store) -> Store:
    any_store.create_experiment(spec(half_life_s=HALF_LIFE), NOW)
    return any_store


@pytest.fixture
def sql_hero(store: Store) -> Store:
    store.create_experiment(spec(half_life_s=HALF_LIFE), NOW)
    return store


def _events(rng: random.Random, first: int, n: int) -> list[dict[str, Any]]:
    """Exposures over the 30 hours before NOW + 2h (ingested at NOW + 2h), some with an outcome."""
    devices = ("mobile", "desktop", "tablet")
    out: list[dict[str, Any]] = []
    for i in range(first, first + n):
        ts = NOW + rng.randrange(-30 * HOUR, 2 * HOUR)
        out.append(
            exposure(
                i,
                arm=rng.choice("abc"),
                ts=ts,
                context={"device": rng.choice(devices), "source": rng.choice(("ad", "search"))},
                reason=rng.choice(["personalized"] * 9 + ["holdout"]),
            )
        )
        if rng.random() < 0.3:
            out.append(outcome(i, ts=ts + rng.randrange(1, 600_000)))
    return out


Sums = dict[tuple[tuple[str, ...], str], tuple[float, float]]


def _expected(events: list[dict[str, Any]], now: int) -> Sums:
    """The decayed sums by hand, straight from the events (every outcome joins: within its window)."""
    rewarded = {e["decision_id"] for e in events if e["type"] == "outcome"}
    out: dict[tuple[tuple[str, ...], str], list[float]] = {}
    for e in events:
        if e["type"] != "exposure" or e["reason"] != "personalized":
            continue
        path = (e["context"]["device"], e["context"]["source"])
        w = stats.decay(1.0, e["ts"], now, HALF_LIFE)
        sums = out.setdefault((path, e["arm"]), [0.0, 0.0])
        sums[0] += w
        sums[1] += w if e["decision_id"] in rewarded else 0.0
    return {key: (n, r) for key, (n, r) in out.items()}


def _read(store: Store, now: int) -> Sums:
    return {
        (path, arm): (c.exposures, c.reward)
        for path, arms in store.cells(spec(half_life_s=HALF_LIFE), now).items()
        for arm, c in arms.items()
    }


def _close(got: dict[Any, tuple[float, float]], want: dict[Any, tuple[float, float]]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_reads_equal_the_decayed_sums_of_the_events_before_and_after_rollups(hero: Store) -> None:
    rng = random.Random(11)
    events = _events(rng, 1, 300)
    for start in range(0, len(events), 37):  # many commits, events out of time order
        put(hero, events[start : start + 37], NOW + 2 * HOUR)
    now = NOW + 3 * HOUR
    _close(_read(hero, now), _expected(events, now))
    fold(hero, spec(half_life_s=HALF_LIFE))
    _close(_read(hero, now), _expected(events, now))
    more = _events(rng, 1000, 200)
    put(hero, more, NOW + 2 * HOUR)
    _close(_read(hero, now), _expected(events + more, now))  # base and new deltas together
    fold(hero, spec(half_life_s=HALF_LIFE))
    _close(_read(hero, now), _expected(events + more, now))
    if not on_clickhouse(hero):
        with hero.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(stat_deltas)).scalar() == 0


def test_a_sql_rollup_folds_what_it_finds(sql_hero: Store) -> None:
    put(sql_hero, _events(random.Random(12), 1, 50), NOW + 2 * HOUR)
    assert sql_hero.rollup(spec(half_life_s=HALF_LIFE)) > 0
    assert sql_hero.rollup(spec(half_life_s=HALF_LIFE)) == 0  # nothing left to fold


def test_the_data_mark_grows_with_every_append_and_survives_a_rollup(hero: Store) -> None:
    first = hero.data_mark("hero")
    put(hero, [exposure(1)])
    second = hero.data_mark("hero")
    assert second != first
    fold(hero, spec(half_life_s=HALF_LIFE))
    assert hero.data_mark("hero") == second  # nothing changed: a publisher may skip relearning
    put(hero, [exposure(1)])  # a duplicate appends nothing
    assert hero.data_mark("hero") == second
    put(hero, [exposure(2)])
    assert hero.data_mark("hero") not in (first, second)  # never back, even after every delta was folded


def test_a_rollup_folds_exactly_what_it_deletes_while_ingestion_goes_on(sql_hero: Store) -> None:
    hero = sql_hero
    rng = random.Random(5)
    batches = [_events(rng, 1 + 100 * k, 100) for k in range(20)]
    done = threading.Event()

    def ingest_all() -> None:
        for batch in batches:
            ingest(hero, batch, None, NOW + 2 * HOUR)
        done.set()

    thread = threading.Thread(target=ingest_all)
    thread.start()
    rollups = 0
    while not done.is_set():
        rollups += hero.rollup(spec(half_life_s=HALF_LIFE)) > 0
    thread.join()
    now = NOW + 3 * HOUR
    _close(_read(hero, now), _expected([e for b in batches for e in b], now))
    assert rollups >= 1


def test_an_event_stamped_in_the_future_counts_as_arriving_now(any_store: Store) -> None:
    # A skewed clock must not let one event weigh 2^60 exposures (its mass relative to a later hour).
    store = any_store
    store.create_experiment(spec(key="quick", half_life_s=60.0), NOW)
    later = NOW - NOW % HOUR + HOUR + 3_599_000  # late in the next hour
    put(store, [exposure(1, ts=later, experiment="quick")])
    (arms,) = store.cells(spec(key="quick", half_life_s=60.0), NOW).values()
    assert arms["b"].exposures == pytest.approx(1.0)


def test_recompute_from_the_raw_rows_equals_the_statistics(hero: Store) -> None:
    events = _events(random.Random(3), 1, 400)
    put(hero, events, NOW + 2 * HOUR)
    fold(hero, spec(half_life_s=HALF_LIFE))
    put(hero, _events(random.Random(4), 5000, 100))
    recomputed, kept = recompute(hero, "hero"), totals(hero, "hero")
    assert recomputed.keys() == kept.keys()
    for key, value in recomputed.items():
        assert kept[key] == pytest.approx(value)


def test_erasure_appends_what_cancels_the_person_exactly(hero: Store) -> None:
    rng = random.Random(9)
    others = _events(rng, 1, 200)
    put(hero, others, NOW + 2 * HOUR)
    fold(hero, spec(half_life_s=HALF_LIFE))  # part of what is erased already sits in the base
    theirs = [{**exposure(900 + k, ts=NOW - k * HOUR, arm="c"), "unit": "erase-me"} for k in range(5)] + [
        {**outcome(900 + k, ts=NOW - k * HOUR + 1000), "unit": "erase-me"} for k in range(3)
    ]
    put(hero, theirs)
    assert privacy.erase(hero, "erase-me") == {
        "exposures": 5,
        "outcomes": 3,
        "stitches": 0,
        "signals": 0,
        "attributes": 0,
    }
    now = NOW + 3 * HOUR
    _close(_read(hero, now), _expected(others, now))
    kept, recomputed = totals(hero, "hero"), recompute(hero, "hero")
    for key, value in kept.items():  # the raw sums too: the cells they emptied hold zeros
        assert value == pytest.approx(recomputed.get(key, (0.0, 0.0)), abs=1e-9)
    fold(hero, spec(half_life_s=HALF_LIFE))
    _close(_read(hero, now), _expected(others, now))
