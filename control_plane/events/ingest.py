"""Event ingestion: idempotent storage, then the statistics and the outcome crediting.

One signed batch is one transaction; it is acknowledged only after commit, so
an acknowledged event survives a crash, and a batch the edge resends is
harmless (events are idempotent by id, exposures by decision id).

* An exposure updates the statistics of its (experiment, feature path, arm)
  cell if it was a personalized decision (holdout, stale and consent
  decisions are kept for reporting but say nothing about the policy's arms).
* An outcome is credited to its decision's cell (:mod:`control_plane.events.credit`): from its
  decision token at once, else by joining its exposure; orphans are counted, never dropped.
* What the transaction adds to the statistics is gathered in :mod:`control_plane.events.tally`
  and appended once at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, select

from control_plane.events.credit import (
    OutcomeRow,
    credit_from_tokens,
    join_outcomes,
    verified_tokens,
    waiting_for,
)
from control_plane.events.tally import Cells, IngestResult, Paths
from control_plane.experiments import ExperimentSpec
from control_plane.settings import REPLAY_MEMORY_S
from control_plane.storage import bulk
from control_plane.storage.schema import experiments, exposures, outcomes, seen_batches, signals, stitches
from control_plane.storage.store import Store
from core import DecisionToken

# Cells, IngestResult and verified_tokens are re-exported: callers ingest through this module.
__all__ = [
    "Cells",
    "IngestResult",
    "decided_propensity",
    "needs_decided_propensity",
    "ingest",
    "ingest_into",
    "remember_batches",
    "verified_tokens",
]


def _spec_cache(store: Store, conn: Connection, keys: Iterable[str]) -> dict[str, ExperimentSpec]:
    """The specs of ``keys`` that exist; parsed only when their version is new to this store."""
    specs: dict[str, ExperimentSpec] = {}
    rows = conn.execute(
        select(experiments.c.key, experiments.c.version, experiments.c.spec).where(
            experiments.c.key.in_(set(keys))
        )
    )
    for key, version, doc in rows:
        cached = store.parsed_specs.get(key)
        if cached is None or cached[0] != version:
            cached = store.parsed_specs[key] = (version, ExperimentSpec.from_dict(json.loads(doc)))
        specs[key] = cached[1]
    return specs


def _fill_propensities(
    store: Store,
    conn: Connection,
    specs: dict[str, ExperimentSpec],
    rows: dict[str, dict[str, Any]],
    cells: Cells,
) -> None:
    """Give contextual exposures the exact propensity of the snapshot that decided them.

    The edge logs none for them (control_plane.propensity says why); an exposure whose
    snapshot is not in the store keeps none, is counted, and is left out of evaluation.
    """
    for row in rows.values():
        spec = specs.get(row["experiment"])
        if not needs_decided_propensity(spec, row["propensity"], row["reason"], row["snapshot_version"]):
            continue
        assert spec is not None
        row["propensity"] = decided_propensity(
            store, conn, spec, version=row["snapshot_version"], arm=row["arm"], path=row["path"]
        )
        if row["propensity"] is None:
            cells.bump(row["experiment"], "propensity_unknown")


def needs_decided_propensity(
    spec: ExperimentSpec | None, propensity: float | None, reason: str, snapshot_version: int | None
) -> bool:
    """Whether an exposure gets its propensity here: a personalized single decision of a contextual
    experiment, logged without one. A ranked position's is not a single draw's (core.ranking)."""
    return (
        propensity is None
        and reason == "personalized"
        and spec is not None
        and spec.model == "contextual"
        and spec.ranking is None
        and snapshot_version is not None
    )


def decided_propensity(
    store: Store, conn: Connection, spec: ExperimentSpec, *, version: int, arm: str, path: str
) -> float | None:
    """P(``arm``) for the context ``path`` (JSON) under snapshot ``version`` of a contextual
    experiment, exactly (control_plane.propensity); None if the store never made that snapshot."""
    snapshot = store.snapshot_at(conn, spec.key, version)
    index = snapshot.arm_index.get(arm) if snapshot is not None else None
    if snapshot is None or index is None:
        return None
    context = dict(zip(spec.features, json.loads(path), strict=True))
    return float(store.propensities.get(snapshot, context)[index])


def remember_batches(store: Store, conn: Connection, signatures: list[str], now_ms: int) -> None:
    """Record accepted batches' signatures, so a replay is refused whole; forget old ones.

    Kept past the signature tolerance (+/- 5 min) so a replayed POST is always recognised; a queue
    message redelivered later than that is still harmless (every event is idempotent by its id).
    """
    now_s = now_ms // 1000
    conn.execute(seen_batches.insert(), [{"signature": k, "ts": now_s} for k in signatures])
    if now_s - store.replays_purged_s >= 60:
        conn.execute(seen_batches.delete().where(seen_batches.c.ts < now_s - REPLAY_MEMORY_S))
        store.replays_purged_s = now_s


def ingest(
    store: Store,
    events: list[dict[str, Any]],
    signature: str | None,
    now_ms: int,
    *,
    tokens: Mapping[str, DecisionToken] | None = None,
) -> IngestResult:
    """Store one validated batch in one transaction; raises nothing for duplicates.

    Bulk statements per event type: a batch of hundreds of events costs a handful
    of round trips, which is what lets one control plane keep up with many edges.
    """
    with store.ingest_write() as conn:
        return ingest_into(store, conn, events, signature, now_ms, tokens=tokens)


def ingest_into(
    store: Store,
    conn: Connection,
    events: list[dict[str, Any]],
    signature: str | None,
    now_ms: int,
    *,
    cells: Cells | None = None,
    tokens: Mapping[str, DecisionToken] | None = None,
) -> IngestResult:
    """:func:`ingest` inside the caller's transaction (group commit stores several batches in one).

    With ``cells`` the statistics are only gathered there, for the caller to
    flush once for the whole group. ``tokens`` (from :func:`verified_tokens`)
    are the decisions of outcomes that carried a valid decision token: those
    are credited from the token, with no exposure lookup.
    """
    own_cells = cells is None
    result = IngestResult()
    by_type: dict[str, list[dict[str, Any]]] = {"exposure": [], "outcome": [], "stitch": [], "signal": []}
    for event in events:
        by_type[event["type"]].append(event)
    if signature is not None:
        remember_batches(store, conn, [signature], now_ms)
    specs = _spec_cache(store, conn, {e["experiment"] for e in events if "experiment" in e})
    if cells is None:
        cells = Cells()
    cells.specs.update(specs)
    cells.now_ms = now_ms
    tally = _Tally(store, conn, specs, cells, result)
    waiting = tally.exposures(by_type["exposure"], now_ms)
    tally.outcomes(by_type["outcome"], waiting, tokens or {})
    tally.stitches(by_type["stitch"])
    tally.signals(by_type["signal"])
    if own_cells:
        cells.flush(store, conn)
    return result


class _Tally:
    """One transaction's store-and-count steps, per event type, sharing what they need."""

    def __init__(
        self,
        store: Store,
        conn: Connection,
        specs: dict[str, ExperimentSpec],
        cells: Cells,
        result: IngestResult,
    ) -> None:
        self.store, self.conn, self.specs, self.cells, self.result = store, conn, specs, cells, result

    def exposures(self, events: list[dict[str, Any]], now_ms: int) -> list[Any]:
        """Store new exposures and count their cells; returns earlier outcomes waiting for them."""
        store, specs, cells = self.store, self.specs, self.cells
        rows: dict[str, dict[str, Any]] = {}
        paths = Paths(specs)
        for event in events:
            rows.setdefault(event["decision_id"], _exposure_row(store, paths, event, now_ms))
        _fill_propensities(store, self.conn, specs, rows, cells)
        new = bulk.insert_new(self.conn, exposures, "decision_id", list(rows.values()))
        self.result.accepted["exposure"] = len(new)
        self.result.duplicates += len(events) - len(new)
        for decision_id in sorted(new):
            row = rows[decision_id]
            if row["experiment"] not in specs:
                cells.bump(row["experiment"], "unknown_experiment")
            elif row["reason"] == "personalized":
                cells.add(row["experiment"], row["path"], row["arm"], ts=row["ts_ms"], n=1.0, r=0.0)
        return waiting_for(self.conn, sorted(new)) if new else []

    def outcomes(
        self, events: list[dict[str, Any]], waiting: list[Any], tokens: Mapping[str, DecisionToken]
    ) -> None:
        """Store new outcomes; credit the tokened ones, join the rest (and those ``waiting``)."""
        rows: dict[str, dict[str, Any]] = {}
        for event in events:
            rows.setdefault(event["id"], _outcome_row(self.store, event))
        new = bulk.insert_new(self.conn, outcomes, "event_id", list(rows.values()))
        self.result.accepted["outcome"] = len(new)
        self.result.duplicates += len(events) - len(new)
        # A token counts only for the stored row it came with: two events may share a client-chosen id.
        tokened = {
            i: tokens[i]
            for i in sorted(new)
            if i in tokens
            and (tokens[i].decision_id, tokens[i].experiment)
            == (rows[i]["decision_id"], rows[i]["experiment"])
        }
        cells, specs, result = self.cells, self.specs, self.result
        if tokened:
            credit_from_tokens(self.conn, cells=cells, specs=specs, result=result, rows=rows, tokens=tokened)
        # Outcomes of this batch without a token, and older ones that were waiting for an exposure of
        # this batch (the token-credited ones were absorbed above).
        fresh = [
            OutcomeRow(**{k: rows[i][k] for k in ("event_id", "decision_id", "value", "ts_ms")})
            for i in sorted(new)
            if i not in tokened
        ]
        if fresh or waiting:
            join_outcomes(self.conn, cells=cells, specs=specs, result=result, pending=[*fresh, *waiting])

    def stitches(self, events: list[dict[str, Any]]) -> None:
        hash_unit = self.store.hash_unit
        rows = {
            e["id"]: {
                "event_id": e["id"],
                "anonymous_hash": hash_unit(e["anonymous_id"]),
                "user_hash": hash_unit(e["user_id"]),
                "ts_ms": e["ts"],
            }
            # Earliest first: an anonymous id keeps its first user (a unique column skips the rest).
            for e in sorted(events, key=lambda e: (e["ts"], e["id"]))
        }
        new = bulk.insert_new(self.conn, stitches, "event_id", list(rows.values()))
        self.result.accepted["stitch"] = len(new)
        self.result.duplicates += len(events) - len(new)

    def signals(self, events: list[dict[str, Any]]) -> None:
        """Behavioural signals, for the profile builder (control_plane.profiles)."""
        if not events:
            return
        hash_unit = self.store.hash_unit
        rows = {
            e["id"]: {
                "event_id": e["id"],
                "unit_hash": hash_unit(e["unit"]),
                "tag": e["tag"],
                "kind": e["kind"],
                "category": e.get("category"),
                "value": None if e.get("value") is None else float(e["value"]),
                "name": e.get("name"),
                "ts_ms": e["ts"],
            }
            for e in events
        }
        new = bulk.insert_new(self.conn, signals, "event_id", list(rows.values()))
        self.result.accepted["signal"] = len(new)
        self.result.duplicates += len(events) - len(new)


def _exposure_row(store: Store, paths: Paths, event: dict[str, Any], now_ms: int) -> dict[str, Any]:
    return {
        "decision_id": event["decision_id"],
        "experiment": event["experiment"],
        "arm": event["arm"],
        "unit_hash": store.hash_unit(event.get("unit")),
        "path": paths.of(event["experiment"], event.get("context", {})),
        "segment": event.get("segment"),
        "reason": event["reason"],
        "propensity": None if event.get("propensity") is None else float(event["propensity"]),
        "snapshot_version": event.get("snapshot_version"),
        # As received, at the latest: a skewed clock's future stamp would weigh more in the
        # decayed statistics than erasure could take back (control_plane.storage.stats).
        "ts_ms": min(event["ts"], now_ms),
        "reward": 0.0,
        "outcomes": 0,
    }


def _outcome_row(store: Store, event: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": event["id"],
        "decision_id": event["decision_id"],
        "experiment": event["experiment"],
        "value": float(event["value"]),
        "unit_hash": store.hash_unit(event.get("unit")),
        "ts_ms": event["ts"],
        "status": "pending",
    }
