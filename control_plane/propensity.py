"""Exact choice probabilities of a contextual snapshot, for logging and evaluation.

For one encoded context, ``core.decide`` draws arm scores ``S_i ~ N(m_i, s_i^2)``
independently (``s_i^2 = explore * x' Sigma_i x``) and shows the argmax, or with
probability ``floor`` a uniform arm.  So

    P(a) = floor / A + (1 - floor) * Int phi(z) prod_{i != a} Phi((m_a - m_i + s_a z) / s_i) dz,

a one-dimensional integral per arm.  When the spreads are alike, all arms share one grid of
scores (trapezoidal rule); otherwise each arm gets Simpson's rule over z in [-Z, Z] on a step
small enough for the steepest factor (its scale in z is ``s_i / s_a``).  Either way the error is
far below 1e-6 (checked against adaptive quadrature and against the edge's own draws in
tests/control_plane/test_propensity.py).

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

__all__ = [
    "PropensityCache",
    "choice_probabilities",
    "context_moments",
    "context_probabilities",
    "many_probabilities",
]

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
    # The trapezoidal rule, not Simpson's: the integrand is smooth on the scale of the narrowest
    # spread and negligible at both ends, where the trapezoid's error falls like
    # exp(-2 pi^2 (sd/h)^2), ~1e-77 at h = sd/3 (Simpson's only like h^4, so it needed sd/10).
    step = float(sd.min()) / 3.0
    points = int(np.ceil((hi - lo) / step)) + 1
    if points > SHARED_POINTS:
        return None
    t = np.linspace(lo, hi, points)
    log_cdf = log_ndtr((t[None, :] - m[:, None]) / sd[:, None])  # arms x points
    total = log_cdf.sum(axis=0)
    z = (t[None, :] - m[:, None]) / sd[:, None]
    density = np.exp(-0.5 * z * z + total[None, :] - log_cdf) / (sd[:, None] * np.sqrt(2.0 * np.pi))
    weights = np.full(points, t[1] - t[0])
    weights[0] = weights[-1] = 0.5 * (t[1] - t[0])
    out: FloatArray = density @ weights
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
    # An arm whose score stays below max_j(m_j - Z sd_j) but with probability Phi(-Z) is never
    # chosen (P < 2 Phi(-Z) ~ 2e-19) and is ~1 in every other arm's product: on a busy model most
    # arms are like this, and leaving them out is what keeps a gate over 50 arms cheap.
    live = m + Z * sd >= float(np.max(m - Z * sd))
    best = np.zeros(n)
    best[live] = _best(m[live], sd[live]) if int(live.sum()) > 1 else 1.0
    return _finish(best, floor)


def _best(m: FloatArray, sd: FloatArray) -> FloatArray:
    """P(each arm has the highest score), scores independent N(m, sd^2), before the floor."""
    shared = _shared_grid(m, sd)
    if shared is not None:
        return shared
    n = m.size
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
    return best


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

    def many(self, encoded: Sequence[tuple[list[int], list[float]]]) -> tuple[FloatArray, FloatArray]:
        """Means and variances, (contexts x arms), of many encoded contexts in a few array operations."""
        arms = self.mean.shape[0]
        means = np.empty((len(encoded), arms))
        variances = np.empty_like(means)
        width = max((len(cols) for cols, _ in encoded), default=1)
        # In chunks: the gathered covariance blocks are arms x chunk x width^2 floats.
        chunk = max(1, 2**21 // (arms * width * width))
        for start in range(0, len(encoded), chunk):
            part = encoded[start : start + chunk]
            cols = np.zeros((len(part), width), dtype=np.int64)
            vals = np.zeros((len(part), width))  # padding: column 0 with weight 0
            for i, (c, v) in enumerate(part):
                cols[i, : len(c)] = c
                vals[i, : len(v)] = v
            stop = start + len(part)
            means[start:stop] = np.einsum("ck,ack->ca", vals, self.mean[:, cols])
            sub = self.cov[:, cols[:, :, None], cols[:, None, :]]  # arms x chunk x width x width
            variances[start:stop] = np.einsum("cj,acjk,ck->ca", vals, sub, vals)
        return means, np.maximum(variances, 0.0)


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


def many_probabilities(
    snapshot: Snapshot, contexts: Sequence[Mapping[str, str]], cache: PropensityCache | None = None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """For each context (rows): P(each arm), and the score means and variances (before ``explore``).

    :func:`context_probabilities` and :func:`context_moments` for many contexts, the moments
    in a few array operations (what a promotion gate over thousands of logged contexts needs),
    the probabilities through ``cache`` when given.  The snapshot must be contextual.
    """
    model = snapshot.model
    if model is None:
        raise ValueError(f"snapshot {snapshot.experiment!r} {snapshot.version} has no contextual model")
    encoded = [model.encode(with_unknowns(snapshot.context_features, c)) for c in contexts]
    means, variances = model_arrays(model).many(encoded)
    probs = np.empty_like(means)
    for i, (cols, vals) in enumerate(encoded):
        key = _key(snapshot, cols, vals)
        row = None if cache is None else cache.lookup(key)
        if row is None:
            row = choice_probabilities(means[i], model.explore * variances[i], snapshot.floor)
            if cache is not None:
                cache.store(key, row)
        probs[i] = row
    return probs, means, variances


_Key = tuple[str, int, tuple[int, ...], tuple[float, ...]]


def _key(snapshot: Snapshot, cols: list[int], vals: list[float]) -> _Key:
    return (snapshot.experiment, snapshot.version, tuple(cols), tuple(vals))


class PropensityCache:
    """Choice probabilities per (snapshot version, encoded context), least recently used out."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._rows: OrderedDict[_Key, FloatArray] = OrderedDict()

    def lookup(self, key: _Key) -> FloatArray | None:
        row = self._rows.get(key)
        if row is not None:
            self._rows.move_to_end(key)
        return row

    def store(self, key: _Key, row: FloatArray) -> None:
        self._rows[key] = row
        if len(self._rows) > self.size:
            self._rows.popitem(last=False)

    def get(self, snapshot: Snapshot, context: Mapping[str, str]) -> FloatArray:
        model = snapshot.model
        if model is None:
            return context_probabilities(snapshot, context)
        cols, vals = model.encode(with_unknowns(snapshot.context_features, context))
        key = _key(snapshot, cols, vals)
        row = self.lookup(key)
        if row is None:
            means, variances = model_arrays(model).moments(cols, vals)
            row = choice_probabilities(means, model.explore * variances, snapshot.floor)
            self.store(key, row)
        return row
