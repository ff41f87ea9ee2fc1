"""What the learner adds to a ranked experiment's snapshot: exposure floors and position propensities.

* **Floors.** ``min_exposures`` per item per period: from what each item was shown so far this
  period and the requests expected in the rest of it (the last full period's pace), the learner
  sets each item's ``forced`` probability, the chance the edge places it in a list whatever its
  score, to just what closes the gap on top of how often the item is shown anyway:
  ``p = (needed - q R) / ((1 - q) R)``, clipped to [0, 1], with ``needed`` the exposures still
  missing, ``R`` the requests expected and ``q`` the item's own inclusion rate without forcing.
  Floors are per item over the whole experiment (the same row in every segment).
* **Per-position propensities** (segments snapshots): ``P(item at position | segment, primary
  group)`` for the edge's procedure (core.ranking), by Monte Carlo, vectorised over draws. The
  distribution, not the edge's generator, defines a propensity, so numpy's Beta draws serve.
  A table past ``MAX_POSITION_CELLS`` is not shipped (the exposures then carry none).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from control_plane.experiments import ExperimentSpec
from core import Ranking, Snapshot, quota

__all__ = ["FloorProgress", "floor_progress", "forced_probabilities", "position_table", "with_ranking"]

# Monte Carlo draws per (segment, primary group), fewer when the table is large: a cycle's
# cost stays bounded whatever the snapshot's shape.
DRAWS = 4_000
MAX_WORK = 40_000_000  # draws x items summed over all cells
# Past this many cells (8 MB of float32) the snapshot ships no position table and the edge logs
# no per-position propensity (as for a contextual snapshot): KV values stay small and quick to decode.
MAX_POSITION_CELLS = 2_000_000


@dataclass(frozen=True, slots=True)
class FloorProgress:
    """Where each item stands against its floor this period (from the store)."""

    period_start_ms: int
    period_end_ms: int
    shown: Mapping[str, int]  # personalized exposures per item since the period started
    requests_left: float  # lists expected before the period ends, at the last period's pace

    def to_dict(self, spec: ExperimentSpec) -> dict[str, Any]:
        """Per item: shown / needed this period, for the report."""
        assert spec.ranking is not None
        need = spec.ranking.min_exposures
        return {
            "period_start_ms": self.period_start_ms,
            "period_end_ms": self.period_end_ms,
            "min_exposures": need,
            "requests_left": round(self.requests_left, 1),
            "items": [
                {
                    "item": a.key,
                    "shown": int(self.shown.get(a.key, 0)),
                    "met": self.shown.get(a.key, 0) >= need,
                }
                for a in spec.arms
            ],
        }


def floor_progress(
    spec: ExperimentSpec, now_ms: int, exposures_per_arm: Callable[[str, int, int], Mapping[str, int]]
) -> FloorProgress | None:
    """This period's progress to the floors, from the store's ``exposures_per_arm``; None without floors.

    The pace is the last ``period_s`` of lists (exposures / slots), so a new period starts with the
    pace of the one before, and a quiet hour lowers it only as much as it weighs in a period.
    """
    if spec.ranking is None or not spec.ranking.min_exposures:
        return None
    period_ms = spec.ranking.period_s * 1000
    start = now_ms - now_ms % period_ms
    shown = exposures_per_arm(spec.key, start, now_ms + 1)
    recent = sum(exposures_per_arm(spec.key, now_ms + 1 - period_ms, now_ms + 1).values())
    lists_per_ms = recent / spec.ranking.slots / period_ms
    return FloorProgress(start, start + period_ms, dict(shown), lists_per_ms * (start + period_ms - now_ms))


def _groups(spec: ExperimentSpec) -> list[str]:
    assert spec.ranking is not None
    return [spec.ranking.groups.get(a.key, "") for a in spec.arms]


def forced_probabilities(
    spec: ExperimentSpec, progress: FloorProgress | None, inclusion: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Per item, the chance it is forced into a list (zeros without a floor or a pace to plan with)."""
    assert spec.ranking is not None
    n = len(spec.arms)
    need = spec.ranking.min_exposures
    if not need or progress is None or progress.requests_left <= 0.0:
        return np.zeros(n)
    missing = np.array([max(0, need - progress.shown.get(a.key, 0)) for a in spec.arms], dtype=np.float64)
    r = progress.requests_left
    q = np.clip(inclusion, 0.0, 1.0 - 1e-9)
    return np.clip((missing - q * r) / ((1.0 - q) * r), 0.0, 1.0)


def _cell_positions(
    alpha: npt.NDArray[np.float64],
    beta: npt.NDArray[np.float64],
    forced: npt.NDArray[np.float64],
    groups: npt.NDArray[np.int64],
    *,
    floor: float,
    slots: int,
    diversity: float,
    primary: int | None,
    draws: int,
    rng: np.random.Generator,
) -> npt.NDArray[np.float64]:
    """items x slots: how often each item lands at each position, over ``draws`` lists."""
    n = len(alpha)
    k = min(slots, n)
    rows = np.arange(draws)
    scores = rng.beta(alpha, beta, size=(draws, n))
    if floor > 0.0:
        explore = rng.random(draws) < floor
        scores[explore] = rng.random((int(explore.sum()), n))
    pinned = rng.random((draws, n)) < forced if forced.any() else np.zeros((draws, n), dtype=bool)
    prim = groups[np.argmax(scores, axis=1)] if primary is None else np.full(draws, primary)
    inside = (groups[None, :] == prim[:, None]) & (prim[:, None] >= 0)
    owed = np.where(prim >= 0, np.minimum(quota(diversity, k), (~inside).sum(axis=1)), 0)
    order = np.argsort(-(scores + 2.0 * pinned), axis=1, kind="stable")
    inside_in_order = np.take_along_axis(inside, order, axis=1)
    taken = np.zeros(draws, dtype=np.int64)
    chosen = np.zeros((draws, n), dtype=bool)
    for j in range(n):  # the edge's greedy fill, one candidate rank at a time for every draw
        room = k - taken
        is_in = inside_in_order[:, j]
        take = (room > 0) & (~is_in | (room > owed))
        owed = np.maximum(owed - (take & ~is_in), 0)
        chosen[rows, order[:, j]] = take
        taken += take
    shown = np.argsort(-np.where(chosen, scores, -np.inf), axis=1, kind="stable")[:, :k]
    counts = np.zeros((n, slots))
    np.add.at(counts, (shown, np.broadcast_to(np.arange(k), shown.shape)), 1.0)
    return counts / draws


def position_table(
    snapshot: Snapshot, rng: np.random.Generator, draws: int = DRAWS
) -> npt.NDArray[np.float64]:
    """segments x (1 + G) x items x slots: P(item at position | segment, primary group).

    Index 0 of the group axis is "no primary group known" (the top-scored item's group is used).
    """
    ranking = snapshot.ranking
    assert ranking is not None and snapshot.model is None
    n, segments = len(snapshot.arms), len(snapshot.segments)
    names = ranking.group_names
    groups = np.array([names.index(g) if g else -1 for g in ranking.groups], dtype=np.int64)
    cells = segments * (1 + len(names))
    draws = max(500, min(draws, MAX_WORK // max(1, cells * n)))
    alpha = np.asarray(snapshot.alpha, dtype=np.float64).reshape(segments, n)
    beta = np.asarray(snapshot.beta, dtype=np.float64).reshape(segments, n)
    forced = np.asarray(ranking.forced, dtype=np.float64).reshape(segments, n)
    out = np.zeros((segments, 1 + len(names), n, ranking.slots))
    for s in range(segments):
        for g in range(1 + len(names)):
            out[s, g] = _cell_positions(
                alpha[s],
                beta[s],
                forced[s],
                groups,
                floor=snapshot.floor,
                slots=ranking.slots,
                diversity=ranking.diversity,
                primary=None if g == 0 else g - 1,
                draws=draws,
                rng=rng,
            )
    return out


def _inclusion(snapshot: Snapshot, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Each item's chance to be in a list without forcing (segment 0, no primary group known).

    A contextual snapshot's depends on the context; there it is taken as 0, which errs towards
    forcing more, never less.
    """
    if snapshot.model is not None:
        return np.zeros(len(snapshot.arms))
    table = position_table(snapshot, rng, draws=2_000)
    return np.asarray(table[0, 0].sum(axis=1), dtype=np.float64)


def with_ranking(
    spec: ExperimentSpec, snapshot: Snapshot, progress: FloorProgress | None, rng: np.random.Generator
) -> Snapshot:
    """``snapshot`` (as learnt for the items as arms) with its ranking: floors and propensities."""
    assert spec.ranking is not None
    n, segments = len(snapshot.arms), len(snapshot.segments)
    groups = _groups(spec)
    free = Ranking(spec.ranking.slots, spec.ranking.diversity, groups, [0.0] * (n * segments))
    snapshot = dataclasses.replace(snapshot, ranking=free)
    forced = forced_probabilities(spec, progress, _inclusion(snapshot, rng) if progress else np.zeros(n))
    ranking = Ranking(spec.ranking.slots, spec.ranking.diversity, groups, np.tile(forced, segments).tolist())
    snapshot = dataclasses.replace(snapshot, ranking=ranking)
    cells = segments * (1 + len(ranking.group_names)) * n * ranking.slots
    if snapshot.model is not None or cells > MAX_POSITION_CELLS:
        return snapshot
    positions = position_table(snapshot, rng)
    return dataclasses.replace(
        snapshot, ranking=dataclasses.replace(ranking, positions=positions.ravel().tolist())
    )
