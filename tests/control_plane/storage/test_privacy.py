from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from control_plane.learning.learner import learn
from control_plane.storage.privacy import erase, export
from control_plane.storage.store import Store
from tests.control_plane.event_stores import put
from tests.factories import HOUR, NOW, UNIT_KEY, exposure, outcome, spec


def events() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Alice's events (as an anonymous visitor, then logged in) and everybody else's."""
    alice = [
        exposure(1, unit="anon-alice", arm="b", ts=NOW),
        exposure(2, unit="alice@example", arm="c", ts=NOW + HOUR),
        {**outcome(1), "unit": "anon-alice"},
        {**outcome(2, ts=NOW + HOUR + 5), "unit": "alice@example"},
        {"type": "stitch", "id": "s-1", "ts": NOW, "anonymous_id": "anon-alice", "user_id": "alice@example"},
    ]
    others = [exposure(10 + i, unit=f"other-{i}", arm="bc"[i % 2], ts=NOW + i * 60_000) for i in range(8)]
    others += [{**outcome(10 + i, ts=NOW + i * 60_000 + 9), "unit": f"other-{i}"} for i in range(0, 8, 3)]
    return alice, others


@pytest.fixture
def half_life_store(any_store: Store) -> Store:
    any_store.create_experiment(spec(half_life_s=7200), NOW)
    return any_store


def test_export_follows_stitches_and_holds_no_raw_id(half_life_store: Store) -> None:
    alice, others = events()
    put(half_life_store, alice + others, NOW + 2 * HOUR)
    doc = export(half_life_store, "alice@example")
    assert sorted(e["decision_id"][-1] for e in doc["exposures"]) == ["1", "2"]
    assert len(doc["outcomes"]) == 2 and len(doc["stitches"]) == 1
    assert len(doc["unit_hashes"]) == 2
    assert "alice" not in repr(doc)
    # By her anonymous id alone: that id's data only (a cookie does not prove who signed in from it).
    anon = export(half_life_store, "anon-alice")
    assert [e["decision_id"][-1] for e in anon["exposures"]] == ["1"]
    assert len(anon["unit_hashes"]) == 1 and len(anon["stitches"]) == 1


def _mallory(store: Store) -> None:
    """Mallory's one anonymous id claims three users (what an unsigned X-Perch-User allowed)."""
    events = [exposure(1, unit="anon-mallory", ts=NOW)]
    for i, victim in enumerate(("victim-1", "victim-2", "victim-3")):
        events.append(exposure(10 + i, unit=victim, ts=NOW + i))
        events.append(
            {
                "type": "stitch",
                "id": f"s-{i}",
                "ts": NOW + i,
                "anonymous_id": "anon-mallory",
                "user_id": victim,
            }
        )
    put(store, events, NOW + HOUR)


def test_h2_an_anonymous_id_stitches_to_one_user_and_never_joins_strangers(half_life_store: Store) -> None:
    _mallory(half_life_store)
    doc = export(half_life_store, "victim-2")
    assert [e["decision_id"][-2:] for e in doc["exposures"]] == ["0b"]  # exposure(11): hex ids
    assert doc["stitches"] == [] and len(doc["unit_hashes"]) == 1
    # Only the first claim stands: victim-1's export includes the anonymous id, nobody else's.
    first = export(half_life_store, "victim-1")
    assert sorted(e["decision_id"][-2:] for e in first["exposures"]) == ["01", "0a"]
    # Erasing Mallory's own id erases Mallory's data and no victim's.
    assert erase(half_life_store, "anon-mallory") == {
        "exposures": 1,
        "outcomes": 0,
        "stitches": 1,
        "signals": 0,
        "attributes": 0,
    }
    for i, victim in enumerate(("victim-1", "victim-2", "victim-3")):
        assert [e["decision_id"][-2:] for e in export(half_life_store, victim)["exposures"]] == [
            f"{10 + i:02x}"
        ]


def test_migration_0003_keeps_each_anonymous_ids_first_stitch(tmp_path: Path) -> None:
    from sqlalchemy import func, select

    from control_plane.storage.migrate import migrate
    from control_plane.storage.schema import stitches

    store = Store.from_url(f"sqlite:///{tmp_path / 'old.db'}", UNIT_KEY)
    migrate(store.engine, "0002")
    rows = [
        {"event_id": "s-b", "anonymous_hash": "a1", "user_hash": "u2", "ts_ms": 5},
        {"event_id": "s-a", "anonymous_hash": "a1", "user_hash": "u1", "ts_ms": 5},
        {"event_id": "s-c", "anonymous_hash": "a1", "user_hash": "u3", "ts_ms": 1},
        {"event_id": "s-d", "anonymous_hash": "a2", "user_hash": "u1", "ts_ms": 9},
    ]
    with store.engine.begin() as conn:
        conn.execute(stitches.insert(), rows)
    store.migrate()
    with store.engine.connect() as conn:
        kept = conn.execute(
            select(stitches.c.anonymous_hash, stitches.c.user_hash).order_by("anonymous_hash")
        ).all()
        assert conn.execute(select(func.count()).select_from(stitches)).scalar() == 2
    assert [tuple(r) for r in kept] == [("a1", "u3"), ("a2", "u1")]


def test_m9_a_user_with_tens_of_thousands_of_anonymous_ids_can_be_exported_and_erased(
    any_store: Store,
) -> None:
    """Past PostgreSQL's 32,767 bind parameters, which a list of ids per IN (...) ran into."""
    store = any_store
    store.create_experiment(spec(), NOW)
    n = 40_000
    from control_plane.storage.schema import stitches

    with store.write() as conn:
        conn.execute(
            stitches.insert(),
            [
                {
                    "event_id": f"s-{i}",
                    "anonymous_hash": store.hash_unit(f"anon-{i}"),
                    "user_hash": store.hash_unit("big"),
                    "ts_ms": NOW,
                }
                for i in range(n)
            ],
        )
    put(store, [exposure(1, unit="anon-7", ts=NOW), exposure(2, unit="big", ts=NOW)])
    doc = export(store, "big")
    assert len(doc["unit_hashes"]) == n + 1 and len(doc["exposures"]) == 2
    assert erase(store, "big") == {
        "exposures": 2,
        "outcomes": 0,
        "stitches": n,
        "signals": 0,
        "attributes": 0,
    }


def test_erasure_leaves_the_statistics_as_if_alice_never_came(half_life_store: Store, tmp_path: Path) -> None:
    alice, others = events()
    put(half_life_store, alice + others, NOW + 2 * HOUR)
    later = NOW + 3 * HOUR
    before = half_life_store.cells(spec(half_life_s=7200), later)

    assert erase(half_life_store, "alice@example") == {
        "exposures": 2,
        "outcomes": 2,
        "stitches": 1,
        "signals": 0,
        "attributes": 0,
    }
    after = half_life_store.cells(spec(half_life_s=7200), later)

    never = Store.from_url(f"sqlite:///{tmp_path / 'never.db'}", UNIT_KEY)
    never.migrate()
    never.create_experiment(spec(half_life_s=7200), NOW)
    put(never, others, NOW + 2 * HOUR)
    expected = never.cells(spec(half_life_s=7200), later)

    def flat(cells: dict[Any, Any]) -> dict[Any, float]:
        out = {}
        for path, arms in cells.items():
            for arm, c in arms.items():
                if c.exposures > 1e-9:
                    out[(path, arm, "n")], out[(path, arm, "r")] = c.exposures, c.reward
        return out

    assert flat(after) == pytest.approx(flat(expected))
    assert flat(before) != pytest.approx(flat(expected))
    # The posteriors the next snapshot would carry: before vs after, after == never seen.
    snap_before = learn(spec(half_life_s=7200), before, version=1, now_ms=later, seed=1)
    snap_after = learn(spec(half_life_s=7200), after, version=1, now_ms=later, seed=1)
    snap_never = learn(spec(half_life_s=7200), expected, version=1, now_ms=later, seed=1)
    assert list(snap_after.alpha) == pytest.approx(list(snap_never.alpha), abs=1e-4)
    assert list(snap_after.beta) == pytest.approx(list(snap_never.beta), abs=1e-4)
    assert list(snap_before.alpha) != pytest.approx(list(snap_never.alpha), abs=1e-4)
    assert export(half_life_store, "alice@example")["exposures"] == []
    assert half_life_store.counters("hero")["erasures"] == 1
    never.engine.dispose()


def test_erasing_an_unknown_unit_is_a_no_op(half_life_store: Store) -> None:
    assert erase(half_life_store, "nobody") == {
        "exposures": 0,
        "outcomes": 0,
        "stitches": 0,
        "signals": 0,
        "attributes": 0,
    }
