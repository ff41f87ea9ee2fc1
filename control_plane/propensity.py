"""Exact choice probabilities of a contextual snapshot, for logging and evaluation.

For one encoded context, ``core.decide`` draws arm scores ``S_i ~ N(m_i, s_i^2)``
independently (``s_i^2 = explore * x' Sigma_i x``) and shows the argmax, or with
probability ``floor`` a uniform arm.  So

    P(a) = floor / A + (1 - floor) * Int phi(z) prod_{i != a} Phi((m_a - m_i + s_a z) / s_i) dz,

a one-dimensional integral per arm.  We integrate it with Simpson's rule over
z in [-Z, Z] on a step small enough for the steepest factor (its scale in z is
``s_i / s_a``), which puts the error well below 1e-6 (checked against Monte
Carlo of the edge's own draws in tests/control_plane/test_propensity.py).

The edge leaves ``propensity`` null for contextual decisions: per request this
costs a few thousand normal CDFs, far over its budget, while the control plane
computes it once per (snapshot version, context) and caches it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from scipy.special import log_ndtr

from core import ContextualModel, Snapshot, with_unknowns

__all__ = ["PropensityCache", "choice_probabilities", "context_moments", "context_probabilities"]

FloatArray = npt.NDArray[np.float64]

Z = 9.0  # |z| beyond 9 has mass 2e-19
MAX_STEP = 0.05
MAX_POINTS = 400_001
SHARED_POINTS = 20_001
# A score whose standard deviation is this far below the largest is treated as a point mass:
# its density would need more grid points than there is precision to gain.
TINY = 1e-9


def _simpson(points: int, h: float) -> FloatArray:
    weights = np.full(points, 2.0)
    weights[1::2] = 4.0
    weights[0] = weights[-1] = 1.0
    out: FloatArray = weights * (h / 3.0)
    return out


def _shared_grid(m: FloatArray, sd: FloatArray) -> FloatArray | None:
    """All arms at once on one grid of scores t: P(a) = Int phi_a(t) prod_{i != a} Phi_i(t) dt.

    O(arms x points) rather than O(arms^2 x points); usable when the spreads are alike, so
    that a step fine enough for the narrowest density does not need too many points.
    """
    # Below max_i(m_i - Z sd_i) every integrand is negligible: either the arm's own density or the
    # CDF of the arm that attains the maximum is below Phi(-Z). On a busy model most arms sit far
    # below the best, so this range is a few best arms' spreads wide, not all of them.
    lo = float(np.max(m - Z * sd))
    hi = float(np.max(m + Z * sd))
    step = float(sd.min()) / 10.0
    points = 2 * int(np.ceil((hi - lo) / step / 2.0)) + 1
    if points > SHARED_POINTS:
        return None
    t = np.linspace(lo, hi, points)
    log_cdf = log_ndtr((t[None, :] - m[:, None]) / sd[:, None])  # arms x points
    total = log_cdf.sum(axis=0)
    z = (t[None, :] - m[:, None]) / sd[:, None]
    density = np.exp(-0.5 * z * z + total[None, :] - log_cdf) / (sd[:, None] * np.sqrt(2.0 * np.pi))
    out: FloatArray = density @ _simpson(points, t[1] - t[0])
    return out


def choice_probabilities(
    means: Sequence[float] | FloatArray, variances: Sequence[float] | FloatArray, floor: float
) -> FloatArray:
    """P(each arm is chosen) when scores are independent N(means, variances), argmax wins."""
    m = np.asarray(means, dtype=np.float64)
    sd = np.sqrt(np.maximum(np.asarray(variances, dtype=np.float64), 0.0))
    n = m.size
    if n == 1:
        return np.ones(1)
    scale = max(float(sd.max()), 1.0)
    sd = np.maximum(sd, TINY * scale)
    shared = _shared_grid(m, sd)
    if shared is not None:
        return _finish(shared, floor)
    best = np.empty(n)
    for a in range(n):
        others = np.arange(n) != a
        ratio = float(sd[a] / sd[others].min())
        step = min(MAX_STEP, 0.1 / ratio)
        points = min(MAX_POINTS, 2 * int(np.ceil(Z / step)) + 1)
        z = np.linspace(-Z, Z, points)
        weights = _simpson(points, z[1] - z[0])
        t = m[a] + sd[a] * z
        log_cdf = log_ndtr((t[None, :] - m[others, None]) / sd[others, None]).sum(axis=0)
        density = np.exp(-0.5 * z * z + log_cdf) / np.sqrt(2.0 * np.pi)
        best[a] = float(weights @ density)
    return _finish(best, floor)


def _finish(best: FloatArray, floor: float) -> FloatArray:
    n = best.size
    best = np.clip(best, 0.0, 1.0)
    total = best.sum()
    if total > 0:
        best /= total  # the integrals sum to 1 up to quadrature error; exact rows help IPS
    out: FloatArray = floor / n + (1.0 - floor) * best
    return out


class _Arrays:
    """A contextual model's float32 tables as float64 matrices: moments for many contexts fast."""

    def __init__(self, model: ContextualModel) -> None:
        d = model.dim
        self.mean = np.asarray(model.mean, dtype=np.float64).reshape(model.arms, d)
        rows, cols = np.triu_indices(d)
        full = np.zeros((model.arms, d, d))
        full[:, rows, cols] = np.asarray(model.cov, dtype=np.float64).reshape(model.arms, -1)
        full[:, cols, rows] = full[:, rows, cols]
        self.cov = full

    def moments(self, cols: list[int], vals: list[float]) -> tuple[FloatArray, FloatArray]:
        v = np.asarray(vals)
        means: FloatArray = self.mean[:, cols] @ v
        sub = self.cov[:, cols][:, :, cols]
        variances: FloatArray = np.maximum(np.einsum("j,ajk,k->a", v, sub, v), 0.0)
        return means, variances


_MODEL_ARRAYS: OrderedDict[int, tuple[ContextualModel, _Arrays]] = OrderedDict()


def model_arrays(model: ContextualModel) -> _Arrays:
    """The float64 matrices of ``model`` (the last few models kept, keyed by identity)."""
    found = _MODEL_ARRAYS.get(id(model))
    if found is None or found[0] is not model:
        found = _MODEL_ARRAYS[id(model)] = (model, _Arrays(model))
        if len(_MODEL_ARRAYS) > 4:
            _MODEL_ARRAYS.popitem(last=False)
    return found[1]


def context_moments(snapshot: Snapshot, context: Mapping[str, str]) -> tuple[FloatArray, FloatArray]:
    """Mean and variance (before ``explore``) of every arm's score for a contextual snapshot."""
    model = snapshot.model
    if model is None:
        raise ValueError(f"snapshot {snapshot.experiment!r} {snapshot.version} has no contextual model")
    cols, vals = model.encode(with_unknowns(snapshot.context_features, context))
    return model_arrays(model).moments(cols, vals)


def context_probabilities(snapshot: Snapshot, context: Mapping[str, str]) -> FloatArray:
    """P(``core.decide`` picks each arm) for a personalized visitor in ``context``.

    The score moments are computed with numpy from the snapshot's float32 tables (the same
    numbers the edge multiplies, summed in another order: they agree to ~1e-12, far inside
    the 1e-6 a propensity needs).
    """
    model = snapshot.model
    if model is None:
        s = snapshot.segment_for(with_unknowns(snapshot.context_features, context))
        n = len(snapshot.arms)
        return np.asarray(snapshot.allocation[s * n : (s + 1) * n], dtype=np.float64)
    means, variances = context_moments(snapshot, context)
    return choice_probabilities(means, model.explore * variances, snapshot.floor)


class PropensityCache:
    """Choice probabilities per (snapshot version, encoded context), least recently used out."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._rows: OrderedDict[tuple[str, int, tuple[int, ...], tuple[float, ...]], FloatArray] = (
            OrderedDict()
        )

    def get(self, snapshot: Snapshot, context: Mapping[str, str]) -> FloatArray:
        if snapshot.model is None:
            return context_probabilities(snapshot, context)
        cols, vals = snapshot.model.encode(with_unknowns(snapshot.context_features, context))
        key = (snapshot.experiment, snapshot.version, tuple(cols), tuple(vals))
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = context_probabilities(snapshot, context)
            if len(self._rows) > self.size:
                self._rows.popitem(last=False)
        else:
            self._rows.move_to_end(key)
        return row
