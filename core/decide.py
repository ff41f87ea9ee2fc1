"""Choosing an arm for one unit: the edge's whole decision procedure.

``decide`` is a plain function of (snapshot, unit, context, now, generator);
it holds no state, so the edge and the tests call it the same way.  Its
Thompson draw is seeded from a hash of (unit, experiment, snapshot version),
which makes a visitor's arm sticky for the life of a snapshot without any
sticky-bucket store, while the allocation table in the snapshot (computed by
the learner for exactly this procedure) gives the exact propensity of every
arm for off-policy evaluation.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from core.contextual import ContextualModel
from core.features import with_unknowns
from core.hashing import bucket, seed64
from core.sampling import beta_variates
from core.snapshot import Snapshot

__all__ = [
    "DECISION_FIELDS",
    "REASONS",
    "Decision",
    "Fallback",
    "Generator",
    "decide",
    "draw_stream",
    "fallback",
]

REASONS = ("personalized", "holdout", "consent", "stale", "fallback")


class Generator(Protocol):
    """What ``decide`` needs of a random generator; ``random.Random`` fits."""

    def random(self) -> float: ...

    def getrandbits(self, k: int, /) -> int: ...


# What a caller is told of a decision, in this order, whether one was made (Decision) or not (Fallback).
DECISION_FIELDS = (
    "experiment",
    "arm",
    "payload",
    "html",
    "propensity",
    "reason",
    "segment",
    "snapshot_version",
    "snapshot_age_s",
    "decision_id",
    "because",
)


class _Serialized:
    """The one serializer of :class:`Decision` and :class:`Fallback`, so callers see one shape."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose: asdict() would deep-copy every payload per request.
        out = {name: getattr(self, name) for name in DECISION_FIELDS}
        out["because"] = list(out["because"])
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision(_Serialized):
    """The outcome of one decision, as logged and as returned to callers."""

    experiment: str
    arm: str
    payload: Any
    html: str | None
    # None for a contextual decision: its exact P(arm | context) is a one-dimensional integral per
    # arm, which the control plane computes from the stored snapshot (see control_plane.propensity).
    propensity: float | None
    reason: str
    segment: str | None
    snapshot_version: int
    snapshot_age_s: float
    decision_id: str
    # Contextual decisions: the features that pushed the chosen arm up ("device=mobile").
    because: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Fallback(_Serialized):
    """No decision could be made (no usable snapshot): the caller keeps its own default variant.

    It names no arm, so nothing is logged and no outcome can be credited to it; what it has of
    :data:`DECISION_FIELDS` besides its experiment and id is fixed, hence class constants.
    """

    experiment: str
    decision_id: str
    cause: str  # why there was nothing to decide with (the caller words it for people)

    arm: ClassVar[None] = None
    payload: ClassVar[None] = None
    html: ClassVar[None] = None
    propensity: ClassVar[None] = None
    reason: ClassVar[str] = "fallback"
    segment: ClassVar[None] = None
    snapshot_version: ClassVar[None] = None
    snapshot_age_s: ClassVar[None] = None
    because: ClassVar[tuple[str, ...]] = ()


def _decision_id(rng: Generator) -> str:
    return f"{rng.getrandbits(128):032x}"


def fallback(experiment: str, cause: str, rng: Generator) -> Fallback:
    """The answer for ``experiment`` when there is nothing to decide with; ``rng`` gives its id."""
    return Fallback(experiment=experiment, decision_id=_decision_id(rng), cause=cause)


def draw_stream(snapshot: Snapshot, unit: str) -> _random.Random:
    """The unit's generator for this snapshot: same inputs, same draws.

    Python guarantees that ``Random(seed).random()`` yields the same sequence
    on every version for an integer seed; seeding costs ~5 us on CPython and
    each draw ~0.04 us, which beat a pure-Python generator from 10 draws on
    (a Thompson draw over two arms already takes about 10).
    """
    salt = f"{snapshot.salt}:draw:{snapshot.experiment}:{snapshot.version}"
    return _random.Random(seed64(unit, salt, snapshot.hash_version))


def _default_arm(
    snapshot: Snapshot, reason: str, segment: str | None, age_s: float, decision_id: str
) -> Decision:
    """The snapshot's default arm, served for ``reason`` instead of a draw (propensity 1)."""
    arm = snapshot.arms[snapshot.arm_index[snapshot.default_arm]]
    return Decision(
        experiment=snapshot.experiment,
        arm=arm.key,
        payload=arm.payload,
        html=arm.html,
        propensity=1.0,
        reason=reason,
        segment=segment,
        snapshot_version=snapshot.version,
        snapshot_age_s=age_s,
        decision_id=decision_id,
    )


def _held_back(snapshot: Snapshot, unit: str | None, rng: Generator, now_ms: int, age_s: float) -> str | None:
    """Why the default arm is served instead of a draw (``holdout``, ``stale``), or None."""
    if snapshot.holdout > 0.0:
        salt = snapshot.salt + ":holdout"
        draw = rng.random() if unit is None else bucket(unit, salt, snapshot.hash_version)
        if draw < snapshot.holdout:
            return "holdout"
    # A snapshot from further in the future than it may age is no more
    # trustworthy than a stale one: some clock is badly wrong.
    if age_s > snapshot.max_age_s or snapshot.created_at - now_ms > snapshot.max_age_s * 1000:
        return "stale"
    return None


def _segment_draw(snapshot: Snapshot, s: int, n: int, uniform: Callable[[], float]) -> int:
    """The arm a Thompson draw from segment ``s``'s Beta posteriors picks."""
    lo = s * n
    draws = beta_variates(uniform, snapshot.alpha[lo : lo + n], snapshot.beta[lo : lo + n])
    best = max(range(n), key=draws.__getitem__)
    if draws.count(draws[best]) > 1:
        # Exact ties happen when tiny shapes round draws to 0.0 or 1.0;
        # a uniform pick among them keeps low arm indices from winning.
        tied = [i for i, d in enumerate(draws) if d == draws[best]]
        best = tied[min(int(uniform() * len(tied)), len(tied) - 1)]
    return best


def _contextual_draw(
    model: ContextualModel, context: Mapping[str, str], n: int, uniform: Callable[[], float]
) -> tuple[int, tuple[str, ...]]:
    """The arm a Thompson draw from the contextual model picks, and the features that favoured it."""
    cols, vals = model.encode(context)
    scores = model.draw(cols, vals, uniform)
    best = max(range(n), key=scores.__getitem__)
    return best, tuple(model.reasons(best, cols, vals))


def decide(
    snapshot: Snapshot,
    unit: str | None,
    context: Mapping[str, str] | None,
    *,
    now_ms: int,
    rng: Generator,
    consent: bool = True,
) -> Decision:
    """Choose an arm of ``snapshot`` for ``unit`` in ``context``.

    In order: no consent -> default arm (``consent``); unit in the permanent
    holdout -> default arm (``holdout``); snapshot older than ``max_age_s`` ->
    default arm (``stale``); otherwise, with probability ``floor``, a uniform
    pick, else a Thompson draw: from the contextual model for the visitor's
    encoded context when the snapshot has one, or in the most specific
    matching segment (``personalized``).  Features the context lacks count
    as ``unknown`` (:mod:`core.features`).  ``rng`` supplies the decision id and, for a unit
    without an id, the draws themselves.
    """
    decision_id = _decision_id(rng)
    age_s = max(0.0, (now_ms - snapshot.created_at) / 1000.0)
    if not unit:
        unit = None
    if not consent:
        return _default_arm(snapshot, "consent", None, age_s, decision_id)
    context = with_unknowns(snapshot.context_features, context)
    s = snapshot.segment_for(context)
    segment = snapshot.segments[s].key
    held = _held_back(snapshot, unit, rng, now_ms, age_s)
    if held is not None:
        return _default_arm(snapshot, held, segment, age_s, decision_id)

    uniform = (rng if unit is None else draw_stream(snapshot, unit)).random
    n = len(snapshot.arms)
    model = snapshot.model
    because: tuple[str, ...] = ()
    if snapshot.floor > 0.0 and uniform() < snapshot.floor:
        best = min(int(uniform() * n), n - 1)
    elif model is not None:
        best, because = _contextual_draw(model, context, n, uniform)
    else:
        best = _segment_draw(snapshot, s, n, uniform)
    arm = snapshot.arms[best]
    return Decision(
        experiment=snapshot.experiment,
        arm=arm.key,
        payload=arm.payload,
        html=arm.html,
        propensity=None if model is not None else float(snapshot.allocation[s * n + best]),
        reason="personalized",
        segment=segment,
        snapshot_version=snapshot.version,
        snapshot_age_s=age_s,
        decision_id=decision_id,
        because=because,
    )
