"""What the learner adds to a ranked experiment's snapshot: exposure floors and position propensities.

* **Floors.** ``min_exposures`` per item and segment per period: in each segment of the snapshot
  (the one the edge serves a visitor from; a contextual snapshot has one), from what each item was
  shown there so far this period and the lists expected there before the *deadline* (at the last
  ``period_s``'s pace), the learner sets the item's ``forced`` probability, the chance the edge
  places it in a list whatever its score, to what closes the gap on top of how often it is shown
  anyway: ``p = (missing - q R) / ((1 - q) R)``, clipped to [0, 1], with ``missing`` the exposures
  it still lacks, ``R`` the lists expected and ``q`` its inclusion rate without forcing.

  Two margins make "at least N" hold, not "N on average": the aim is ``N + 3 sqrt(N)`` (a count of
  chance inclusions varies by about its square root), and the deadline is the period's middle (its
  end once the middle has passed), so a pace that falls, a segment that shrinks or a learner that
  sees the counts late leaves time to catch up. A segment with no lists in the last period has no
  pace to plan with: nothing is forced there.
* **Per-position propensities** (segments snapshots): ``P(item at position | segment, primary
  group)`` for the edge's procedure (core.ranking), by Monte Carlo, vectorised over draws. The
  distribution, not the edge's generator, defines a propensity, so numpy's Beta draws serve.
  A table past ``MAX_POSITION_CELLS`` is not shipped (the exposures then carry none).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from control_plane.experiments import ExperimentSpec
from core import Ranking, Snapshot, quota

__all__ = [
    "Counts",
    "FloorProgress",
    "floor_progress",
    "forced_probabilities",
    "position_table",
    "with_ranking",
]

# Monte Carlo draws per (segment, primary group), fewer when the table is large, and no table at all
# when even MIN_DRAWS per cell would pass MAX_WORK: a cycle's cost stays bounded whatever the shape.
DRAWS = 4_000
MIN_DRAWS = 500
MAX_WORK = 40_000_000  # draws x items summed over all cells
# Past this many cells (8 MB of float32) the snapshot ships no position table and the edge logs
# no per-position propensity (as for a contextual snapshot): KV values stay small and quick to decode.
MAX_POSITION_CELLS = 2_000_000


@dataclass(frozen=True, slots=True)
class FloorProgress:
    """Where each item stands against its floor this period, per segment (from the store)."""

    period_start_ms: int
    period_end_ms: int
    # Personalized exposures per (segment key, item) since the period started.
    shown: Mapping[tuple[str, str], int]
    # Lists expected per segment key before the deadline (the period's middle, then its end), at
    # the last period's pace.
    requests_left: Mapping[str, float]

    def to_dict(self, spec: ExperimentSpec) -> dict[str, Any]:
        """Per item, for the report: shown this period (all segments), the least in any segment
        with lists to plan with, and whether every such segment reached the floor (None if none had
        lists)."""
        assert spec.ranking is not None
        need = spec.ranking.min_exposures
        active = sorted(s for s, r in self.requests_left.items() if r > 0)
        rows = []
        for a in spec.arms:
            per = [int(self.shown.get((s, a.key), 0)) for s in active]
            rows.append(
                {
                    "item": a.key,
                    "shown": sum(n for (_, item), n in self.shown.items() if item == a.key),
                    "least": min(per, default=None),
                    # None: no segment had lists in the last period, so nothing was planned or checked.
                    "met": all(n >= need for n in per) if per else None,
                }
            )
        return {
            "period_start_ms": self.period_start_ms,
            "period_end_ms": self.period_end_ms,
            "min_exposures": need,
            "segments": active,
            "requests_left": {s: round(self.requests_left[s], 1) for s in active},
            "items": rows,
        }


Counts = Callable[[str, int, int], Mapping[tuple[str, str], int]]


def floor_progress(spec: ExperimentSpec, now_ms: int, exposures_per_segment: Counts) -> FloorProgress | None:
    """This period's progress to the floors, from the store's ``exposures_per_segment`` ((segment,
    item) -> exposures in a time range); None without floors.

    The pace is the last ``period_s`` of lists (exposures / slots) in each segment, so a new period
    starts with the pace of the one before, and a quiet hour lowers it only as much as it weighs.
    """
    if spec.ranking is None or not spec.ranking.min_exposures:
        return None
    period_ms = spec.ranking.period_s * 1000
    start = now_ms - now_ms % period_ms
    shown = exposures_per_segment(spec.key, start, now_ms + 1)
    recent: dict[str, int] = {}
    for (segment, _), n in exposures_per_segment(spec.key, now_ms + 1 - period_ms, now_ms + 1).items():
        recent[segment] = recent.get(segment, 0) + n
    middle = start + period_ms // 2
    left_ms = (middle if now_ms < middle else start + period_ms) - now_ms
    pace = {s: n / spec.ranking.slots / period_ms * left_ms for s, n in recent.items()}
    return FloorProgress(start, start + period_ms, dict(shown), pace)


def _groups(spec: ExperimentSpec) -> list[str]:
    assert spec.ranking is not None
    return [spec.ranking.groups.get(a.key, "") for a in spec.arms]


def forced_probabilities(
    spec: ExperimentSpec,
    progress: FloorProgress | None,
    segments: list[str],
    inclusion: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """segments x items: the chance each item is forced into a list in each segment (0 without a
    floor, or where the segment has no pace to plan with). ``inclusion``: segments x items."""
    assert spec.ranking is not None
    out = np.zeros((len(segments), len(spec.arms)))
    if not spec.ranking.min_exposures or progress is None:
        return out
    need = spec.ranking.min_exposures + 3.0 * math.sqrt(spec.ranking.min_exposures)
    for s, key in enumerate(segments):
        r = progress.requests_left.get(key, 0.0)
        if r <= 0.0:
            continue
        missing = np.array(
            [max(0, need - progress.shown.get((key, a.key), 0)) for a in spec.arms], dtype=float
        )
        q = np.clip(inclusion[s], 0.0, 1.0 - 1e-9)
        out[s] = np.clip((missing - q * r) / ((1.0 - q) * r), 0.0, 1.0)
    return out


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
    # Forced first, then by score, ties by index: exactly core.ranking's order. (Adding an offset to
    # the scores would not do: a score below 1e-16, common for a starved item, would vanish in it.)
    order = np.lexsort((-scores, ~pinned), axis=-1)
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
    snapshot: Snapshot, rng: np.random.Generator, draws: int = DRAWS, *, unknown_only: bool = False
) -> npt.NDArray[np.float64] | None:
    """segments x (1 + G) x items x slots: P(item at position | segment, primary group); None when
    it would cost more than ``MAX_WORK``.

    Index 0 of the group axis is "no primary group known" (the top-scored item's group is used);
    with ``unknown_only`` only that index is computed (the others stay 0).
    """
    ranking = snapshot.ranking
    assert ranking is not None and snapshot.model is None
    n, segments = len(snapshot.arms), len(snapshot.segments)
    names = ranking.group_names
    groups = np.array([names.index(g) if g else -1 for g in ranking.groups], dtype=np.int64)
    cells = segments * (1 if unknown_only else 1 + len(names))
    draws = min(draws, MAX_WORK // max(1, cells * n))
    if draws < min(MIN_DRAWS, DRAWS):
        return None
    alpha = np.asarray(snapshot.alpha, dtype=np.float64).reshape(segments, n)
    beta = np.asarray(snapshot.beta, dtype=np.float64).reshape(segments, n)
    forced = np.asarray(ranking.forced, dtype=np.float64).reshape(segments, n)
    out = np.zeros((segments, 1 + len(names), n, ranking.slots))
    for s in range(segments):
        for g in range(1 if unknown_only else 1 + len(names)):
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
    """segments x items: each item's chance to be in a list without forcing (no primary group known).

    A contextual snapshot's depends on the context, and a snapshot too large to simulate has none;
    there it is taken as 0, which errs towards forcing more, never less.
    """
    table = None if snapshot.model is not None else position_table(snapshot, rng, 2_000, unknown_only=True)
    if table is None:
        return np.zeros((len(snapshot.segments), len(snapshot.arms)))
    return np.asarray(table[:, 0].sum(axis=2), dtype=np.float64)


def with_ranking(
    spec: ExperimentSpec, snapshot: Snapshot, progress: FloorProgress | None, rng: np.random.Generator
) -> Snapshot:
    """``snapshot`` (as learnt for the items as arms) with its ranking: floors and propensities."""
    assert spec.ranking is not None
    n, segments = len(snapshot.arms), len(snapshot.segments)
    groups = _groups(spec)
    free = Ranking(spec.ranking.slots, spec.ranking.diversity, groups, [0.0] * (n * segments))
    snapshot = dataclasses.replace(snapshot, ranking=free)
    keys = [s.key for s in snapshot.segments]
    inclusion = _inclusion(snapshot, rng) if progress else np.zeros((segments, n))
    forced = forced_probabilities(spec, progress, keys, inclusion)
    ranking = Ranking(spec.ranking.slots, spec.ranking.diversity, groups, forced.ravel().tolist())
    snapshot = dataclasses.replace(snapshot, ranking=ranking)
    cells = segments * (1 + len(ranking.group_names)) * n * ranking.slots
    if snapshot.model is not None or cells > MAX_POSITION_CELLS:
        return snapshot
    positions = position_table(snapshot, rng)
    if positions is None:
        return snapshot
    return dataclasses.replace(
        snapshot, ranking=dataclasses.replace(ranking, positions=positions.ravel().tolist())
    )
