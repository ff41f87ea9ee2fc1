"""``perch consume --events-url chdb:///path``: a consumer group's events into ClickHouse.

The experiments (their features, reward rules and half-lives) stay in the control plane's
database; the events go to :class:`~control_plane.storage.clickhouse_events.EventLog`, which makes
them exact under redelivery without a transaction. What this module adds is the translation the
SQL path does in control_plane.events.ingest: an exposure's cell from its context, an outcome's
reward from the experiment's rule, a verified token's cell.

Identity stitches and behavioural signals are stored in the database, as on the SQL path: erasure
walks the stitches, the profile builder reads the signals.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from control_plane.events.group_commit import Batch
from control_plane.events.ingest import decided_propensity, ingest, needs_decided_propensity
from control_plane.events.tally import IngestResult, Paths, path_of
from control_plane.experiments import ExperimentSpec
from control_plane.storage.clickhouse import ClickHouseError
from control_plane.storage.clickhouse_events import EventLog, Exposure, Outcome, Rule, Stored
from control_plane.storage.store import Store
from core import DecisionToken

__all__ = ["ClickHouseSink", "store_batch"]

log = logging.getLogger("perch.consume")

# Rows are kept this long after the reward window, for evaluation and the report (then the TTL drops them).
EVALUATION_HORIZON_S = 90 * 86_400


@dataclass
class ClickHouseSink:
    """Stores a group of batches; returns what :func:`~control_plane.events.group_commit.ingest_merged` does
    (None: nothing acknowledged, the group comes back)."""

    store: Store
    events: EventLog
    horizon_s: int = EVALUATION_HORIZON_S
    expired: int = 0
    propensity_unknown: int = 0  # contextual exposures of a snapshot this store never made
    unknown_experiment: int = 0  # events of an experiment the database does not know: skipped

    def __call__(self, batches: list[Batch]) -> tuple[IngestResult, list[Batch]] | None:
        try:
            return self._store(batches), []
        except Exception:
            # Nothing acknowledged: the messages come back after their lease, and every row already
            # stored is skipped then (control_plane.storage.clickhouse_events).
            log.warning("a group could not be stored in ClickHouse; left for redelivery", exc_info=True)
            return None

    def _store(self, batches: list[Batch]) -> IngestResult:
        events = [e for b in batches for e in b.events]
        tokens: dict[str, DecisionToken] = {i: t for b in batches for i, t in (b.tokens or {}).items()}
        now = max((b.now_ms for b in batches), default=0)
        specs = self._specs_of({e["experiment"] for e in events if "experiment" in e})
        paths = Paths(specs)
        exposures, outcomes, in_sql = [], [], []
        unknown: Counter[str] = Counter()
        for e in events:
            kind = e["type"]
            if kind in ("exposure", "outcome") and e["experiment"] not in specs:
                # Kept and not learnt on the SQL path; here nothing could stop a later experiment of
                # that key from learning them, so they are left out and counted.
                self.unknown_experiment += 1
                unknown[e["experiment"]] += kind == "exposure"
                continue
            if kind == "exposure":
                exposures.append(_exposure(e, self.store, paths, now))
            elif kind == "outcome":
                outcomes.append(_outcome(e, self.store, specs, tokens.get(e["id"]), now))
            else:
                in_sql.append(e)
        exposures = self._propensities(exposures, specs)
        rules = {key: _rule(spec, self.horizon_s) for key, spec in specs.items()}
        stored = self.events.store(exposures, outcomes, rules, now)
        self.expired += stored.expired
        self._count(stored, unknown)
        result = IngestResult(duplicates=stored.duplicates)
        result.accepted["exposure"], result.accepted["outcome"] = stored.exposures, stored.outcomes
        if in_sql:
            # Identity stitches (erasure walks them) and signals (the profile builder reads them)
            # stay in the database, idempotent by event id.
            linked = ingest(self.store, in_sql, None, now)
            for kind in ("stitch", "signal"):
                if kind in linked.accepted:
                    result.accepted[kind] = linked.accepted[kind]
            result.duplicates += linked.duplicates
        result.joined = stored.statuses.get("joined", 0) + stored.statuses.get("extra", 0)
        result.late, result.pending = stored.statuses.get("late", 0), stored.statuses.get("pending", 0)
        return result

    def _count(self, stored: Stored, unknown: Counter[str]) -> None:
        """The report's counters, in the database as the SQL path keeps them. Bumped after the events
        are stored: a consumer that dies in between under-counts that group, never over-counts it."""
        bumps = [(e, _COUNTERS[s], n) for (e, s), n in stored.by_experiment.items() if s in _COUNTERS]
        bumps += [(e, "unknown_experiment", n) for e, n in unknown.items() if n]
        if bumps:
            with self.store.write() as conn:
                for experiment, name, n in sorted(bumps):
                    self.store.bump(conn, experiment, name, n)

    def _propensities(self, exposures: list[Exposure], specs: Mapping[str, ExperimentSpec]) -> list[Exposure]:
        """Contextual exposures logged without a propensity get their snapshot's exact one, as on
        the SQL path (control_plane.events.ingest.decided_propensity); one connection per group."""

        def wanted(e: Exposure) -> bool:
            return needs_decided_propensity(
                specs.get(e.experiment), e.propensity, e.reason, e.snapshot_version
            )

        if not any(wanted(e) for e in exposures):
            return exposures
        out = []
        with self.store.engine.connect() as conn:
            for e in exposures:
                p = None
                if wanted(e):
                    assert e.snapshot_version is not None
                    p = decided_propensity(
                        self.store,
                        conn,
                        specs[e.experiment],
                        version=e.snapshot_version,
                        arm=e.arm,
                        path=e.path,
                    )
                    self.propensity_unknown += p is None
                out.append(e if p is None else replace(e, propensity=p))
        return out

    def _specs_of(self, keys: set[str]) -> dict[str, ExperimentSpec]:
        out = {}
        for key in keys:
            record = self.store.get_experiment(key)
            if record is not None:
                out[key] = record.spec
        return out


# Outcome statuses the SQL path also counts per experiment (control_plane.events.credit).
_COUNTERS = {"late": "late_outcomes", "extra": "extra_outcomes"}


def store_batch(
    store: Store,
    events: list[dict[str, Any]],
    signature: str | None,
    now_ms: int,
    *,
    tokens: Mapping[str, DecisionToken] | None = None,
    horizon_s: int = EVALUATION_HORIZON_S,
) -> IngestResult:
    """One validated batch into wherever ``store`` keeps its events: ClickHouse, as ``perch consume``
    stores a group (raises :class:`ClickHouseError` when it was not stored), or the store's own
    database, in one transaction (control_plane.events.ingest)."""
    if store.events is None:
        return ingest(store, events, signature, now_ms, tokens=tokens)
    stored = ClickHouseSink(store, store.events, horizon_s)([Batch(events, signature, now_ms, tokens=tokens)])
    if stored is None:
        raise ClickHouseError("ClickHouse refused the batch; it was not stored")
    return stored[0]


def _rule(spec: ExperimentSpec, horizon_s: int) -> Rule:
    return Rule(
        half_life_s=spec.half_life_s,
        window_ms=spec.reward.window_s * 1000,
        binary=spec.reward.kind == "binary",
        keep_s=spec.reward.window_s + horizon_s,
    )


def _exposure(e: dict[str, Any], store: Store, paths: Paths, now_ms: int) -> Exposure:
    return Exposure(
        experiment=e["experiment"],
        decision_id=e["decision_id"],
        arm=e["arm"],
        unit_hash=store.hash_unit(e.get("unit")),
        path=paths.of(e["experiment"], e.get("context", {})),
        segment=e.get("segment"),
        reason=e["reason"],
        propensity=None if e.get("propensity") is None else float(e["propensity"]),
        snapshot_version=e.get("snapshot_version"),
        # As received, at the latest (as the SQL path: a skewed clock must not weigh more).
        ts_ms=min(e["ts"], now_ms),
    )


def _outcome(
    e: dict[str, Any],
    store: Store,
    specs: Mapping[str, ExperimentSpec],
    token: DecisionToken | None,
    now_ms: int,
) -> Outcome:
    spec = specs.get(e["experiment"])
    value = float(e["value"])
    if spec is None or spec.reward.kind == "binary":
        reward = 1.0 if value > 0 else 0.0
    else:
        reward = min(max(value / spec.reward.max_value, 0.0), 1.0)
    cell = None
    if token is not None and spec is not None and token.decision_id == e["decision_id"]:
        path = json.dumps(path_of(spec, token.cell))
        cell = (path, token.arm, min(token.ts_ms, now_ms), token.reason)
    return Outcome(
        experiment=e["experiment"],
        decision_id=e["decision_id"],
        event_id=e["id"],
        value=reward,
        unit_hash=store.hash_unit(e.get("unit")),
        ts_ms=e["ts"],
        cell=cell,
    )
