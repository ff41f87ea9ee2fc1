"""What :func:`control_plane.learning.report.build_report` returns: frozen records, one per part.

The dashboard and its charts read these fields as they are (a rate is a float or None, never a
string); ``Report.to_dict()`` is the JSON of ``GET /v1/experiments/{key}/report``, key for key
and in the same order as docs/report.md describes it.  Parts that hold stored JSON as it was
written (alert details, a gate evaluation, counters) keep it as plain dicts: the report passes
them through, and their readers (:class:`Evaluation`) parse what they show.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = [
    "OPE",
    "Alert",
    "AllocationPoint",
    "ArmRow",
    "Decomposition",
    "Effect",
    "Estimates",
    "Evaluation",
    "FeatureEffect",
    "Group",
    "Outcomes",
    "Report",
    "SegmentRow",
    "SnapshotRow",
]


@dataclass(frozen=True, slots=True)
class Group:
    """Exposures with one reason (personalized or holdout): count, summed and mean reward."""

    exposures: int
    reward: float
    rate: float | None  # None without exposures

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Decomposition:
    """Personalized versus holdout; ``lift_ci`` is None while either group has under 2 exposures."""

    personalized: Group
    holdout: Group
    lift: float | None
    lift_ci: tuple[float, float] | None
    relative_lift: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "personalized": self.personalized.to_dict(),
            "holdout": self.holdout.to_dict(),
            "lift": self.lift,
            "lift_ci": None if self.lift_ci is None else list(self.lift_ci),
            "relative_lift": self.relative_lift,
        }


@dataclass(frozen=True, slots=True)
class ArmRow:
    """One arm over personalized exposures, with its Beta posterior and P(best)."""

    arm: str
    exposures: int
    conversions: int
    reward: float
    rate: float | None
    posterior_mean: float
    ci_low: float
    ci_high: float
    prob_best: float
    allocation: float | None  # None without a snapshot that has this arm (or segment)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SegmentRow:
    segment: str
    features: dict[str, Any] | None  # None when the latest snapshot does not have the segment
    exposures: int  # every exposure with this segment key, whatever its reason
    decomposition: Decomposition
    arms: tuple[ArmRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "features": None if self.features is None else dict(self.features),
            "exposures": self.exposures,
            **self.decomposition.to_dict(),
            "arms": [arm.to_dict() for arm in self.arms],
        }


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    version: int
    created_ms: int
    size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class AllocationPoint:
    """The global segment's allocation in one snapshot."""

    version: int
    created_ms: int
    allocation: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Outcomes:
    joined: int
    late: int
    pending: int
    extra: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Alert:
    at_ms: int
    kind: str
    message: str
    details: Any  # the JSON stored with the alert, or None

    def to_dict(self) -> dict[str, Any]:
        return {"at_ms": self.at_ms, "kind": self.kind, "message": self.message, "details": self.details}


@dataclass(frozen=True, slots=True)
class Effect:
    effect: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class FeatureEffect:
    """A contextual model's weight of one feature column, per arm, with its 95% interval."""

    feature: str
    arms: dict[str, Effect]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Estimates:
    """One policy's off-policy estimates, read from a stored ``OPEResult``."""

    ips: float | None
    snips: float | None
    dr: float | None
    ess: float | None
    n: int | None
    ips_se: float | None
    dr_se: float | None

    @classmethod
    def read(cls, stored: Any) -> Estimates | None:
        if not isinstance(stored, Mapping):
            return None
        ips, snips, dr, ess, ips_se, dr_se = (
            _float(stored.get(name)) for name in ("ips", "snips", "dr", "ess", "ips_se", "dr_se")
        )
        n = stored.get("n")
        return cls(ips, snips, dr, ess, n if isinstance(n, int) else None, ips_se, dr_se)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What the promotion gate weighed, read from the evaluation as publish stored it (older
    records may lack a part: those fields are None)."""

    candidate: Estimates | None
    current: Estimates | None
    difference: float | None
    difference_se: float | None
    tolerance: float | None
    exposures: int | None
    passed: bool | None
    overridden: str | None

    @classmethod
    def read(cls, stored: Mapping[str, Any]) -> Evaluation:
        passed, overridden, exposures = (stored.get(k) for k in ("passed", "overridden", "exposures"))
        return cls(
            candidate=Estimates.read(stored.get("candidate")),
            current=Estimates.read(stored.get("current")),
            difference=_float(stored.get("difference")),
            difference_se=_float(stored.get("difference_se")),
            tolerance=_float(stored.get("tolerance")),
            exposures=exposures if isinstance(exposures, int) else None,
            passed=passed if isinstance(passed, bool) else None,
            overridden=overridden if isinstance(overridden, str) else None,
        )


def _float(value: Any) -> float | None:
    # Stored JSON: a number, or null where an estimate was undefined.
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class OPE:
    """The newest promotion-gate evaluation, of a held-back snapshot or of the published one."""

    at_ms: int
    source: Literal["alert", "snapshot"]
    kind: str
    message: str | None
    snapshot_version: int | None
    passed: Any  # as stored: True or False (null in records that lack it)
    evaluation: dict[str, Any]  # as stored; ``read()`` for its parts

    def read(self) -> Evaluation:
        return Evaluation.read(self.evaluation)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at_ms": self.at_ms,
            "source": self.source,
            "kind": self.kind,
            "message": self.message,
            "snapshot_version": self.snapshot_version,
            "passed": self.passed,
            "evaluation": self.evaluation,
        }


@dataclass(frozen=True, slots=True)
class Report:
    """An experiment's report (docs/report.md has every field)."""

    experiment: str
    version: int
    generated_ms: int
    reward_kind: str
    model: str
    feature_effects: tuple[FeatureEffect, ...]
    arms: tuple[ArmRow, ...]
    holdout: Decomposition
    segments: tuple[SegmentRow, ...]
    snapshots: tuple[SnapshotRow, ...]  # newest first
    allocation_history: tuple[AllocationPoint, ...]  # oldest first
    outcomes: Outcomes
    counters: dict[str, int]
    alerts: tuple[Alert, ...]  # newest first
    ope: OPE | None
    # Ranked experiments: the list's shape, each item's progress to its floor this period, and the
    # fitted position-based model (control_plane.learning.slates); None for single decisions.
    ranking: dict[str, Any] | None = None

    @property
    def binary(self) -> bool:
        return self.reward_kind == "binary"

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "version": self.version,
            "generated_ms": self.generated_ms,
            "reward_kind": self.reward_kind,
            "model": self.model,
            "feature_effects": [effect.to_dict() for effect in self.feature_effects],
            "arms": [arm.to_dict() for arm in self.arms],
            "holdout": self.holdout.to_dict(),
            "segments": [segment.to_dict() for segment in self.segments],
            "snapshots": [snapshot.to_dict() for snapshot in self.snapshots],
            "allocation_history": [point.to_dict() for point in self.allocation_history],
            "outcomes": self.outcomes.to_dict(),
            "counters": dict(self.counters),
            "alerts": [alert.to_dict() for alert in self.alerts],
            "ope": None if self.ope is None else self.ope.to_dict(),
            # Only for ranked experiments: other reports keep their shape.
            **({"ranking": self.ranking} if self.ranking is not None else {}),
        }
