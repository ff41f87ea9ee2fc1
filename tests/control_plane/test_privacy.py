from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from control_plane.ingest import ingest
from control_plane.learner import learn
from control_plane.privacy import erase, export
from control_plane.store import Store
from tests.control_plane.conftest import NOW, UNIT_KEY, spec
from tests.control_plane.test_ingest import exposure, outcome

HOUR = 3_600_000


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
def half_life_store(store: Store) -> Store:
    store.create_experiment(spec(half_life_s=7200), NOW)
    return store


def test_export_follows_stitches_and_holds_no_raw_id(half_life_store: Store) -> None:
    alice, others = events()
    ingest(half_life_store, alice + others, None, NOW + 2 * HOUR)
    doc = export(half_life_store, "alice@example")
    assert sorted(e["decision_id"][-1] for e in doc["exposures"]) == ["1", "2"]
    assert len(doc["outcomes"]) == 2 and len(doc["stitches"]) == 1
    assert len(doc["unit_hashes"]) == 2
    assert "alice" not in repr(doc)
    assert export(half_life_store, "anon-alice")["unit_hashes"] == doc["unit_hashes"]


def test_erasure_leaves_the_statistics_as_if_alice_never_came(half_life_store: Store, tmp_path: Path) -> None:
    alice, others = events()
    ingest(half_life_store, alice + others, None, NOW + 2 * HOUR)
    later = NOW + 3 * HOUR
    before = half_life_store.cells(spec(half_life_s=7200), later)

    assert erase(half_life_store, "alice@example") == {"exposures": 2, "outcomes": 2, "stitches": 1}
    after = half_life_store.cells(spec(half_life_s=7200), later)

    never = Store.from_url(f"sqlite:///{tmp_path / 'never.db'}", UNIT_KEY)
    never.migrate()
    never.create_experiment(spec(half_life_s=7200), NOW)
    ingest(never, others, None, NOW + 2 * HOUR)
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
    assert erase(half_life_store, "nobody") == {"exposures": 0, "outcomes": 0, "stitches": 0}
