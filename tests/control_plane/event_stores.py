"""Every place the control plane keeps events, for the tests whose rules must hold on all of them.

SQLite and PostgreSQL keep the events in the store's own tables. With ClickHouse (chDB here, the
same SQL a server runs) the store keeps the experiments and an
:class:`~control_plane.storage.clickhouse_events.EventLog` the events, as ``perch consume
--events-url`` runs it. The helpers write and read through whichever the store has, so one test
states one rule for all three (the ``any_store`` fixture, tests/control_plane/conftest.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from control_plane.events.clickhouse_sink import store_batch
from control_plane.events.ingest import verified_tokens
from control_plane.events.tally import IngestResult
from control_plane.experiments import ExperimentSpec
from control_plane.storage import stats
from control_plane.storage.schema import exposures
from control_plane.storage.store import Store
from tests.factories import NOW

# The suite's clock (factories.NOW) stands months behind ClickHouse's, whose TTL drops a row once its
# time + reward window + horizon has passed; with the default 90-day horizon every row would go at
# the next merge. Ten years keeps them, and nothing else reads the horizon.
HORIZON_S = 10 * 365 * 86_400

Sums = dict[tuple[str, str], tuple[float, float]]


def on_clickhouse(store: Store) -> bool:
    return store.events is not None


def put(
    store: Store, events: list[dict[str, Any]], now: int = NOW, *, secret: str | None = None
) -> IngestResult:
    """Store one batch as the control plane would (with ``secret``: its decision tokens verified)."""
    tokens = verified_tokens(secret, events) if secret is not None else None
    return store_batch(store, events, None, now, tokens=tokens, horizon_s=HORIZON_S)


def totals(store: Store, experiment: str) -> Sums:
    """The raw (undecayed) sums the statistics hold per (path JSON, arm)."""
    if store.events is not None:
        kept = store.events.totals(experiment)
    else:
        with store.engine.connect() as conn:
            kept = stats.totals(conn, experiment)
    return {key: (t.exposures, t.reward) for key, t in kept.items()}


def recompute(store: Store, experiment: str) -> Sums:
    """The same sums, recomputed from the stored rows."""
    if store.events is not None:
        again = store.events.recompute(experiment)
    else:
        with store.engine.connect() as conn:
            again = stats.recompute(conn, experiment)
    return {key: (t.exposures, t.reward) for key, t in again.items()}


def fold(store: Store, spec: ExperimentSpec) -> None:
    """Fold the appended deltas: the SQL rollup, or ClickHouse merging the SummingMergeTree's parts
    (what its background merges do, forced)."""
    if store.events is None:
        store.rollup(spec)
        return
    store.events.ch.command(f"OPTIMIZE TABLE {store.events.layout.table('stat_deltas')} FINAL")


def rewards(store: Store, experiment: str) -> dict[str, float]:
    """Each stored exposure's reward by decision id (what evaluation reads)."""
    if store.events is not None:
        table = store.events.layout.table
        credits = (
            "SELECT decision_id, sum(c) AS r FROM (SELECT decision_id, event_id, "
            f"argMax(credited, version) AS c FROM {table('outcomes')} "
            "WHERE experiment = {e:String} GROUP BY decision_id, event_id) GROUP BY decision_id"
        )
        shown = f"SELECT DISTINCT decision_id FROM {table('exposures')} WHERE experiment = {{e:String}}"
        rows = store.events.ch.rows(
            f"SELECT x.decision_id, ifNull(o.r, 0) FROM ({shown}) AS x "
            f"LEFT JOIN ({credits}) AS o USING (decision_id)",
            {"e": experiment},
        )
        return {str(d).replace("-", ""): float(r) for d, r in rows}
    with store.engine.connect() as conn:
        return dict(conn.execute(select(exposures.c.decision_id, exposures.c.reward)).all())
