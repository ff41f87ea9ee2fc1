from __future__ import annotations

import re
import time

import pytest

from control_plane.storage.clickhouse import Chdb, ClickHouseError
from control_plane.storage.clickhouse_events import EventLog, Exposure
from control_plane.storage.clickhouse_schema import (
    DEDUP_WINDOW,
    LOOKUP_GRANULARITY,
    TABLES,
    VIEWS,
    Layout,
    statements,
)


def _exposures(n: int) -> list[Exposure]:
    now = int(time.time() * 1000)
    return [
        Exposure("exp", f"{i:032x}", "a", f"u{i}", '["m"]', "all", "personalized", 0.5, 1, now - i)
        for i in range(n)
    ]


def test_every_table_has_a_deduplication_window(chdb: Chdb) -> None:
    EventLog(chdb).migrate()
    rows = chdb.rows(
        "SELECT name, engine, engine_full FROM system.tables WHERE database = {d:String}",
        {"d": chdb.database},
    )
    merge_trees = {name: full for name, engine, full in rows if engine.endswith("MergeTree")}
    assert set(merge_trees) == set(TABLES)
    for name, full in merge_trees.items():
        assert re.search(rf"deduplication_window = {DEDUP_WINDOW}\b", full), (name, full)
    views = {name for name, engine, _ in rows if engine == "MaterializedView"}
    assert views == set(VIEWS)


def test_the_tables_looked_up_by_id_have_small_granules(chdb: Chdb) -> None:
    # A consumer looks thousands of random ids up per group: each costs a granule read.
    EventLog(chdb).migrate()
    rows = chdb.rows(
        "SELECT name, engine_full FROM system.tables WHERE database = {d:String}", {"d": chdb.database}
    )
    setting = re.compile(rf"index_granularity = {LOOKUP_GRANULARITY}\b")
    granular = {name for name, full in rows if setting.search(full)}
    assert granular == {"exposures", "outcomes"}


def test_migrate_is_idempotent(chdb: Chdb) -> None:
    log = EventLog(chdb)
    log.migrate()
    log.store(_exposures(3), [], {}, int(time.time() * 1000))
    log.migrate()
    assert log.counts("exp")["exposures"] == 3


def test_a_retried_insert_counts_once_in_the_view_target_and_three_times_without_its_window(
    chdb: Chdb,
) -> None:
    """The failure the schema exists to prevent, reproduced: the window on the views' target matters."""
    EventLog(chdb).migrate()
    columns = ("experiment", "decision_id", "arm", "path", "reason", "ts_ms", "keep_until")
    now = int(time.time() * 1000)
    rows = [("exp", f"{i:032x}", "a", '["m"]', "personalized", now, now // 1000 + 3600) for i in range(5)]
    deltas = f"SELECT sum(exposures) FROM `{chdb.database}`.stat_deltas WHERE experiment = 'exp'"
    for _ in range(3):
        chdb.insert("exposures", columns, rows, token="retried")
    assert chdb.rows(deltas) == [(5.0,)]
    chdb.command(
        f"ALTER TABLE `{chdb.database}`.stat_deltas MODIFY SETTING non_replicated_deduplication_window = 0"
    )
    later = [(e, d.replace("0", "f", 1), *rest) for e, d, *rest in rows]
    for _ in range(3):
        chdb.insert("exposures", columns, later, token="retried-again")
    assert chdb.rows(deltas) == [(5.0 + 15.0,)]  # the source dropped the retries, the target did not


def test_cluster_ddl_replicates_every_table_and_shards_by_decision() -> None:
    ddl = statements(Layout(database="perch", cluster="main"))
    assert all(" ON CLUSTER `main`" in sql for sql in ddl)
    for name in TABLES:
        (create,) = [s for s in ddl if s.startswith(f"CREATE TABLE IF NOT EXISTS `perch`.`{name}` ")]
        assert "ENGINE = Replicated" in create and "'/clickhouse/tables/{shard}/perch/" + name in create
        assert f"replicated_deduplication_window = {DEDUP_WINDOW}" in create
        (distributed,) = [s for s in ddl if s.startswith(f"CREATE TABLE IF NOT EXISTS `perch`.`{name}_all`")]
        assert "Distributed(`main`, `perch`, `" + name + "`" in distributed
    assert "cityHash64(decision_id)" in next(s for s in ddl if "`exposures_all`" in s)
    assert Layout(cluster="main").table("exposures") == "`perch`.`exposures_all`"
    single = statements(Layout())
    assert not any("Replicated" in s or "ON CLUSTER" in s for s in single)


def test_layout_refuses_names_it_would_have_to_quote() -> None:
    with pytest.raises(ClickHouseError, match="letters, digits"):
        Layout(database="perch`; DROP")
