from __future__ import annotations

import json

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select

from control_plane.experiments import ExperimentError
from control_plane.storage.schema import experiments, metadata
from control_plane.storage.stats import decay
from control_plane.storage.store import Conflict, NotFound, Store
from tests.factories import NOW, spec


def test_migrations_create_exactly_the_declared_schema(store: Store) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    assert "alembic_version" in inspect(store.engine).get_table_names()


def test_migrating_again_keeps_the_data(store: Store) -> None:
    store.create_experiment(spec(), NOW)
    store.migrate()
    record = store.get_experiment("hero")
    assert record is not None and record.spec == spec()


def test_experiment_lifecycle_is_versioned_and_audited(store: Store) -> None:
    created = store.create_experiment(spec(), NOW)
    assert created.version == 1
    with pytest.raises(Conflict, match="exists"):
        store.create_experiment(spec(), NOW)
    updated = store.update_experiment("hero", {"floor": 0.2}, NOW + 1, expected_version=1)
    assert (updated.version, updated.spec.floor) == (2, 0.2)
    with pytest.raises(Conflict, match="at version 2, not 1"):
        store.update_experiment("hero", {"floor": 0.3}, NOW + 2, expected_version=1)
    archived = store.archive_experiment("hero", NOW + 3)
    assert archived.archived and store.list_experiments() == []
    assert [r.spec.key for r in store.list_experiments(include_archived=True)] == ["hero"]
    with pytest.raises(NotFound):
        store.update_experiment("hero", {"floor": 0.1}, NOW + 4)
    assert [(h["version"], h["action"]) for h in store.history("hero")] == [
        (1, "create"),
        (2, "update"),
        (3, "archive"),
    ]
    assert store.history("hero")[1]["spec"]["floor"] == 0.2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"salt": "other"}, "salt cannot change"),
        ({"features": ["device"]}, "features cannot change"),
        ({"arms": [{"key": "a"}, {"key": "b"}]}, r"arms \['c'\] cannot be removed"),
        ({"holdout": 0.9}, r"holdout=0.9, must be in \[0.0, 0.5\]"),
        ({"color": "red"}, r"unknown fields \['color'\]"),
    ],
)
def test_changes_that_would_break_data_are_refused(
    store: Store, changes: dict[str, object], message: str
) -> None:
    store.create_experiment(spec(), NOW)
    with pytest.raises(ExperimentError, match=message):
        store.update_experiment("hero", changes, NOW)
    record = store.get_experiment("hero")
    assert record is not None and record.version == 1


def test_arms_can_be_added(store: Store) -> None:
    store.create_experiment(spec(), NOW)
    arms = [{"key": "a"}, {"key": "b"}, {"key": "c"}, {"key": "d", "html": "<i>new</i>"}]
    assert [a.key for a in store.update_experiment("hero", {"arms": arms}, NOW).spec.arms] == [
        "a",
        "b",
        "c",
        "d",
    ]


def test_specs_are_stored_as_json(store: Store) -> None:
    store.create_experiment(spec(), NOW)
    with store.engine.connect() as conn:
        raw = conn.execute(select(experiments.c.spec)).scalar_one()
    assert json.loads(raw)["features"] == ["device", "source"]


def test_unit_hashes_are_keyed_and_stable(store: Store) -> None:
    assert store.hash_unit("u-1") == store.hash_unit("u-1") != store.hash_unit("u-2")
    assert "u-1" not in (store.hash_unit("u-1") or "")
    assert Store(store.engine, "other-key").hash_unit("u-1") != store.hash_unit("u-1")
    assert store.hash_unit(None) is None


def test_decay_halves_per_half_life() -> None:
    assert decay(8.0, 0, 3_600_000, 3600) == pytest.approx(4.0)
    assert decay(8.0, 0, 3_600_000, None) == 8.0
    assert decay(8.0, 10, 5, 3600) == 8.0


def test_data_written_before_a_migration_survives_it(blank_db_url: str) -> None:
    # Build the database as release 0004 left it, with data written the way it wrote it (statistics
    # updated in place in ``stats``), then upgrade to head: the base keeps it, reads see it.
    from sqlalchemy import select as sql_select
    from sqlalchemy import text

    from control_plane.storage.migrate import migrate
    from control_plane.storage.schema import snapshots
    from tests.factories import UNIT_KEY

    old = Store.from_url(blank_db_url, UNIT_KEY)
    migrate(old.engine, "0004")
    old.create_experiment(spec(), NOW)
    with old.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO stats (experiment, path, arm, exposures, reward, decayed_exposures, "
                "decayed_reward, ref_ms) VALUES ('hero', '[\"mobile\"]', 'a', 10, 3, 8, 2, :ref)"
            ),
            {"ref": NOW - 3_600_000},
        )
        conn.execute(
            text(
                "INSERT INTO outcomes (event_id, decision_id, experiment, value, ts_ms, status) "
                "VALUES ('o-1', :d, 'hero', 1.0, :ts, 'pending')"
            ),
            {"d": "0" * 32, "ts": NOW},
        )
        conn.execute(
            snapshots.insert().values(
                experiment="hero",
                version=1,
                created_ms=NOW,
                kv_key="k",
                size=1,
                sha256="0" * 64,
                digest="d",
                spec_version=1,
            )
        )
    old.migrate()
    half = spec().half_life_s
    cell = old.cells(spec(), NOW)[("mobile",)]["a"]
    assert cell.exposures == pytest.approx(decay(8.0, NOW - 3_600_000, NOW, half))
    assert cell.reward == pytest.approx(decay(2.0, NOW - 3_600_000, NOW, half))
    assert old.outcome_statuses("hero") == {"pending": 1}
    record = old.get_experiment("hero")
    assert record is not None and record.spec == spec()
    with old.engine.connect() as conn:
        assert conn.execute(sql_select(snapshots.c.data)).scalar() is None
    old.engine.dispose()


def test_m8_pending_outcomes_expire_after_the_reward_window(any_store: Store) -> None:
    from tests.control_plane.event_stores import on_clickhouse, put
    from tests.factories import exposure, outcome

    store = any_store
    store.create_experiment(spec(reward={"kind": "binary", "window_s": 3600}), NOW)
    orphans = [outcome(i, ts=NOW) for i in range(50)]
    stray = [{**outcome(100 + i, ts=NOW), "experiment": "never-created"} for i in range(3)]
    put(store, orphans + stray)
    assert store.outcome_statuses("hero") == {"pending": 50}
    # Within the window (and its grace) they wait for their exposures.
    assert store.expire_pending(NOW + 3600_000) == 0
    assert store.expire_pending(NOW + 2 * 3600_000 + 1) == 50
    assert store.expire_pending(NOW + 2 * 3600_000 + 1) == 0  # once
    assert store.outcome_statuses("hero") == {}
    assert store.counters("hero")["expired_outcomes"] == 50
    # An exposure arriving after all credits none of them.
    assert put(store, [exposure(1)], NOW + 3 * 3600_000).joined == 0
    assert store.outcome_statuses("hero") == {}
    # An unknown experiment's wait the longest window there is (ClickHouse never stored them).
    assert store.expire_pending(NOW + 91 * 86_400_000) == (0 if on_clickhouse(store) else 3)


def test_a_ranked_experiments_patch_merges_its_ranking_and_keeps_it_ranked(store: Store) -> None:
    from control_plane.experiments import ExperimentSpec

    items = [{"key": f"i{i}", "group": f"g{i % 2}"} for i in range(4)]
    ranked = ExperimentSpec.create(
        {"key": "recs", "arms": items, "default_arm": "i0", "ranking": {"slots": 3, "min_exposures": 50}}
    )
    store.create_experiment(ranked, NOW)
    updated = store.update_experiment("recs", {"ranking": {"slots": 2}}, NOW + 1).spec.ranking
    assert updated is not None
    assert (updated.slots, updated.min_exposures, updated.groups["i3"]) == (2, 50, "g1")
    # A group given on a PATCHed item replaces the stored one.
    regrouped = [{**item, "group": "g9"} if item["key"] == "i3" else item for item in items]
    changed = store.update_experiment("recs", {"arms": regrouped}, NOW + 2).spec.ranking
    assert changed is not None and changed.groups["i3"] == "g9" and changed.groups["i2"] == "g0"
    with pytest.raises(ExperimentError, match="ranking cannot be added or removed after creation"):
        store.update_experiment("recs", {"ranking": None}, NOW + 3)
    store.create_experiment(spec(), NOW)
    with pytest.raises(ExperimentError, match="ranking cannot be added or removed after creation"):
        store.update_experiment("hero", {"ranking": {"slots": 2}}, NOW + 3)
