"""The ClickHouse event tables: one text for chDB and a single server, one for a replicated cluster.

* ``exposures`` and ``outcomes``: ``ReplacingMergeTree`` ordered by (experiment, decision id), so
  a decision's rows sit together and a row stored twice collapses to one when parts merge; each
  row carries ``keep_until`` (its time plus the experiment's reward window and evaluation
  horizon), and the table's TTL drops it after that.
* ``stat_deltas``: ``SummingMergeTree`` ordered by (experiment, path, arm, hour): the learner's
  cells, pre-aggregated, so a learning cycle reads cells, not events. Two materialized views
  fill it from every block of exposures and of credited outcomes inserted.

Measured on chDB (tests/control_plane/storage/test_clickhouse_schema.py): a block inserted three
times with one ``insert_deduplication_token`` is stored three times in a table whose
deduplication window is 0, the default for non-replicated MergeTree tables. Every table here
therefore sets its window, and so must any materialized-view target added later.

Cluster variant (``cluster="name"``): ``Replicated*MergeTree`` tables ``ON CLUSTER`` with
``{shard}``/``{replica}`` macros, plus ``Distributed`` tables named ``*_all`` sharded by
``cityHash64(decision_id)``, so a decision's exposure and outcomes land on one shard. Server-side
settings that matter there (config.xml / users.xml):

* ``replicated_deduplication_window`` (blocks) and ``replicated_deduplication_window_seconds``
  cover at least the longest time a consumer may retry an insert;
* ``insert_quorum`` = a majority, so an acknowledged insert survives the loss of one replica;
* Keeper (ZooKeeper) must be reachable, or inserts into replicated tables fail (the consumer then
  leaves its messages unacknowledged, to come back).

Durability: ClickHouse does not fsync on insert by default (``fsync_after_insert=0``); an
acknowledged insert can be lost if the machine loses power before the OS writes it back. On one
node that means the last few seconds of events may be lost after a power cut (a process crash
loses nothing: the data is in the page cache). Set ``fsync_after_insert=1`` and
``fsync_part_directory=1`` in the MergeTree settings to trade throughput for it, or rely on
``insert_quorum`` across replicas.
"""

from __future__ import annotations

from dataclasses import dataclass

from control_plane.storage.clickhouse import ClickHouseError

__all__ = ["DEDUP_WINDOW", "TABLES", "VIEWS", "Layout", "statements"]

# Inserts remembered per table for deduplication: at 5,000-event groups and one block per queue
# message, far more than a consumer could retry while holding its lease.
DEDUP_WINDOW = 10_000
# Rows per index granule of exposures and outcomes (ClickHouse's default is 8,192). A consumer looks
# its group's few thousand random decision ids up before inserting, and each id costs a granule
# read: smaller granules make that read smaller once the table is large (3,750 ids among 10^7
# exposures: 170 ms with 8,192-row granules, 80-90 ms with 1,024, no better with 256), for a larger
# primary index (a mark per 1,024 rows). The lookups still grow with the table:
# benchmarks/RESULTS-clickhouse.md 5c. A table made before this setting keeps its granules:
# ClickHouse cannot change them in place. On a cluster the granularity is part of a replicated
# table's metadata: a new replica of a table made before must be created with that table's
# granularity (8,192), not this one.
LOOKUP_GRANULARITY = 1024
TABLES = ("exposures", "outcomes", "stat_deltas", "erasures")
VIEWS = ("exposure_deltas", "outcome_deltas", "erasure_deltas")

_COLUMNS = {
    "exposures": """
        experiment LowCardinality(String),
        decision_id UUID,
        arm LowCardinality(String),
        unit_hash String CODEC(ZSTD(1)),
        path LowCardinality(String),
        segment LowCardinality(String),
        reason LowCardinality(String),
        propensity Nullable(Float32),
        snapshot_version UInt32 CODEC(T64, ZSTD(1)),
        ts_ms Int64 CODEC(Delta, ZSTD(1)),
        half_life_s Float32 CODEC(ZSTD(1)),
        keep_until DateTime CODEC(Delta, ZSTD(1))""",
    "outcomes": """
        experiment LowCardinality(String),
        decision_id UUID,
        event_id String CODEC(ZSTD(1)),
        value Float64,
        unit_hash String CODEC(ZSTD(1)),
        ts_ms Int64 CODEC(Delta, ZSTD(1)),
        status LowCardinality(String),
        credited Float64,
        path LowCardinality(String),
        arm LowCardinality(String),
        decision_ts_ms Int64 CODEC(Delta, ZSTD(1)),
        counted UInt8,
        half_life_s Float32 CODEC(ZSTD(1)),
        keep_until DateTime CODEC(Delta, ZSTD(1)),
        version UInt8""",
    # What an erasure took out of the cells, one row per erased event (its id: "x<decision>" or
    # "o<event>"): its view appends the negation, and an id already here is never negated again.
    "erasures": """
        experiment LowCardinality(String),
        id String,
        path String,
        arm LowCardinality(String),
        ts_ms Int64,
        half_life_s Float32,
        exposures Float64,
        reward Float64""",
    "stat_deltas": """
        experiment LowCardinality(String),
        path String,
        arm LowCardinality(String),
        hour_ms Int64,
        exposures Float64,
        reward Float64,
        decayed_exposures Float64,
        decayed_reward Float64""",
}
_ENGINES = {
    "exposures": ("ReplacingMergeTree", "(experiment, decision_id)", True),
    # version: a pending outcome credited later is stored again, and the newer row is the one kept.
    "outcomes": ("ReplacingMergeTree", "(experiment, decision_id, event_id)", True),
    "stat_deltas": ("SummingMergeTree", "(experiment, path, arm, hour_ms)", False),
    "erasures": ("ReplacingMergeTree", "(experiment, id)", False),
}


# The learner's cells are a function of the raw rows: each block of exposures or outcomes inserted
# adds its own deltas in the same INSERT, so a row skipped as already stored adds nothing twice.
# Decayed masses are relative to the hour's start, as control_plane.storage.stats keeps them.
_WEIGHT = "if(half_life_s > 0, exp2(({ts} - hour_ms) / (half_life_s * 1000.0)), 1.0)"
_VIEWS = {
    "exposure_deltas": (
        "exposures",
        "SELECT experiment, path, arm, intDiv(ts_ms, 3600000) * 3600000 AS hour_ms, "
        "toFloat64(count()) AS exposures, 0.0 AS reward, "
        f"sum({_WEIGHT.format(ts='ts_ms')}) AS decayed_exposures, 0.0 AS decayed_reward "
        "FROM {source} WHERE reason = 'personalized' GROUP BY experiment, path, arm, hour_ms",
    ),
    "outcome_deltas": (
        "outcomes",
        "SELECT experiment, path, arm, intDiv(decision_ts_ms, 3600000) * 3600000 AS hour_ms, "
        "0.0 AS exposures, sum(credited) AS reward, 0.0 AS decayed_exposures, "
        f"sum(credited * {_WEIGHT.format(ts='decision_ts_ms')}) AS decayed_reward "
        "FROM {source} WHERE credited > 0 AND counted = 1 GROUP BY experiment, path, arm, hour_ms",
    ),
    "erasure_deltas": (
        "erasures",
        # e.exposures, not exposures: the output's aliases shadow the source's columns.
        "SELECT experiment, path, arm, intDiv(e.ts_ms, 3600000) * 3600000 AS hour_ms, "
        "-sum(e.exposures) AS exposures, -sum(e.reward) AS reward, "
        f"-sum(e.exposures * {_WEIGHT.format(ts='e.ts_ms')}) AS decayed_exposures, "
        f"-sum(e.reward * {_WEIGHT.format(ts='e.ts_ms')}) AS decayed_reward "
        "FROM {source} AS e GROUP BY experiment, path, arm, hour_ms",
    ),
}


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the tables live: a database, and for a cluster its name (None: one node, or chDB)."""

    database: str = "perch"
    cluster: str | None = None

    def __post_init__(self) -> None:
        for name in (self.database, self.cluster or "x"):
            if not name.replace("_", "").isalnum():
                raise ClickHouseError(f"ClickHouse name {name!r}: letters, digits and '_' only")

    def table(self, name: str) -> str:
        """What queries name: the Distributed table on a cluster, the table itself otherwise."""
        return f"`{self.database}`.`{name}_all`" if self.cluster else f"`{self.database}`.`{name}`"


def statements(layout: Layout) -> list[str]:
    """The DDL, idempotent (``IF NOT EXISTS``), in order."""
    db, cluster = layout.database, layout.cluster
    on = f" ON CLUSTER `{cluster}`" if cluster else ""
    out = [f"CREATE DATABASE IF NOT EXISTS `{db}`{on}"]
    for name in TABLES:
        engine, order, ttl = _ENGINES[name]
        version = ", version" if name == "outcomes" else ""
        if cluster:
            path = f"'/clickhouse/tables/{{shard}}/{db}/{name}', '{{replica}}'"
            engine_sql = f"Replicated{engine}({path}{version})"
            window = f"replicated_deduplication_window = {DEDUP_WINDOW}"
        else:
            engine_sql = f"{engine}({version.lstrip(', ')})" if version else engine
            window = f"non_replicated_deduplication_window = {DEDUP_WINDOW}"
        out.append(
            f"CREATE TABLE IF NOT EXISTS `{db}`.`{name}`{on} ({_COLUMNS[name]}\n) "
            f"ENGINE = {engine_sql} ORDER BY {order}"
            + (" TTL keep_until" if ttl else "")
            + f" SETTINGS {window}"
            + (f", index_granularity = {LOOKUP_GRANULARITY}" if name in ("exposures", "outcomes") else "")
        )
        if cluster:
            out.append(
                f"CREATE TABLE IF NOT EXISTS `{db}`.`{name}_all`{on} AS `{db}`.`{name}` "
                f"ENGINE = Distributed(`{cluster}`, `{db}`, `{name}`, "
                + (
                    "cityHash64(decision_id))"
                    if name in ("exposures", "outcomes")
                    else "cityHash64(experiment, path))"
                )
            )
    for view, (source, select) in _VIEWS.items():
        # On a cluster each shard's view feeds its own local stat_deltas; reads go through stat_deltas_all.
        out.append(
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS `{db}`.`{view}`{on} TO `{db}`.`stat_deltas` AS "
            + select.format(source=f"`{db}`.`{source}`")
        )
    return out
