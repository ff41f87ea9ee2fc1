"""Event ingestion: idempotent storage, the outcome join, incremental statistics.

One signed batch is one transaction; it is acknowledged only after commit, so
an acknowledged event survives a crash, and a batch the edge resends is
harmless (events are idempotent by id, exposures by decision id).

* An exposure updates the statistics of its (experiment, feature path, arm)
  cell if it was a personalized decision (holdout, stale and consent
  decisions are kept for reporting but say nothing about the policy's arms).
* An outcome joins its exposure by decision id within the experiment's reward
  window: ``joined`` adds its reward to the exposure and its cell, ``late``
  and ``extra`` (a second conversion of a binary decision) are kept and
  counted, ``pending`` waits for an exposure that has not arrived yet and is
  joined when it does — orphans are counted, never silently dropped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, or_, select

from control_plane.experiments import ExperimentSpec
from control_plane.settings import REPLAY_MEMORY_S
from control_plane.storage import bulk
from control_plane.storage.schema import experiments, exposures, outcomes, seen_batches, stitches
from control_plane.storage.stats import Deltas
from control_plane.storage.store import Store
from core import DecisionToken, TokenError, feature_path, verify_token

__all__ = ["Cells", "IngestResult", "ingest", "ingest_into", "path_of", "remember_batches", "verified_tokens"]


@dataclass
class IngestResult:
    accepted: dict[str, int] = field(default_factory=lambda: {"exposure": 0, "outcome": 0, "stitch": 0})
    duplicates: int = 0
    joined: int = 0
    late: int = 0
    pending: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "joined": self.joined,
            "late": self.late,
            "pending": self.pending,
        }


def path_of(spec: ExperimentSpec, context: dict[str, str]) -> list[str]:
    """The exposure's cell: the experiment's features in order (absent ones as 'unknown')."""
    return list(feature_path(spec.features, context))


class _Paths:
    """Each exposure's cell as stored (JSON of its feature path), made once per distinct context:
    a group of thousands of events holds a few hundred contexts."""

    def __init__(self, specs: Mapping[str, ExperimentSpec]) -> None:
        self.specs = specs
        self.made: dict[tuple[str, tuple[Any, ...]], str] = {}

    def of(self, experiment: str, context: dict[str, Any]) -> str:
        spec = self.specs.get(experiment)
        if spec is None:
            return "[]"
        key = (experiment, tuple([context.get(name) for name in spec.features]))
        path = self.made.get(key)
        if path is None:
            path = self.made[key] = json.dumps(path_of(spec, context))
        return path


def _reward(spec: ExperimentSpec, value: float, already: float) -> float:
    if spec.reward.kind == "binary":
        return 1.0 if value > 0 and already == 0 else 0.0
    scaled = min(max(value / spec.reward.max_value, 0.0), 1.0)
    return min(scaled, 1.0 - already)  # an exposure is at most one success


class Cells:
    """Cell deltas and counter bumps gathered over a transaction, written last in a few statements.

    The deltas are appended (control_plane.storage.stats): no statistics row is read or locked, so
    concurrent writers (group commits, consumers) never wait on each other for them.
    """

    def __init__(self) -> None:
        self.deltas = Deltas()
        self.bumps: Counter[tuple[str, str]] = Counter()
        self.specs: dict[str, ExperimentSpec] = {}  # of the experiments with deltas (half-lives)
        # An event stamped after the batch arrived (a skewed clock) counts as arriving now: its mass
        # relative to a later hour would weigh up to 2^60 times one event when read before it.
        self.now_ms: int | None = None

    def add(self, experiment: str, path: str, arm: str, *, ts: int, n: float, r: float) -> None:
        half_life = self.specs[experiment].half_life_s
        if self.now_ms is not None:
            ts = min(ts, self.now_ms)
        self.deltas.add(experiment, path, arm, ts=ts, n=n, r=r, half_life_s=half_life)

    def bump(self, experiment: str, name: str) -> None:
        self.bumps[experiment, name] += 1

    def flush(self, store: Store, conn: Connection) -> None:
        self.deltas.append(conn)
        # Sorted, so concurrent writers take the counter rows in one order and cannot deadlock.
        for (experiment, name), by in sorted(self.bumps.items()):
            store.bump(conn, experiment, name, by)
        self.bumps.clear()


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


_CHUNK = 500  # ids per IN (...): well under SQLite's bound-parameter limit


def _join_outcomes(
    store: Store,
    conn: Connection,
    *,
    cells: Cells,
    specs: dict[str, ExperimentSpec],
    result: IngestResult,
    pending: list[Any],
) -> None:
    """Join outcomes to their exposures (those that exist), in time order, and write the results."""
    ids = list({o.decision_id for o in pending})
    shown: dict[str, dict[str, Any]] = {}
    for part in bulk.parts(conn, ids):
        for row in conn.execute(select(exposures).where(bulk.member(conn, exposures.c.decision_id, part))):
            shown[row.decision_id] = dict(row._mapping)
    updates: list[dict[str, Any]] = []
    for outcome in sorted(pending, key=lambda o: (o.ts_ms, o.event_id)):
        exposure = shown.get(outcome.decision_id)
        spec = specs.get(exposure["experiment"]) if exposure else None
        if exposure is None or spec is None:
            result.pending += 1
            continue
        if outcome.ts_ms - exposure["ts_ms"] > spec.reward.window_s * 1000:
            updates.append({"event_id": outcome.event_id, "status": "late", "credited": None, "cell": None})
            result.late += 1
            cells.bump(exposure["experiment"], "late_outcomes")
            continue
        reward = _reward(spec, outcome.value, exposure["reward"])
        status = "joined"
        if reward <= 0 and spec.reward.kind == "binary" and exposure["outcomes"] > 0:
            status = "extra"
            cells.bump(exposure["experiment"], "extra_outcomes")
        # What it credited, so a later token-credited outcome of the decision knows (binary: once).
        updates.append({"event_id": outcome.event_id, "status": status, "credited": reward, "cell": None})
        result.joined += 1
        exposure["reward"] += reward
        exposure["outcomes"] += 1
        exposure["touched"] = True
        if reward > 0 and exposure["reason"] == "personalized":
            cells.add(
                exposure["experiment"],
                exposure["path"],
                exposure["arm"],
                ts=exposure["ts_ms"],
                n=0.0,
                r=reward,
            )
    joined = [
        {"decision_id": decision_id, "reward": exposure["reward"], "outcomes": exposure["outcomes"]}
        for decision_id, exposure in sorted(shown.items())
        if exposure.get("touched")
    ]
    bulk.update_rows(conn, exposures, "decision_id", joined)
    bulk.update_rows(conn, outcomes, "event_id", updates)


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
        if row["propensity"] is not None or row["reason"] != "personalized" or spec is None:
            continue
        if spec.model != "contextual" or row["snapshot_version"] is None:
            continue
        snapshot = store.snapshot_at(conn, row["experiment"], row["snapshot_version"])
        index = snapshot.arm_index.get(row["arm"]) if snapshot is not None else None
        if snapshot is None or index is None:
            cells.bump(row["experiment"], "propensity_unknown")
            continue
        context = dict(zip(spec.features, json.loads(row["path"]), strict=True))
        row["propensity"] = float(store.propensities.get(snapshot, context)[index])


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
    by_type: dict[str, list[dict[str, Any]]] = {"exposure": [], "outcome": [], "stitch": []}
    for event in events:
        by_type[event["type"]].append(event)
    if signature is not None:
        remember_batches(store, conn, [signature], now_ms)
    specs = _spec_cache(store, conn, {e["experiment"] for e in events if "experiment" in e})
    if cells is None:
        cells = Cells()
    cells.specs.update(specs)
    cells.now_ms = now_ms

    rows: dict[str, dict[str, Any]] = {}
    paths = _Paths(specs)
    for event in by_type["exposure"]:
        rows.setdefault(
            event["decision_id"],
            {
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
            },
        )
    _fill_propensities(store, conn, specs, rows, cells)
    new_exposures = bulk.insert_new(conn, exposures, "decision_id", list(rows.values()))
    result.accepted["exposure"] = len(new_exposures)
    waiting = _waiting_for(conn, sorted(new_exposures)) if new_exposures else []
    result.duplicates += len(by_type["exposure"]) - len(new_exposures)
    for decision_id in sorted(new_exposures):
        row = rows[decision_id]
        if row["experiment"] not in specs:
            cells.bump(row["experiment"], "unknown_experiment")
        elif row["reason"] == "personalized":
            cells.add(row["experiment"], row["path"], row["arm"], ts=row["ts_ms"], n=1.0, r=0.0)

    outcome_rows: dict[str, dict[str, Any]] = {}
    for event in by_type["outcome"]:
        outcome_rows.setdefault(
            event["id"],
            {
                "event_id": event["id"],
                "decision_id": event["decision_id"],
                "experiment": event["experiment"],
                "value": float(event["value"]),
                "unit_hash": store.hash_unit(event.get("unit")),
                "ts_ms": event["ts"],
                "status": "pending",
            },
        )
    new_outcomes = bulk.insert_new(conn, outcomes, "event_id", list(outcome_rows.values()))
    result.accepted["outcome"] = len(new_outcomes)
    result.duplicates += len(by_type["outcome"]) - len(new_outcomes)
    # A token counts only for the stored row it came with: two events may share a client-chosen id.
    tokened = {
        i: tokens[i]
        for i in sorted(new_outcomes)
        if tokens
        and i in tokens
        and (tokens[i].decision_id, tokens[i].experiment)
        == (outcome_rows[i]["decision_id"], outcome_rows[i]["experiment"])
    }
    if tokened:
        _credit_from_tokens(conn, cells=cells, specs=specs, result=result, rows=outcome_rows, tokens=tokened)
    # Outcomes of this batch without a token, and older ones that were waiting for an exposure of
    # this batch (the token-credited ones were absorbed above).
    fresh = [
        _OutcomeRow(**{k: outcome_rows[i][k] for k in ("event_id", "decision_id", "value", "ts_ms")})
        for i in sorted(new_outcomes)
        if i not in tokened
    ]
    if fresh or waiting:
        _join_outcomes(store, conn, cells=cells, specs=specs, result=result, pending=[*fresh, *waiting])

    stitch_rows = {
        e["id"]: {
            "event_id": e["id"],
            "anonymous_hash": store.hash_unit(e["anonymous_id"]),
            "user_hash": store.hash_unit(e["user_id"]),
            "ts_ms": e["ts"],
        }
        # Earliest first: an anonymous id keeps its first user (a unique column skips the rest).
        for e in sorted(by_type["stitch"], key=lambda e: (e["ts"], e["id"]))
    }
    new_stitches = bulk.insert_new(conn, stitches, "event_id", list(stitch_rows.values()))
    result.accepted["stitch"] = len(new_stitches)
    result.duplicates += len(by_type["stitch"]) - len(new_stitches)
    if own_cells:
        cells.flush(store, conn)
    return result


def verified_tokens(secret: str | None, events: Iterable[dict[str, Any]]) -> dict[str, DecisionToken]:
    """Outcome event id -> the decision its token describes, for tokens that are ours and match.

    A token that does not verify (a rotated secret, a token of an older format without the
    decision's reason) leaves its outcome to the exposure join, as before tokens described cells.
    """
    out: dict[str, DecisionToken] = {}
    if not secret:
        return out
    for event in events:
        raw = event.get("token") if event.get("type") == "outcome" else None
        if raw is None:
            continue
        try:
            token = verify_token(secret, raw)
        except TokenError:
            continue
        if token.reason and (token.decision_id, token.experiment) == (
            event["decision_id"],
            event["experiment"],
        ):
            out[event["id"]] = token
    return out


def _credit_from_tokens(
    conn: Connection,
    *,
    cells: Cells,
    specs: dict[str, ExperimentSpec],
    result: IngestResult,
    rows: dict[str, dict[str, Any]],
    tokens: dict[str, DecisionToken],
) -> None:
    """Credit outcomes to the cells their tokens name: the window check is local, nothing waits.

    What each decision already received comes from its earlier credited outcomes (binary rewards
    count once per decision); the exposure, if stored, gets the reward too (evaluation reads it).
    """
    decisions = sorted({t.decision_id for t in tokens.values()})
    already: dict[str, float] = {}
    seen: Counter[str] = Counter()
    for part in bulk.parts(conn, decisions):
        for decision_id, credited in conn.execute(
            select(outcomes.c.decision_id, outcomes.c.credited).where(
                bulk.member(conn, outcomes.c.decision_id, part), outcomes.c.credited.is_not(None)
            )
        ):
            already[decision_id] = already.get(decision_id, 0.0) + credited
            seen[decision_id] += 1
        # Outcomes joined before migration 0005 carry no ``credited``; their exposure's reward holds it.
        for decision_id, reward, count in conn.execute(
            select(exposures.c.decision_id, exposures.c.reward, exposures.c.outcomes).where(
                bulk.member(conn, exposures.c.decision_id, part)
            )
        ):
            already[decision_id] = max(already.get(decision_id, 0.0), float(reward))
            seen[decision_id] = max(seen[decision_id], int(count))
    updates: list[dict[str, Any]] = []
    added_to: dict[str, list[Any]] = {}  # decision -> [reward, outcomes] for its exposure
    for event_id in sorted(tokens, key=lambda i: (rows[i]["ts_ms"], i)):
        token, row = tokens[event_id], rows[event_id]
        spec = specs.get(token.experiment)
        if spec is None:
            result.pending += 1  # an experiment this store does not know (yet): kept, not credited
            continue
        if row["ts_ms"] - token.ts_ms > spec.reward.window_s * 1000:
            updates.append({"event_id": event_id, "status": "late", "credited": None, "cell": None})
            result.late += 1
            cells.bump(token.experiment, "late_outcomes")
            continue
        prior = already.get(token.decision_id, 0.0)
        reward = _reward(spec, row["value"], prior)
        status = "joined"
        if reward <= 0 and spec.reward.kind == "binary" and seen[token.decision_id] > 0:
            status = "extra"
            cells.bump(token.experiment, "extra_outcomes")
        already[token.decision_id] = prior + reward
        seen[token.decision_id] += 1
        result.joined += 1
        cell = None
        if token.reason == "personalized":
            path = json.dumps(path_of(spec, token.cell))
            decided = min(token.ts_ms, cells.now_ms) if cells.now_ms is not None else token.ts_ms
            cell = json.dumps([path, token.arm, decided])
            if reward > 0:
                cells.add(token.experiment, path, token.arm, ts=decided, n=0.0, r=reward)
        updates.append({"event_id": event_id, "status": status, "credited": reward, "cell": cell})
        added = added_to.setdefault(token.decision_id, [0.0, 0])
        added[0] += reward
        added[1] += 1
    bulk.update_rows(conn, outcomes, "event_id", updates)
    bulk.update_rows(
        conn,
        exposures,
        "decision_id",
        [{"decision_id": d, "reward": r, "outcomes": n} for d, (r, n) in sorted(added_to.items())],
        add=("reward", "outcomes"),
    )


def _waiting_for(conn: Connection, decision_ids: list[str]) -> list[Any]:
    """What earlier outcomes left for these new exposures, in one query: the pending ones (returned,
    to be joined now), and the rewards already credited from tokens, which the exposures take
    (evaluation reads them there; the cells have them already)."""
    pending: list[Any] = []
    credited: dict[str, list[Any]] = {}
    for part in bulk.parts(conn, decision_ids):
        for row in conn.execute(
            select(
                outcomes.c.event_id,
                outcomes.c.decision_id,
                outcomes.c.value,
                outcomes.c.ts_ms,
                outcomes.c.status,
                outcomes.c.credited,
            ).where(
                bulk.member(conn, outcomes.c.decision_id, part),
                or_(outcomes.c.status == "pending", outcomes.c.credited.is_not(None)),
            )
        ):
            if row.credited is not None:
                sums = credited.setdefault(row.decision_id, [0.0, 0])
                sums[0] += row.credited
                sums[1] += 1
            elif row.status == "pending":
                pending.append(row)
    bulk.update_rows(
        conn,
        exposures,
        "decision_id",
        [{"decision_id": d, "reward": r, "outcomes": n} for d, (r, n) in sorted(credited.items())],
    )
    return pending


@dataclass(frozen=True, slots=True)
class _OutcomeRow:
    event_id: str
    decision_id: str
    value: float
    ts_ms: int
