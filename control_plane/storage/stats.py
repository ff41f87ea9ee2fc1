"""The learner's sufficient statistics: one owner for how they are written, read, decayed and erased.

Per (experiment, feature path, arm) cell the learner needs exposures and reward, raw and
decayed with the experiment's half-life. They live in two tables:

* ``stat_deltas``, append-only: every ingest commit adds one row per (cell, hour) it touched,
  with the raw sums and the decayed masses *relative to the hour's start*
  (``sum n * 2^((ts - hour) / half_life)``). Appending takes no row lock, so ingest commits of
  several consumers never wait on each other, and a redelivered batch adds nothing because its
  events are already stored (the rows are appended in the same transaction as the events).
* ``stats``, the base: sums decayed to the row's ``ref_ms``. Only :func:`rollup` writes it,
  under the experiment's publish lock, folding the deltas it deletes in the same transaction.

A cell's value at time ``now`` is ``sum decay(mass_i, ref_i, now)`` over its base row and its
delta rows: exact whatever the order the events arrived in, because a mass relative to a fixed
time scales the same way for every event. Erasure appends negative deltas of exactly what was
added (:func:`subtract`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, literal, select, union_all

from control_plane.storage import bulk
from control_plane.storage.schema import counters, exposures, outcomes, stat_deltas, stats

__all__ = [
    "HOUR_MS",
    "CellStats",
    "Cells",
    "Deltas",
    "Totals",
    "cells",
    "data_mark",
    "decay",
    "recompute",
    "rollup",
    "subtract",
    "totals",
]

HOUR_MS = 3_600_000
_FOLDED = "folded_through"  # counters: the highest delta id a rollup folded into ``stats``


@dataclass(frozen=True, slots=True)
class CellStats:
    """Decayed sums for one (full context path, arm) as of the learning time.

    ``reward`` counts (fractional) successes, so it lies in [0, exposures].
    """

    exposures: float
    reward: float

    def __post_init__(self) -> None:
        n, r = self.exposures, self.reward
        if not (math.isfinite(n) and math.isfinite(r)) or n < 0.0 or r < 0.0:
            raise ValueError(f"cell stats exposures={n!r}, reward={r!r}: must be finite and >= 0")
        # Decayed sums are rounded independently, so a reward that exceeds
        # its exposures by rounding error is not a caller's bug.
        if r > n * (1.0 + 1e-9) + 1e-12:
            raise ValueError(f"cell stats reward={r!r} exceeds exposures={n!r}")


Cells = Mapping[tuple[str, ...], Mapping[str, CellStats]]


def decay(value: float, from_ms: int, to_ms: int, half_life_s: float | None) -> float:
    """``value`` observed at ``from_ms``, as it weighs at ``to_ms``."""
    if not half_life_s or to_ms <= from_ms:
        return value
    return value * math.pow(2.0, -(to_ms - from_ms) / (half_life_s * 1000.0))


def _weight(ts_ms: int, hour_ms: int, half_life_s: float | None) -> float:
    """What one event at ``ts_ms`` weighs at the start of its hour (>= 1: the hour grows towards it).

    Half-lives are at least 60 s, so the factor stays below 2^60 and exact enough in a double.
    """
    if not half_life_s:
        return 1.0
    return math.pow(2.0, (ts_ms - hour_ms) / (half_life_s * 1000.0))


class Deltas:
    """Cell deltas gathered over one transaction, appended as one row per (cell, hour)."""

    def __init__(self) -> None:
        # (experiment, path, arm, hour) -> [n, r, decayed n, decayed r]
        self.sums: dict[tuple[str, str, str, int], list[float]] = {}

    def add(
        self, experiment: str, path: str, arm: str, *, ts: int, n: float, r: float, half_life_s: float | None
    ) -> None:
        hour = ts - ts % HOUR_MS
        w = _weight(ts, hour, half_life_s)
        row = self.sums.get((experiment, path, arm, hour))
        if row is None:
            self.sums[experiment, path, arm, hour] = [n, r, n * w, r * w]
        else:
            row[0] += n
            row[1] += r
            row[2] += n * w
            row[3] += r * w

    def __len__(self) -> int:
        return len(self.sums)

    def experiments(self) -> set[str]:
        return {key[0] for key in self.sums}

    def append(self, conn: Connection) -> None:
        bulk.insert_rows(
            conn,
            stat_deltas,
            [
                {
                    "experiment": e,
                    "path": p,
                    "arm": a,
                    "hour_ms": h,
                    "exposures": v[0],
                    "reward": v[1],
                    "decayed_exposures": v[2],
                    "decayed_reward": v[3],
                }
                for (e, p, a, h), v in self.sums.items()
            ],
        )
        self.sums = {}


_CellDict = dict[tuple[str, ...], dict[str, CellStats]]


def _masses(experiment: str, *, decayed: bool) -> Any:
    """One statement for base and deltas, so a rollup committing meanwhile is seen wholly or not at
    all: (path, arm, reference time, exposures, reward), decayed masses or raw sums."""
    n, r = ("decayed_exposures", "decayed_reward") if decayed else ("exposures", "reward")
    base = select(stats.c.path, stats.c.arm, stats.c.ref_ms, stats.c[n], stats.c[r]).where(
        stats.c.experiment == experiment
    )
    appended = (
        select(
            stat_deltas.c.path,
            stat_deltas.c.arm,
            stat_deltas.c.hour_ms,
            func.sum(stat_deltas.c[n]),
            func.sum(stat_deltas.c[r]),
        )
        .where(stat_deltas.c.experiment == experiment)
        .group_by(stat_deltas.c.path, stat_deltas.c.arm, stat_deltas.c.hour_ms)
    )
    return union_all(base, appended)


def cells(conn: Connection, experiment: str, half_life_s: float | None, now_ms: int) -> _CellDict:
    """The learner's input: every (path, arm) cell, decayed to ``now_ms``; O(cells x hours unrolled).

    The decay is inlined and each path's JSON parsed once: at 10^5 cells this read is a tenth of a
    learning cycle.
    """
    half_life_ms = half_life_s * 1000.0 if half_life_s else 0.0
    by_text: dict[str, dict[str, tuple[float, float]]] = {}
    for path, arm, ref, mass_n, mass_r in conn.execute(_masses(experiment, decayed=True)):
        factor = 2.0 ** ((ref - now_ms) / half_life_ms) if half_life_ms and now_ms > ref else 1.0
        n, r = mass_n * factor, mass_r * factor
        arms = by_text.get(path)
        if arms is None:
            arms = by_text[path] = {}
        seen = arms.get(arm)
        arms[arm] = (n, r) if seen is None else (seen[0] + n, seen[1] + r)
    out: _CellDict = {}
    for text, by_arm in by_text.items():
        target = out.setdefault(tuple(json.loads(text)), {})
        for arm, (exposed, reward) in by_arm.items():
            # Erasure's negative deltas may leave rounding dust below zero.
            kept = exposed if exposed > 0.0 else 0.0
            target[arm] = CellStats(kept, min(reward if reward > 0.0 else 0.0, kept))
    return out


@dataclass(frozen=True, slots=True)
class Totals:
    """A cell's raw sums (no decay): what a recomputation from the raw rows must reproduce."""

    exposures: float
    reward: float


def totals(conn: Connection, experiment: str) -> dict[tuple[str, str], Totals]:
    """Raw (undecayed) sums per (path JSON, arm), base plus deltas."""
    out: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for path, arm, _ref, n, r in conn.execute(_masses(experiment, decayed=False)):
        out[path, arm][0] += n
        out[path, arm][1] += r
    return {key: Totals(n, r) for key, (n, r) in out.items()}


def data_mark(conn: Connection, experiment: str) -> int:
    """Grows whenever the experiment's statistics change (the newest delta id ever appended).

    The publisher's digest: unchanged statistics are not relearnt. A rollup keeps it (it records
    the highest id it folded).
    """
    newest = conn.execute(
        select(func.max(stat_deltas.c.id)).where(stat_deltas.c.experiment == experiment)
    ).scalar()
    folded = conn.execute(
        select(counters.c.value).where(counters.c.experiment == experiment, counters.c.name == _FOLDED)
    ).scalar()
    return max(int(newest or 0), int(folded or 0))


_Delta = tuple[int, float, float, float, float]  # hour_ms, n, r, decayed n, decayed r


def rollup(conn: Connection, experiment: str, half_life_s: float | None, *, upsert: Any) -> int:
    """Fold the experiment's deltas into ``stats``; how many delta rows were folded.

    Run inside one transaction under the experiment's publish lock (the only writer of its
    ``stats`` rows). The rows folded are exactly the rows deleted (``DELETE ... RETURNING``): a
    delta committed after the statement started stays for the next rollup, never lost or twice.
    ``upsert(table)`` is the store's dialect insert.
    """
    watermark = conn.execute(
        select(func.max(stat_deltas.c.id)).where(stat_deltas.c.experiment == experiment)
    ).scalar()
    if watermark is None:
        return 0
    gone = conn.execute(
        stat_deltas.delete()
        .where(stat_deltas.c.experiment == experiment, stat_deltas.c.id <= watermark)
        .returning(
            stat_deltas.c.path,
            stat_deltas.c.arm,
            stat_deltas.c.hour_ms,
            stat_deltas.c.exposures,
            stat_deltas.c.reward,
            stat_deltas.c.decayed_exposures,
            stat_deltas.c.decayed_reward,
        )
    ).all()
    folded: dict[tuple[str, str], list[_Delta]] = defaultdict(list)
    for path, arm, hour, n, r, dn, dr in gone:
        folded[path, arm].append((hour, n, r, dn, dr))
    base = {
        (row.path, row.arm): row
        for row in conn.execute(select(stats).where(stats.c.experiment == experiment))
        if (row.path, row.arm) in folded
    }
    rows = [
        {
            "experiment": experiment,
            "path": path,
            "arm": arm,
            **_fold(base.get((path, arm)), items, half_life_s),
        }
        for (path, arm), items in folded.items()
    ]
    stmt = upsert(stats)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["experiment", "path", "arm"],
            set_={
                name: stmt.excluded[name]
                for name in ("exposures", "reward", "decayed_exposures", "decayed_reward", "ref_ms")
            },
        ),
        rows,
    )
    _record_folded(conn, experiment, int(watermark), upsert=upsert)
    return len(gone)


def _fold(
    old: Any, items: list[tuple[int, float, float, float, float]], half_life_s: float | None
) -> dict[str, Any]:
    """A cell's base row (``old``, or None) plus its deltas ``(hour, n, r, dn, dr)``, as a new base row."""
    ref = max([old.ref_ms if old else 0, *(hour for hour, *_ in items)])
    n = old.exposures if old else 0.0
    r = old.reward if old else 0.0
    dn = decay(old.decayed_exposures, old.ref_ms, ref, half_life_s) if old else 0.0
    dr = decay(old.decayed_reward, old.ref_ms, ref, half_life_s) if old else 0.0
    for hour, add_n, add_r, add_dn, add_dr in items:
        n, r = n + add_n, r + add_r
        dn += decay(add_dn, hour, ref, half_life_s)
        dr += decay(add_dr, hour, ref, half_life_s)
    return {"exposures": n, "reward": r, "decayed_exposures": dn, "decayed_reward": dr, "ref_ms": ref}


def _record_folded(conn: Connection, experiment: str, watermark: int, *, upsert: Any) -> None:
    stmt = upsert(counters).values(experiment=experiment, name=_FOLDED, value=watermark)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["experiment", "name"],
            set_={"value": func.max(counters.c.value, literal(watermark))}
            if conn.dialect.name == "sqlite"
            else {"value": func.greatest(counters.c.value, literal(watermark))},
        )
    )


def subtract(
    conn: Connection,
    items: Iterable[tuple[str, str, str, int, float, float]],
    half_lives: Mapping[str, float | None],
) -> set[str]:
    """Take ``(experiment, path, arm, ts, n, r)`` contributions back out; the experiments touched.

    Appended as negative deltas at the hour the contribution was added, so the decayed masses
    cancel exactly, whatever was rolled up since.
    """
    deltas = Deltas()
    for experiment, path, arm, ts, n, r in items:
        if experiment in half_lives:
            deltas.add(experiment, path, arm, ts=ts, n=-n, r=-r, half_life_s=half_lives[experiment])
    touched = deltas.experiments()
    deltas.append(conn)
    return touched


def recompute(conn: Connection, experiment: str) -> dict[tuple[str, str], Totals]:
    """Raw sums per (path JSON, arm) straight from the stored events, for checks and repairs.

    Personalized exposures count; each counts the rewards credited to it. An outcome credited from
    its decision token before (or without) its exposure counts on its own cell.
    """
    out: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    rows = conn.execute(
        select(exposures.c.path, exposures.c.arm, func.count(), func.sum(exposures.c.reward))
        .where(exposures.c.experiment == experiment, exposures.c.reason == "personalized")
        .group_by(exposures.c.path, exposures.c.arm)
    )
    for path, arm, n, r in rows:
        out[path, arm][0] += float(n)
        out[path, arm][1] += float(r or 0.0)
    shown = select(exposures.c.decision_id).where(exposures.c.decision_id == outcomes.c.decision_id)
    orphans = conn.execute(
        select(outcomes.c.cell, outcomes.c.credited).where(
            outcomes.c.experiment == experiment,
            outcomes.c.cell.is_not(None),
            outcomes.c.credited > 0,
            ~shown.exists(),
        )
    )
    for cell, credited in orphans:
        path, arm, _ts = json.loads(cell)
        out[path, arm][1] += float(credited)
    return {key: Totals(n, r) for key, (n, r) in out.items() if n or r}
