"""Deciding a ranked decision point: the ordered list of items one visitor is shown.

The counterpart of :func:`core.decide.decide` for a snapshot with a ``ranking``
(:mod:`core.ranking` states the procedure). The same inputs, the same guarantees: a plain
function of (snapshot, unit, context, now, generator, primary group), draws seeded from the unit so
a visitor's list is sticky for the life of a snapshot, and the default list (the first ``slots``
items, in the operator's order) for no consent, the holdout or a stale snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core.decide import Generator, _decision_id, _held_back, draw_stream
from core.features import with_unknowns
from core.ranking import choose_items, position_id
from core.sampling import beta_variates
from core.snapshot import Snapshot

__all__ = ["RankedDecision", "RankedItem", "decide_ranked", "draw_list"]


@dataclass(frozen=True, slots=True)
class RankedItem:
    """One position of a ranked decision: logged, tokened and credited as a decision of its own."""

    arm: str
    position: int  # 0-based
    group: str
    payload: Any
    html: str | None
    # P(this item at this position) for the visitor's segment and primary group, from the
    # snapshot's table; None for a contextual snapshot (core.ranking says why).
    propensity: float | None
    decision_id: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "position": self.position,
            "group": self.group,
            "payload": self.payload,
            "html": self.html,
            "propensity": self.propensity,
            "decision_id": self.decision_id,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class RankedDecision:
    experiment: str
    items: tuple[RankedItem, ...]
    reason: str
    segment: str | None
    snapshot_version: int
    snapshot_age_s: float
    decision_id: str  # the request's: its first 30 hex digits prefix every position's id
    primary_group: str  # the group the diversity quota was counted against ("" for none)
    because: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "items": [item.to_dict() for item in self.items],
            "reason": self.reason,
            "segment": self.segment,
            "snapshot_version": self.snapshot_version,
            "snapshot_age_s": self.snapshot_age_s,
            "decision_id": self.decision_id,
            "primary_group": self.primary_group,
            "because": list(self.because),
        }


def _items(
    snapshot: Snapshot,
    chosen: list[int],
    decision_id: str,
    propensity: Any,
) -> tuple[RankedItem, ...]:
    ranking = snapshot.ranking
    assert ranking is not None
    out = []
    for position, i in enumerate(chosen):
        arm = snapshot.arms[i]
        out.append(
            RankedItem(
                arm=arm.key,
                position=position,
                group=ranking.groups[i],
                payload=arm.payload,
                html=arm.html,
                propensity=propensity(i, position),
                decision_id=position_id(decision_id, position),
            )
        )
    return tuple(out)


def decide_ranked(
    snapshot: Snapshot,
    unit: str | None,
    context: Mapping[str, str] | None,
    *,
    now_ms: int,
    rng: Generator,
    primary: str | None = None,
    consent: bool = True,
) -> RankedDecision:
    """The list ``snapshot`` shows ``unit`` in ``context``.

    ``primary`` is the visitor's primary interest (the profile's); one that names no item group
    counts as none, and the top-scored item's group is used instead.
    """
    ranking = snapshot.ranking
    if ranking is None:
        raise ValueError(f"experiment {snapshot.experiment!r} is not a ranked decision point")
    decision_id = _decision_id(rng)
    age_s = max(0.0, (now_ms - snapshot.created_at) / 1000.0)
    k = min(ranking.slots, len(snapshot.arms))
    if not consent:
        return _default(snapshot, "consent", None, age_s=age_s, decision_id=decision_id, k=k)
    unit = unit or None
    context = with_unknowns(snapshot.context_features, context)
    s = snapshot.segment_for(context)
    segment = snapshot.segments[s].key
    held = _held_back(snapshot, unit, rng, now_ms, age_s)
    if held is not None:
        return _default(snapshot, held, segment, age_s=age_s, decision_id=decision_id, k=k)
    uniform = (rng if unit is None else draw_stream(snapshot, unit)).random
    if primary is not None and primary not in ranking.group_names:
        primary = None
    chosen, used, because = draw_list(snapshot, s, context, primary, uniform)
    g = ranking.primary_index(primary) if primary is not None else 0
    return RankedDecision(
        experiment=snapshot.experiment,
        items=_items(snapshot, chosen, decision_id, lambda i, p: ranking.propensity(s, g, i, p)),
        reason="personalized",
        segment=segment,
        snapshot_version=snapshot.version,
        snapshot_age_s=age_s,
        decision_id=decision_id,
        primary_group=used,
        because=because,
    )


def draw_list(
    snapshot: Snapshot,
    segment: int,
    context: Mapping[str, str],
    primary: str | None,
    uniform: Callable[[], float],
) -> tuple[list[int], str, tuple[str, ...]]:
    """One draw of the ranking procedure: the items shown (best first), the primary group used and,
    for a contextual snapshot, the features that favoured the top item.

    The learner runs this same function many times to estimate the per-position propensities.
    """
    ranking = snapshot.ranking
    assert ranking is not None
    n = len(snapshot.arms)
    model = snapshot.model
    because: tuple[str, ...] = ()
    cols: list[int] = []
    vals: list[float] = []
    if snapshot.floor > 0.0 and uniform() < snapshot.floor:
        model = None  # a uniformly random order: no feature favoured anything
        scores = [uniform() for _ in range(n)]
    elif model is not None:
        cols, vals = model.encode(context)
        scores = model.draw(cols, vals, uniform)
    else:
        lo = segment * n
        scores = beta_variates(uniform, snapshot.alpha[lo : lo + n], snapshot.beta[lo : lo + n])
    table = ranking.forced
    lo = segment * n
    forced = [table[lo + i] > 0.0 and uniform() < table[lo + i] for i in range(n)]
    chosen, used = choose_items(
        scores, ranking.groups, forced, ranking.slots, diversity=ranking.diversity, primary=primary
    )
    if model is not None and chosen:
        because = tuple(model.reasons(chosen[0], cols, vals))
    return chosen, used, because


def _default(
    snapshot: Snapshot, reason: str, segment: str | None, *, age_s: float, decision_id: str, k: int
) -> RankedDecision:
    """The operator's order: the first ``k`` items as declared, shown for ``reason`` with certainty."""
    return RankedDecision(
        experiment=snapshot.experiment,
        items=_items(snapshot, list(range(k)), decision_id, lambda i, p: 1.0),
        reason=reason,
        segment=segment,
        snapshot_version=snapshot.version,
        snapshot_age_s=age_s,
        decision_id=decision_id,
        primary_group="",
    )
