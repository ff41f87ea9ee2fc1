"""Outcomes still on their way: count a young exposure only as far as its outcome can have arrived.

Ingestion adds an exposure to its cell at once and its reward when the outcome
comes, so a cell holds every recent exposure as if it had failed.  With
conversions minutes to hours after the exposure and a publish every 30 s, the
learner would see the arms shown most recently -- the ones it currently favours --
as worse than they are, and keep switching away from its best arms.

The correction: an exposure of age ``t`` inside the reward window has, in
expectation, produced the share ``F(t)`` of its eventual reward, where ``F`` is
the distribution of outcome delays.  So it counts as ``F(t)`` of an exposure,
and its reward as observed: ``E[reward] / E[exposures]`` is then the true rate,
now rather than a window later.  ``F`` is the empirical distribution of the
delays of joined outcomes, measured on exposures whose window has closed (their
delays are complete); with too few of those, on all joined outcomes (short
delays over-represented, so the correction errs small), and with too few even
then, no correction.

Young exposures are read grouped by (path, arm, age bucket): the cost grows with
cells x buckets, not with events.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from control_plane.experiments import ExperimentSpec
from control_plane.storage.schema import exposures, outcomes
from control_plane.storage.stats import CellStats, decay
from control_plane.storage.store import Store

__all__ = ["Maturity", "delay_cdf", "mature_cells", "maturity", "recent_cells", "young_exposures"]

MIN_DELAYS = 30
MAX_DELAYS = 5_000
BUCKETS = 48  # age buckets across the reward window

Cells = dict[tuple[str, ...], dict[str, CellStats]]


@dataclass(frozen=True, slots=True)
class Maturity:
    """What the correction did, for logs and the report, and the delay horizon it measured."""

    delays: int  # delays the distribution was measured on
    source: str  # "matured", "all joined" or "none"
    discounted: float  # exposures (decayed) not yet counted
    # Age (ms) by which 95 % of outcomes have arrived; None when unknown. The promotion gate
    # judges snapshots only on exposures at least this old, whose rewards are (nearly) all in.
    horizon_ms: int | None = None


def delay_cdf(
    store: Store, spec: ExperimentSpec, now_ms: int
) -> tuple[Callable[[float], float] | None, int, str]:
    """The empirical CDF of outcome delays (ms), the number of delays behind it, and their source."""
    window_ms = spec.reward.window_s * 1000
    if store.events is not None:  # the events are in ClickHouse (PERCH_EVENTS_URL)
        for source, by in (("matured", now_ms - window_ms), ("all joined", None)):
            found = sorted(max(0, d) for d in store.events.delays(spec.key, by, MAX_DELAYS))
            if len(found) >= MIN_DELAYS:
                return _Empirical(found), len(found), source
        return None, 0, "none"
    base = (
        select((outcomes.c.ts_ms - exposures.c.ts_ms).label("delay"))
        .join(exposures, exposures.c.decision_id == outcomes.c.decision_id)
        .where(exposures.c.experiment == spec.key, outcomes.c.status == "joined")
        .order_by(exposures.c.ts_ms.desc())
        .limit(MAX_DELAYS)
    )
    with store.engine.connect() as conn:
        for source, query in (
            ("matured", base.where(exposures.c.ts_ms <= now_ms - window_ms)),
            ("all joined", base),
        ):
            delays = sorted(max(0, int(d)) for d in conn.execute(query).scalars())
            if len(delays) >= MIN_DELAYS:
                return _Empirical(delays), len(delays), source
    return None, 0, "none"


class _Empirical:
    """The empirical CDF of sorted delays (ms), callable, with its 95th percentile and maximum."""

    def __init__(self, delays: list[int]) -> None:
        self.delays = delays
        self.horizon_ms = delays[min(len(delays) - 1, math.ceil(0.95 * len(delays)) - 1)]
        self.max_ms = delays[-1]

    def __call__(self, t: float) -> float:
        return bisect_right(self.delays, t) / len(self.delays)


def young_exposures(
    store: Store,
    spec: ExperimentSpec,
    now_ms: int,
    support_ms: int | None = None,
    since_ms: int | None = None,
) -> dict[tuple[tuple[str, ...], str], list[tuple[float, int]]]:
    """Personalized exposures younger than ``support_ms`` (default: the reward window), and not
    older than ``since_ms`` if given, as (age ms at the middle of its bucket, count) per cell.

    Past the longest delay seen, ``F`` is 1: only exposures younger than that need reading, in
    buckets of 1/48 of it, so the ages are resolved on the delays' own scale (milliseconds for
    instant beacons, minutes for conversions) and the query reads the last few delays' worth
    of exposures, not a whole reward window.
    """
    window_ms = spec.reward.window_s * 1000
    span = max(1, min(window_ms, support_ms if support_ms is not None else window_ms))
    width = max(1, span // BUCKETS)
    bucket = (exposures.c.ts_ms // width).label("bucket")
    query = (
        select(exposures.c.path, exposures.c.arm, bucket, func.count().label("n"))
        .where(
            exposures.c.experiment == spec.key,
            exposures.c.reason == "personalized",
            exposures.c.ts_ms > now_ms - span,
        )
        .group_by(exposures.c.path, exposures.c.arm, bucket)
    )
    if since_ms is not None:
        query = query.where(exposures.c.ts_ms >= since_ms)
    out: dict[tuple[tuple[str, ...], str], list[tuple[float, int]]] = {}
    with store.engine.connect() as conn:
        rows = (
            store.events.young(spec.key, now_ms - span, width, since_ms)
            if store.events is not None
            else conn.execute(query)
        )
        for path, arm, index, count in rows:
            try:
                key = tuple(json.loads(path))
            except ValueError:
                continue  # the learner skips and counts such cells itself
            middle = min((int(index) + 0.5) * width, float(now_ms))
            out.setdefault((key, arm), []).append((max(0.0, now_ms - middle), int(count)))
    return out


def _discounts(
    young: Mapping[tuple[tuple[str, ...], str], list[tuple[float, int]]],
    cdf: Callable[[float], float],
    half_life_s: float | None,
) -> dict[tuple[tuple[str, ...], str], float]:
    """Per cell: how many (decayed) young exposures are not yet counted, ``sum (1 - F(age))``."""
    out = {}
    for key, ages in young.items():
        missing = 0.0
        for age, count in ages:
            missing += count * decay(1.0, 0, int(age), half_life_s) * (1.0 - cdf(age))
        out[key] = missing
    return out


def mature_cells(
    cells: Mapping[tuple[str, ...], Mapping[str, CellStats]],
    young: Mapping[tuple[tuple[str, ...], str], list[tuple[float, int]]],
    cdf: Callable[[float], float],
    half_life_s: float | None,
) -> tuple[Cells, float]:
    """``cells`` with each young exposure counted as ``F(age)`` of one; and how much was left out."""
    return _apply(cells, _discounts(young, cdf, half_life_s))


def _apply(
    cells: Mapping[tuple[str, ...], Mapping[str, CellStats]],
    discounts: Mapping[tuple[tuple[str, ...], str], float],
) -> tuple[Cells, float]:
    out: Cells = {path: dict(by_arm) for path, by_arm in cells.items()}
    left_out = 0.0
    for (path, arm), missing in discounts.items():
        cell = out.get(path, {}).get(arm)
        if cell is None:
            continue
        exposures_now = max(cell.exposures - missing, min(cell.reward, cell.exposures))
        left_out += cell.exposures - exposures_now
        out[path][arm] = CellStats(exposures_now, min(cell.reward, exposures_now))
    return out, left_out


def recent_cells(store: Store, spec: ExperimentSpec, count: int) -> tuple[Cells, int | None]:
    """The newest ``count`` personalized exposures as cells (raw counts and rewards), and the
    time of the oldest of them (None when there are fewer than ``count``: then nothing).

    The contextual learner fits everything older first and then updates with these, so that an
    arm whose visitors changed can follow them (``laplace.follow``). Counting by
    exposures, not by time, makes "recent" mean as much evidence on a quiet site as on a busy one.
    :func:`maturity` then discounts their young exposures as it does the totals'.
    """
    if count <= 0:
        return {}, None
    if store.events is not None:  # the events are in ClickHouse (PERCH_EVENTS_URL)
        oldest, held = store.events.recent(spec.key, count)
        return ({}, None) if oldest is None else (_recent_cells(held), oldest)
    with store.engine.connect() as conn:
        cutoff = conn.execute(
            select(exposures.c.ts_ms)
            .where(exposures.c.experiment == spec.key, exposures.c.reason == "personalized")
            .order_by(exposures.c.ts_ms.desc())
            .offset(count - 1)
            .limit(1)
        ).scalar()
        if cutoff is None:
            return {}, None  # fewer than ``count`` in all: nothing is older, nothing to update
        rows = conn.execute(
            select(exposures.c.path, exposures.c.arm, func.count(), func.sum(exposures.c.reward))
            .where(
                exposures.c.experiment == spec.key,
                exposures.c.reason == "personalized",
                exposures.c.ts_ms >= cutoff,
            )
            .group_by(exposures.c.path, exposures.c.arm)
        ).all()
    return _recent_cells(rows), int(cutoff)


def _recent_cells(rows: Iterable[Any]) -> Cells:
    out: Cells = {}
    for path, arm, n, r in sorted(rows, key=lambda row: (row[0], row[1])):
        try:
            key = tuple(json.loads(path))
        except ValueError:
            continue
        out.setdefault(key, {})[arm] = CellStats(float(n), min(float(r or 0.0), float(n)))
    return out


def maturity(
    store: Store, spec: ExperimentSpec, cells: Cells, now_ms: int, recent: int = 0
) -> tuple[Cells, Cells, Maturity]:
    """The learner's cells with outcomes still to come accounted for (see the module docstring),
    and the newest ``recent`` exposures' share of them (:func:`recent_cells`), weighted alike."""
    cdf, count, source = delay_cdf(store, spec, now_ms)
    newest, since = recent_cells(store, spec, recent)
    if cdf is None:
        return cells, newest, Maturity(0, "none", 0.0)
    support = cdf.max_ms + 1 if isinstance(cdf, _Empirical) else None
    discounts = _discounts(young_exposures(store, spec, now_ms, support), cdf, spec.half_life_s)
    corrected, left_out = _apply(cells, discounts)
    if newest:
        # Only the young exposures among the newest: when outcomes take longer than the newest
        # exposures span, the totals' discounts would take away more than these cells hold, and
        # the newest data would look better than they are (measured: a false drift and calibration
        # alert in a static world, benchmarks/bench_learning.py).
        within = young_exposures(store, spec, now_ms, support, since_ms=since)
        newest, _ = _apply(newest, _discounts(within, cdf, spec.half_life_s))
    horizon = cdf.horizon_ms if isinstance(cdf, _Empirical) else None
    return corrected, newest, Maturity(count, source, left_out if math.isfinite(left_out) else 0.0, horizon)
