"""control_plane.events.ingest: a batch becomes rows and cells. The rules that hold wherever events
are kept run on every store (``any_hero``: SQLite, PostgreSQL, ClickHouse)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select, text

from control_plane.events.ingest import ingest
from control_plane.storage.schema import exposures
from control_plane.storage.store import Store
from tests.control_plane.event_stores import fold, on_clickhouse, put, rewards, totals
from tests.control_plane.events.conftest import cells
from tests.factories import HOUR, NOW, exposure, outcome, spec


def test_exposures_build_cells_by_feature_path(any_hero: Store) -> None:
    hero = any_hero
    result = put(hero, [exposure(1), exposure(2), exposure(3, arm="c", context={"device": "desktop"})])
    assert result.accepted["exposure"] == 3
    assert cells(hero) == {("mobile", "search"): {"b": (2, 0)}, ("desktop", "unknown"): {"c": (1, 0)}}


def test_events_are_idempotent(any_hero: Store) -> None:
    hero = any_hero
    batch = [exposure(1), outcome(1)]
    put(hero, batch)
    again = put(hero, batch)
    assert (again.accepted, again.duplicates) == ({"exposure": 0, "outcome": 0, "stitch": 0}, 2)
    assert cells(hero) == {("mobile", "search"): {"b": (1, 1)}}


def test_only_personalized_decisions_teach_the_learner(any_hero: Store) -> None:
    hero = any_hero
    put(
        hero,
        [
            exposure(1, reason="holdout", arm="a"),
            exposure(2, reason="stale", arm="a"),
            exposure(3, reason="consent", arm="a", unit=None, context={}),
        ],
    )
    assert cells(hero) == {}
    assert len(rewards(hero, "hero")) == 3  # stored all the same, for the report and evaluation


def test_a_changed_reward_window_applies_to_the_next_batch(any_hero: Store) -> None:
    hero = any_hero
    # Ingestion keeps parsed specs between batches: a PATCH must still take effect at once.
    put(hero, [exposure(1), exposure(2)])
    assert put(hero, [outcome(1, ts=NOW + 25 * HOUR)]).late == 1  # default window: 24 h
    hero.update_experiment("hero", {"reward": {"kind": "binary", "window_s": 48 * 3600}}, NOW)
    assert put(hero, [outcome(2, ts=NOW + 25 * HOUR)]).joined == 1


def test_replay_signatures_are_kept_past_the_tolerance_then_purged(hero: Store) -> None:
    from control_plane.events.ingest import REPLAY_MEMORY_S
    from control_plane.storage.schema import seen_batches

    ingest(hero, [exposure(1)], "a" * 64, NOW)
    ingest(hero, [exposure(2)], "b" * 64, NOW + 120_000)  # too young to purge
    ingest(hero, [exposure(3)], "c" * 64, NOW + (REPLAY_MEMORY_S + 60) * 1000)
    with hero.engine.connect() as conn:
        kept = set(conn.execute(select(seen_batches.c.signature)).scalars())
    assert kept == {"b" * 64, "c" * 64}
    assert REPLAY_MEMORY_S > 300  # longer than the signature tolerance


def test_numeric_rewards_are_scaled_and_capped_per_exposure(any_store: Store) -> None:
    store = any_store
    store.create_experiment(spec(reward={"kind": "numeric", "max_value": 100.0}), NOW)
    put(
        store,
        [
            exposure(1),
            exposure(2),
            outcome(1, value=25.0),
            outcome(2, value=80.0),
            outcome(2, value=80.0, event="o-2b"),
        ],
    )
    got = cells(store, reward={"kind": "numeric", "max_value": 100.0})
    assert got == {("mobile", "search"): {"b": (2, 1.25)}}  # 0.25 + min(0.8 + 0.8, 1)


def test_decay_weighs_old_evidence_less(any_store: Store) -> None:
    store = any_store
    store.create_experiment(spec(half_life_s=3600), NOW)
    events = [exposure(1, ts=NOW), exposure(2, ts=NOW + HOUR), exposure(3, ts=NOW - HOUR)]
    put(store, events, NOW + HOUR)
    got = cells(store, NOW + HOUR, half_life_s=3600)
    # weights at NOW + 1h: 0.5 (NOW), 1 (NOW + 1h), 0.25 (NOW - 1h)
    assert got[("mobile", "search")]["b"][0] == pytest.approx(1.75)


def test_statistics_do_not_depend_on_how_events_are_batched(any_store: Store) -> None:
    store = any_store
    """One batch of many cells (bulk read-modify-write) == the same events one per batch, shuffled."""
    import random

    for key in ("hero", "twin"):
        store.create_experiment(spec(key=key, half_life_s=3600), NOW)
    rng = random.Random(7)
    contexts = [{"device": d, "source": s} for d in ("mobile", "desktop") for s in ("search", "ad", "direct")]
    events: list[dict[str, Any]] = []
    for i in range(120):
        events.append(
            exposure(
                i + 1,
                arm=rng.choice("abc"),
                ts=NOW + rng.randrange(-2 * HOUR, 2 * HOUR),
                context=rng.choice(contexts),
                reason=rng.choice(["personalized"] * 5 + ["holdout"]),
            )
        )
        if rng.random() < 0.4:
            events.append(outcome(i + 1, ts=events[-1]["ts"] + rng.randrange(1, 60_000)))
    twin = [
        {**e, "experiment": "twin", "id": "t" + e["id"], "decision_id": "f" + e["decision_id"][1:]}
        for e in events
    ]
    put(store, events)
    rng.shuffle(twin)
    for event in twin:
        put(store, [event])

    def table(key: str) -> dict[tuple[str, str], tuple[float, ...]]:
        raw = totals(store, key)
        decayed = store.cells(spec(key=key, half_life_s=3600), NOW + 3 * HOUR)
        return {
            (path, arm): (
                *raw[path, arm],
                decayed[tuple(json.loads(path))][arm].exposures,
                decayed[tuple(json.loads(path))][arm].reward,
            )
            for path, arm in raw
        }

    hero, twin_cells = table("hero"), table("twin")
    assert len(hero) == 18 and sum(v[0] for v in hero.values()) > 80
    assert hero.keys() == twin_cells.keys()
    for cell, values in hero.items():
        assert values == pytest.approx(twin_cells[cell], rel=1e-9), cell
    # Folding the deltas into the base changes nothing a reader sees.
    fold(store, spec(key="hero", half_life_s=3600))
    for cell, values in table("hero").items():
        assert values == pytest.approx(twin_cells[cell], rel=1e-9), cell


def test_unknown_experiments_are_kept_and_counted(any_hero: Store) -> None:
    hero = any_hero
    result = put(hero, [exposure(1, experiment="ghost")])
    # SQL keeps them (not learnt); ClickHouse, where nothing could keep a later experiment of that key
    # from learning them, leaves them out. Both count them.
    assert result.accepted["exposure"] == (0 if on_clickhouse(hero) else 1)
    assert hero.counters("ghost") == {"unknown_experiment": 1}


def test_no_raw_unit_id_is_stored(any_hero: Store) -> None:
    hero = any_hero
    stitch = {
        "type": "stitch",
        "id": "s-1",
        "ts": NOW,
        "anonymous_id": "anon-secret-id",
        "user_id": "alice@example",
    }
    put(hero, [exposure(1, unit="visitor-secret-id"), outcome(1), stitch])
    dumps = {}
    with hero.engine.connect() as conn:
        for table in ("exposures", "outcomes", "stitches"):
            dumps[table] = [list(map(str, row)) for row in conn.execute(text(f"SELECT * FROM {table}"))]
    if hero.events is not None:
        for table in ("exposures", "outcomes"):
            dumps["clickhouse " + table] = [
                list(map(str, row))
                for row in hero.events.ch.rows(f"SELECT * FROM {hero.events.layout.table(table)}")
            ]
    assert sum(map(len, dumps.values())) == 3  # every event stored once, somewhere
    for table, rows in dumps.items():
        for raw in ("visitor-secret-id", "anon-secret-id", "alice@example", "u-1"):
            assert raw not in json.dumps(rows), (table, raw)


def test_a_failed_batch_leaves_nothing_behind(hero: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from control_plane.events import ingest as module

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(module.Cells, "flush", broken)
    with pytest.raises(RuntimeError):
        ingest(hero, [exposure(1), outcome(1)], None, NOW)
    monkeypatch.undo()
    with hero.engine.connect() as conn:
        assert conn.execute(select(exposures.c.decision_id)).all() == []
    assert ingest(hero, [exposure(1)], None, NOW).accepted["exposure"] == 1  # the resend is accepted
