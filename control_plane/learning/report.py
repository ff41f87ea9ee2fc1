"""An experiment's report: arms, holdout lift, segments, snapshot history, data health.

Everything comes from GROUP BY aggregates over the exposures table and from
bounded reads of the snapshots table, so a report costs O(segments x arms +
snapshots), never O(exposures).  Numbers are raw (not half-life decayed): the
report says what happened; the published snapshot says what the learner
currently believes.  See docs/report.md for every field, and report_types.py for
the records it comes in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, case, func, select

from control_plane.experiments import ExperimentSpec, Prior
from control_plane.learning.beta import posterior_summary, prob_best
from control_plane.learning.ranking import floor_progress
from control_plane.learning.report_types import (
    OPE,
    Alert,
    AllocationPoint,
    ArmRow,
    Decomposition,
    Effect,
    FeatureEffect,
    Group,
    Outcomes,
    Report,
    SegmentRow,
    SnapshotRow,
)
from control_plane.learning.slates import fit_position_model
from control_plane.storage.schema import exposures, snapshots
from control_plane.storage.store import Conflict, ExperimentRecord, Store
from core import quota

__all__ = ["MAX_HISTORY", "MAX_SEGMENTS", "MAX_SNAPSHOTS", "Report", "build_report"]

MAX_SEGMENTS = 100
MAX_SNAPSHOTS = 50
MAX_HISTORY = 200
Z95 = 1.959963984540054  # standard normal 97.5% quantile
DRAWS = 10_000  # Monte Carlo draws for credible intervals and P(best): error about 0.005
GROUPS = ("personalized", "holdout")
POSITION_WINDOW_MS = 30 * 86_400_000


@dataclass
class _Sums:
    """Sufficient statistics of one group of exposures."""

    exposures: int = 0
    reward: float = 0.0
    reward_sq: float = 0.0
    conversions: int = 0

    def add(self, other: _Sums) -> None:
        self.exposures += other.exposures
        self.reward += other.reward
        self.reward_sq += other.reward_sq
        self.conversions += other.conversions

    @property
    def rate(self) -> float | None:
        return self.reward / self.exposures if self.exposures else None

    def variance(self) -> float | None:
        """Sample variance of the per-exposure reward (binary or fractional)."""
        if self.exposures < 2:
            return None
        spread = self.reward_sq - self.reward * self.reward / self.exposures
        return max(spread, 0.0) / (self.exposures - 1)


def _fixed(value: float, digits: int = 6) -> float:
    return round(float(value), digits)


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else _fixed(value, digits)


def _aggregates(conn: Connection, key: str, by: Sequence[Any], *where: Any) -> dict[tuple[Any, ...], _Sums]:
    """Exposure sums per ``by`` group, personalized and holdout exposures only."""
    reward = exposures.c.reward
    query = (
        select(
            *by,
            func.count(),
            func.sum(reward),
            func.sum(reward * reward),
            func.sum(case((reward > 0, 1), else_=0)),
        )
        .where(exposures.c.experiment == key, exposures.c.reason.in_(GROUPS), *where)
        .group_by(*by)
    )
    out: dict[tuple[Any, ...], _Sums] = {}
    for row in conn.execute(query):
        n, total, squares, conversions = row[len(by) :]
        # PostgreSQL sums integers as NUMERIC: convert explicitly.
        out[tuple(row[: len(by)])] = _Sums(
            int(n), float(total or 0), float(squares or 0), int(conversions or 0)
        )
    return out


def _busiest(conn: Connection, key: str) -> list[tuple[str, int]]:
    """(segment, exposures of any reason) of the MAX_SEGMENTS busiest segments, ties by key."""
    segment_col = exposures.c.segment
    count = func.count().label("n")
    rows = conn.execute(
        select(segment_col, count)
        .where(exposures.c.experiment == key, segment_col.is_not(None))
        .group_by(segment_col)
        .order_by(count.desc(), segment_col)
        .limit(MAX_SEGMENTS)
    )
    return [(segment, int(n)) for segment, n in rows]


def _group(sums: _Sums) -> Group:
    return Group(sums.exposures, _fixed(sums.reward), _round(sums.rate))


def _decomposition(personalized: _Sums, holdout: _Sums) -> Decomposition:
    """Personalized vs holdout, with the lift's 95% normal-approximation interval."""
    rate_p, rate_h = personalized.rate, holdout.rate
    lift = None if rate_p is None or rate_h is None else rate_p - rate_h
    var_p, var_h = personalized.variance(), holdout.variance()
    lift_ci = None
    if lift is not None and var_p is not None and var_h is not None:
        half = Z95 * math.sqrt(var_p / personalized.exposures + var_h / holdout.exposures)
        lift_ci = (_fixed(lift - half), _fixed(lift + half))
    return Decomposition(
        personalized=_group(personalized),
        holdout=_group(holdout),
        lift=_round(lift),
        lift_ci=lift_ci,
        relative_lift=_round(lift / rate_h) if lift is not None and rate_h else None,
    )


def _split(sums: Mapping[tuple[Any, ...], _Sums]) -> tuple[_Sums, _Sums, dict[str, _Sums]]:
    """(personalized total, holdout total, personalized per arm) of rows keyed (..., reason, arm)."""
    personalized, holdout = _Sums(), _Sums()
    arms: dict[str, _Sums] = {}
    for (*_, reason, arm), value in sums.items():
        if reason == "personalized":
            personalized.add(value)
            arms.setdefault(arm, _Sums()).add(value)
        else:
            holdout.add(value)
    return personalized, holdout, arms


def _snapshot_rows(conn: Connection, key: str) -> list[dict[str, Any]]:
    """The newest MAX_HISTORY snapshots with their global allocation, newest first.

    The allocation has a column of its own: the summary it comes from grows with segments x arms
    (megabytes for big experiments).
    """
    query = (
        select(snapshots.c.version, snapshots.c.created_ms, snapshots.c.size, snapshots.c.global_allocation)
        .where(snapshots.c.experiment == key)
        .order_by(snapshots.c.version.desc())
        .limit(MAX_HISTORY)
    )
    return [
        {
            "version": int(version),
            "created_ms": int(created_ms),
            "size": int(size),
            # All of the global segment that reports read (see _allocation).
            "global": {"allocation": json.loads(allocation)} if allocation else None,
        }
        for version, created_ms, size, allocation in conn.execute(query)
    ]


def _latest_summary(conn: Connection, key: str, version: int | None) -> dict[str, Any]:
    """The latest snapshot's parsed summary (empty without a snapshot or summary)."""
    if version is None:
        return {}
    text = conn.execute(
        select(snapshots.c.summary).where(snapshots.c.experiment == key, snapshots.c.version == version)
    ).scalar_one_or_none()
    doc = json.loads(text) if text else {}
    return doc if isinstance(doc, dict) else {}


@dataclass(frozen=True, slots=True)
class _Reads:
    """What a report reads from the database, in one connection."""

    overall: dict[tuple[Any, ...], _Sums]  # keyed (reason, arm)
    busiest: list[tuple[str, int]]
    by_segment: dict[tuple[Any, ...], _Sums]  # keyed (segment, reason, arm)
    history: list[dict[str, Any]]  # as _snapshot_rows gives them, newest first
    latest: dict[str, Any]  # the newest snapshot's summary


def _read(store: Store, key: str) -> _Reads:
    segment_col, reason_col, arm_col = exposures.c.segment, exposures.c.reason, exposures.c.arm
    with store.engine.connect() as conn:
        if store.events is not None:  # the events are in ClickHouse (PERCH_EVENTS_URL)
            overall, busiest, by_segment = _clickhouse_reads(store, key)
        else:
            overall = _aggregates(conn, key, [reason_col, arm_col])
            busiest = _busiest(conn, key)
            keys = [segment for segment, _ in busiest]
            by_segment = (
                _aggregates(conn, key, [segment_col, reason_col, arm_col], segment_col.in_(keys))
                if keys
                else {}
            )
        history = _snapshot_rows(conn, key)
        latest = _latest_summary(conn, key, history[0]["version"] if history else None)
    return _Reads(overall, busiest, by_segment, history, latest)


def _clickhouse_reads(
    store: Store, key: str
) -> tuple[dict[tuple[Any, ...], _Sums], list[tuple[str, int]], dict[tuple[Any, ...], _Sums]]:
    assert store.events is not None
    events = store.events
    overall = {k: _Sums(*v) for k, v in events.exposure_sums(key, ["reason", "arm"]).items()}
    busiest = events.busiest_segments(key, MAX_SEGMENTS)
    keys = [segment for segment, _ in busiest]
    by_segment = (
        {k: _Sums(*v) for k, v in events.exposure_sums(key, ["segment", "reason", "arm"], keys).items()}
        if keys
        else {}
    )
    return overall, busiest, by_segment


def _allocation(segment: Mapping[str, Any] | None) -> dict[str, float] | None:
    if not segment or not isinstance(segment.get("allocation"), Mapping):
        return None
    return {arm: float(p) for arm, p in segment["allocation"].items()}


def _arm_tables(
    arm_keys: Sequence[str],
    rows: Sequence[Mapping[str, _Sums]],
    allocations: Sequence[Mapping[str, float] | None],
    prior: Prior,
) -> list[tuple[ArmRow, ...]]:
    """Per row of arm sums: every arm's counts, Beta posterior, interval, P(best) and allocation.

    One Monte Carlo over all rows at once: the global table and every segment's."""
    n = np.array([[row.get(a, _Sums()).exposures for a in arm_keys] for row in rows], dtype=np.float64)
    r = np.array([[row.get(a, _Sums()).reward for a in arm_keys] for row in rows], dtype=np.float64)
    r = np.minimum(r, n)  # rewards are capped at one success per exposure, up to float rounding
    alpha = prior.alpha + r
    beta = prior.beta + (n - r)
    summary = posterior_summary(alpha, beta, draws=DRAWS)
    best = prob_best(alpha, beta, draws=DRAWS)
    return [
        tuple(
            ArmRow(
                arm=arm,
                exposures=(sums := row.get(arm, _Sums())).exposures,
                conversions=sums.conversions,
                reward=_fixed(sums.reward),
                rate=_round(sums.rate),
                posterior_mean=_fixed(summary.mean[i, j]),
                ci_low=_fixed(summary.low[i, j], 4),
                ci_high=_fixed(summary.high[i, j], 4),
                prob_best=_fixed(best[i, j], 4),
                allocation=None if allocation is None else _round(allocation.get(arm)),
            )
            for j, arm in enumerate(arm_keys)
        )
        for i, (row, allocation) in enumerate(zip(rows, allocations, strict=True))
    ]


def _tables(
    reads: _Reads, arm_keys: Sequence[str], prior: Prior
) -> tuple[Decomposition, tuple[ArmRow, ...], tuple[SegmentRow, ...]]:
    """The global decomposition and arm table, and the segments' rows."""
    personalized, holdout, arms = _split(reads.overall)
    grouped: dict[str, dict[tuple[Any, ...], _Sums]] = {segment: {} for segment, _ in reads.busiest}
    for group, sums in reads.by_segment.items():
        grouped[group[0]][group] = sums
    per_segment = [_split(grouped[segment]) for segment, _ in reads.busiest]
    latest_segments = {
        segment["key"]: segment
        for segment in reads.latest.get("segments") or []
        if isinstance(segment, Mapping)
    }
    summaries = [latest_segments.get(segment) for segment, _ in reads.busiest]
    tables = _arm_tables(
        arm_keys,
        [arms, *(split[2] for split in per_segment)],
        [_allocation(reads.history[0]["global"]) if reads.history else None, *map(_allocation, summaries)],
        prior,
    )
    segments = tuple(
        SegmentRow(
            segment=segment,
            features=dict(summary.get("features") or {}) if summary else None,
            exposures=total,
            decomposition=_decomposition(seg_p, seg_h),
            arms=table,
        )
        for (segment, total), (seg_p, seg_h, _), summary, table in zip(
            reads.busiest, per_segment, summaries, tables[1:], strict=True
        )
    )
    return _decomposition(personalized, holdout), tables[0], segments


def _allocation_history(history: Sequence[Mapping[str, Any]]) -> tuple[AllocationPoint, ...]:
    """The global allocation of every snapshot that has one, oldest first."""
    return tuple(
        AllocationPoint(row["version"], row["created_ms"], {arm: _fixed(p) for arm, p in allocation.items()})
        for row in reversed(history)
        if (allocation := _allocation(row["global"])) is not None
    )


def _effects(latest: Mapping[str, Any]) -> tuple[FeatureEffect, ...]:
    """A contextual snapshot's feature effects, as publish.feature_effects wrote them."""
    return tuple(
        FeatureEffect(
            str(row["feature"]),
            {
                arm: Effect(float(c["effect"]), float(c["low"]), float(c["high"]))
                for arm, c in row["arms"].items()
            },
        )
        for row in latest.get("effects") or []
    )


def _is_evaluation(details: Any) -> bool:
    return isinstance(details, Mapping) and (
        isinstance(details.get("candidate"), Mapping) or isinstance(details.get("ope"), Mapping)
    )


def _ope(alerts: Iterable[Alert], latest: Mapping[str, Any], snapshot: SnapshotRow | None) -> OPE | None:
    """The newest promotion-gate evaluation: of a held-back snapshot (an alert whose details
    hold one) or of the published one (its summary's ``gate``), whichever came later."""
    found = next(
        (
            OPE(a.at_ms, "alert", a.kind, a.message, None, a.details.get("passed"), dict(a.details))
            for a in alerts  # newest first
            if _is_evaluation(a.details)
        ),
        None,
    )
    gate: Any = latest.get("gate")
    if (
        snapshot is None
        or not _is_evaluation(gate)
        or (found is not None and snapshot.created_ms <= found.at_ms)
    ):
        return found
    return OPE(
        snapshot.created_ms, "snapshot", "published", None, snapshot.version, gate.get("passed"), dict(gate)
    )


def build_report(store: Store, record: ExperimentRecord, now_ms: int) -> Report:
    """The report of one experiment (see docs/report.md; ``to_dict()`` for its JSON)."""
    if store.events_elsewhere:  # events in a chDB another process holds: nothing here to report
        raise Conflict(f"no report from this process: {store.events_elsewhere}")
    spec = record.spec
    key = spec.key
    reads = _read(store, key)
    holdout, arms, segments = _tables(reads, [arm.key for arm in spec.arms], spec.prior)
    snapshots = tuple(
        SnapshotRow(int(r["version"]), int(r["created_ms"]), int(r["size"])) for r in reads.history
    )
    statuses = store.outcome_statuses(key)
    alerts = tuple(Alert(**alert) for alert in store.alerts(key))
    return Report(
        experiment=key,
        version=record.version,
        generated_ms=now_ms,
        reward_kind=spec.reward.kind,
        model=spec.model,
        # Contextual experiments: each arm's weight per feature column, with 95% intervals.
        feature_effects=_effects(reads.latest),
        arms=arms,
        holdout=holdout,
        segments=segments,
        snapshots=snapshots[:MAX_SNAPSHOTS],
        allocation_history=_allocation_history(reads.history),
        outcomes=Outcomes(*(int(statuses.get(s, 0)) for s in ("joined", "late", "pending", "extra"))),
        counters=store.counters(key),
        alerts=alerts,
        ope=_ope(alerts, reads.latest, snapshots[0] if snapshots else None),
        ranking=_ranking(store, spec, now_ms),
    )


def _ranking(store: Store, spec: ExperimentSpec, now_ms: int) -> dict[str, Any] | None:
    """A ranked experiment's list, floors and position bias (the last 30 days of positions)."""
    if spec.ranking is None:
        return None
    progress = floor_progress(spec, now_ms, store.exposures_per_segment)
    model = fit_position_model(
        store.position_clicks(spec.key, now_ms - POSITION_WINDOW_MS), spec.ranking.slots
    )
    return {
        "slots": spec.ranking.slots,
        "diversity": spec.ranking.diversity,
        "quota": quota(spec.ranking.diversity, min(spec.ranking.slots, len(spec.arms))),
        "groups": dict(spec.ranking.groups),
        "floors": None if progress is None else progress.to_dict(spec),
        "position_model": None if model is None else model.to_dict(),
    }
