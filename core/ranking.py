"""Ranked decision points: k of n items per request, with a diversity quota and exposure floors.

A ranked experiment's arms are its candidate items. Per request the edge draws every item's score
once, with the same Thompson draw a single decision takes (one Beta draw per item in the visitor's
segment, or one normal per item from the contextual model), then fills ``slots`` positions:

1. **Floors first.** Each item has a probability ``forced`` (per segment, set by the learner from
   the item's progress to ``min_exposures`` this period) of being placed in the list whatever its
   score; those items are taken first, by score.
2. **Then by score**, highest first, with the **diversity quota**: at least
   ``quota(diversity, slots)`` positions go to items outside the visitor's primary interest group
   (the profile's, else the group of the top-scored item). The quota is the smallest whole number
   of positions that is at least ``diversity x slots`` (0.2 x 5 -> 1, 0.2 x 4 -> 1, 0.25 x 10 ->
   3), capped by how many outside items exist. An item inside the group is passed over only when
   the positions left are exactly the outside positions still owed.
3. **The chosen items are shown by score**, highest first, whatever made them chosen.

The quota wins over a floor: a forced item of the primary group is passed over when the positions
left are owed to outside items, and forced items beyond ``slots`` are dropped by score. So a forced
item is not always shown; the learner's floors (control_plane.learning.ranking) aim with a margin.

Each position is logged as a decision of its own (its item is its arm), so exposures, decision
tokens, outcome crediting and the learner work per item unchanged. Position ``p``'s decision id is
the request's ``slate`` prefix (30 hex digits) followed by ``p`` as two hex digits, which is how
the control plane groups a request's positions again (:func:`split_position_id`).

Per-position propensities: for a segments snapshot the learner estimates ``P(item at position |
segment, primary group)`` by running this very procedure (:func:`choose_items`) many times and
ships the table; a contextual snapshot has none (its propensity depends on the whole context).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import ceil, isfinite

from core.errors import SnapshotError

__all__ = [
    "MAX_SLOTS",
    "Ranking",
    "choose_items",
    "position_id",
    "quota",
    "split_position_id",
]

MAX_SLOTS = 32
_SLATE_HEX = 30  # a request's id: 120 random bits, then two hex digits of position


def quota(diversity: float, slots: int) -> int:
    """Positions owed to items outside the primary group: the least whole number >= diversity x slots.

    Rounded to 9 decimals first, so that 0.3 x 10 (3.0000000000000004 in binary) owes 3, not 4.
    """
    return ceil(round(diversity * slots, 9))


def position_id(slate: str, position: int) -> str:
    """The decision id of ``position`` (0-based) in the request whose id prefix is ``slate``."""
    return f"{slate[:_SLATE_HEX]}{position:02x}"


def split_position_id(decision_id: str) -> tuple[str, int]:
    """(slate prefix, position) of a ranked position's decision id."""
    return decision_id[:_SLATE_HEX], int(decision_id[_SLATE_HEX:], 16)


def choose_items(
    scores: Sequence[float],
    groups: Sequence[str],
    forced: Sequence[bool],
    slots: int,
    *,
    diversity: float,
    primary: str | None,
) -> tuple[list[int], str]:
    """The items shown, best first, and the primary group the quota was counted against.

    ``groups[i]`` is item ``i``'s group ("" for none); ``primary`` None means "the group of the
    top-scored item". An empty primary group (no profile, top item ungrouped) owes no quota.
    """
    n = len(scores)
    k = min(slots, n)
    by_score = sorted(range(n), key=lambda i: (-scores[i], i))
    if primary is None:
        primary = groups[by_score[0]]
    owed = 0
    if primary:
        outside = sum(1 for g in groups if g != primary)
        owed = min(quota(diversity, k), outside)
    order = by_score
    if any(forced):
        order = [i for i in by_score if forced[i]] + [i for i in by_score if not forced[i]]
    chosen: list[int] = []
    for i in order:
        if len(chosen) == k:
            break
        if groups[i] == primary and primary:
            if k - len(chosen) <= owed:
                continue  # the positions left are owed to outside items
        elif owed:
            owed -= 1
        chosen.append(i)
    chosen.sort(key=lambda i: (-scores[i], i))
    return chosen, primary


def _table(name: str, values: Sequence[float], size: int) -> array[float]:
    try:
        table = array("f", values.tobytes()) if isinstance(values, array) else array("f", values)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SnapshotError(f"ranking.{name}: must be a sequence of floats ({exc})") from None
    if len(table) != size:
        raise SnapshotError(f"ranking.{name}: {len(table)} values, must be {size}")
    if size and not (isfinite(sum(table)) and min(table) >= 0.0 and max(table) <= 1.0 + 1e-6):
        raise SnapshotError(f"ranking.{name}: every value must be a probability in [0, 1]")
    return table


@dataclass(frozen=True, slots=True)
class Ranking:
    """What a snapshot of a ranked experiment adds: the list's shape and the learner's tables.

    ``groups`` is aligned with the snapshot's arms. ``forced`` is segments x arms (the chance an
    item is placed whatever its score). ``positions``, when present, is segments x (1 + G) x arms
    x slots, G the number of distinct groups: P(item at position) for a visitor whose primary group
    is unknown (index 0) or is ``group_names[g - 1]``.
    """

    slots: int
    diversity: float
    groups: Sequence[str]
    forced: Sequence[float]
    positions: Sequence[float] = ()
    group_names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        slots = self.slots
        if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= MAX_SLOTS:
            raise SnapshotError(f"ranking.slots={self.slots!r}, must be an integer in [1, {MAX_SLOTS}]")
        d = self.diversity
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not (isfinite(d) and 0.0 <= d <= 1.0):
            raise SnapshotError(f"ranking.diversity={d!r}, must be a number in [0, 1]")
        groups = tuple(self.groups)
        for g in groups:
            if not isinstance(g, str) or len(g) > 128:
                raise SnapshotError(f"ranking.groups: {g!r}, must be a string of at most 128 characters")
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "group_names", tuple(sorted({g for g in groups if g})))

    def check(self, arms: int, segments: int) -> Ranking:
        """Validate the tables against the snapshot's shape; a copy holding float32 tables."""
        if len(self.groups) != arms:
            raise SnapshotError(f"ranking.groups: {len(self.groups)} groups, must be one per arm ({arms})")
        forced = _table("forced", self.forced, segments * arms)
        size = segments * (1 + len(self.group_names)) * arms * self.slots
        positions = _table("positions", self.positions, size) if len(self.positions) else array("f")
        return Ranking(self.slots, float(self.diversity), self.groups, forced, positions)

    def primary_index(self, primary: str) -> int:
        """0 for no (or an unknown) primary group, else 1 + its index in ``group_names``."""
        try:
            return 1 + self.group_names.index(primary)
        except ValueError:
            return 0

    def propensity(self, segment: int, primary: int, item: int, position: int) -> float | None:
        """P(``item`` at ``position``) for the segment and primary group index, if the table exists."""
        if not len(self.positions):
            return None
        arms = len(self.groups)
        cell = ((segment * (1 + len(self.group_names)) + primary) * arms + item) * self.slots + position
        return float(self.positions[cell])
