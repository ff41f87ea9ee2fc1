"""Does the model still predict what visitors do now?  A check per arm and feature value.

At each publish, the newest exposures (the ``recent`` cells the contextual learner updates with,
weighted for outcomes still on their way) are compared with what the snapshot in force predicted
for them: per arm, and per arm and feature value (``device=mobile``), the observed reward against
the expected one.  The spread is binomial noise plus the model's own uncertainty about the rate,
so ``z = (observed - expected) / sd``; a cell beyond :data:`ALERT_Z` raises one ``calibration``
alert naming the worst cells.  The drift the learner allows itself (``laplace.follow``)
already adapts to such a change; this tells the operator it happened, and where.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

from control_plane.propensity import model_arrays
from control_plane.storage.stats import CellStats
from core import Snapshot, with_unknowns

__all__ = ["ALERT_Z", "MIN_EXPECTED", "Miscalibration", "calibration"]

ALERT_Z = 4.0  # ~6e-5 two-sided per cell: a few dozen cells checked every 30 s stay quiet
MIN_EXPECTED = 5.0  # fewer expected successes: the normal approximation is not worth an alert


@dataclass(frozen=True, slots=True)
class Miscalibration:
    arm: str
    feature: str  # "" for the arm overall
    observed: float
    expected: float
    z: float

    def to_dict(self) -> dict[str, object]:
        return {
            "arm": self.arm,
            "feature": self.feature,
            "observed": round(self.observed, 3),
            "expected": round(self.expected, 3),
            "z": round(self.z, 2),
        }


def calibration(
    snapshot: Snapshot, features: tuple[str, ...], recent: Mapping[tuple[str, ...], Mapping[str, CellStats]]
) -> list[Miscalibration]:
    """Every (arm, feature value) cell of ``recent`` whose |z| exceeds :data:`ALERT_Z`, worst first."""
    model = snapshot.model
    if model is None:
        return []
    sums: dict[tuple[str, str], list[float]] = {}
    encoded = [
        model.encode(with_unknowns(snapshot.context_features, dict(zip(features, path, strict=False))))
        for path in recent
    ]
    means, variances = model_arrays(model).many(encoded)
    name_of = cache(model.label)  # a few hundred columns among thousands of paths: each named once
    for i, ((cols, _), by_arm) in enumerate(zip(encoded, recent.values(), strict=True)):
        labels = [""] + [name_of(c) for c in cols[1:]]
        for arm, cell in by_arm.items():
            a = snapshot.arm_index.get(arm)
            if a is None or cell.exposures <= 0:
                continue
            mean, var = float(means[i, a]), float(variances[i, a])
            # The rate and its spread under the posterior (probit approximation and delta method).
            p = 1.0 / (1.0 + math.exp(-mean / math.sqrt(1.0 + math.pi * var / 8.0)))
            sd_p = p * (1.0 - p) * math.sqrt(var)
            for label in labels:
                acc = sums.setdefault((arm, label), [0.0, 0.0, 0.0, 0.0])
                acc[0] += cell.reward
                acc[1] += cell.exposures * p
                acc[2] += cell.exposures * p * (1.0 - p)
                acc[3] += cell.exposures * sd_p
    out = []
    for (arm, label), (observed, expected, noise, spread) in sums.items():
        if expected < MIN_EXPECTED:
            continue
        z = (observed - expected) / math.sqrt(noise + spread * spread)
        if abs(z) > ALERT_Z:
            out.append(Miscalibration(arm, label, observed, expected, z))
    return sorted(out, key=lambda m: -abs(m.z))
