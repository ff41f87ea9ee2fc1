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
GRID_FLOATS = 2_000_000  # contexts x arms x grid points per vectorised pass (16 MB a table)
# A score whose standard deviation is this far below the largest is treated as a point mass:
# its density would need more grid points than there is precision to gain.
TINY = 1e-9


def _simpson(points: int, h: float) -> FloatArray:
    weights = np.full(points, 2.0)
    weights[1::2] = 4.0
    weights[0] = weights[-1] = 1.0
    out: FloatArray = weights * (h / 3.0)
    return out


def choice_probabilities(
    means: Sequence[float] | FloatArray, variances: Sequence[float] | FloatArray, floor: float
) -> FloatArray:
    """P(each arm is chosen) when scores are independent N(means, variances), argmax wins."""
    m = np.asarray(means, dtype=np.float64)[None, :]
    out: FloatArray = choice_probabilities_many(m, np.asarray(variances, dtype=np.float64)[None, :], floor)[0]
    return out


def choice_probabilities_many(means: FloatArray, variances: FloatArray, floor: float) -> FloatArray:
    """Rows of :func:`choice_probabilities`: (contexts x arms) moments in, probabilities out.

    One implementation for one context or thousands, so a promotion gate and ingestion agree
    on every bit; most contexts share one vectorised pass (per context, numpy's call overhead
    was most of the cost at 50 arms).
    """
    m = np.asarray(means, dtype=np.float64)
    sd = np.sqrt(np.maximum(np.asarray(variances, dtype=np.float64), 0.0))
    rows, n = m.shape
    if n == 1:
        return np.ones((rows, 1))
    sd = np.maximum(sd, TINY * np.maximum(sd.max(axis=1), 1.0)[:, None])
    # Below max_i(m_i - Z sd_i) every integrand is negligible: either the arm's own density or the
    # CDF of the arm that attains the maximum is below Phi(-Z). An arm whose score stays below it
    # but with probability Phi(-Z) is never chosen (P < 2 Phi(-Z) ~ 2e-19) and is ~1 in every other
    # arm's product, so it is left out; on a busy model most arms are like this.
    lo = np.max(m - Z * sd, axis=1)
    hi = np.max(m + Z * sd, axis=1)
    live = m + Z * sd >= lo[:, None]
    best = np.zeros((rows, n))
    alone = live.sum(axis=1) == 1
    best[alone] = live[alone]
    # The trapezoidal rule on one grid of scores for all arms, its step a third of the narrowest
    # live spread: the integrand is smooth on that scale and negligible at both ends, where the
    # trapezoid's error falls like exp(-2 pi^2 (sd/h)^2), ~1e-77 (Simpson's only like h^4).
    narrow = np.min(np.where(live, sd, np.inf), axis=1)
    points = np.ceil((hi - lo) / (narrow / 3.0)).astype(np.int64) + 1
    shared = np.flatnonzero(~alone & (points <= SHARED_POINTS))
    chunk = 0
    while chunk < shared.size:
        size = max(1, GRID_FLOATS // (n * int(points[shared[chunk]])))
        index = shared[chunk : chunk + size]
        best[index] = _shared_grid(m[index], sd[index], live[index], points[index])
        chunk += size
    for i in np.flatnonzero(~alone & (points > SHARED_POINTS)):
        best[i, live[i]] = _per_arm(m[i, live[i]], sd[i, live[i]])
    best = np.clip(best, 0.0, 1.0)
    total = best.sum(axis=1, keepdims=True)
    # The integrals sum to 1 up to quadrature error; exact rows help IPS.
    best = np.divide(best, total, out=best, where=total > 0)
    out: FloatArray = floor / n + (1.0 - floor) * best
    return out


def _shared_grid(
    m: FloatArray, sd: FloatArray, live: npt.NDArray[np.bool_], points: npt.NDArray[np.int64]
) -> FloatArray:
    """All arms of several contexts at once: P(a) = Int phi_a(t) prod_{i != a} Phi_i(t) dt.

    O(arms x points) per context rather than O(arms^2 x points). Each context has its own grid
    over the range where its integrands are not negligible; shorter grids are padded with points
    of weight 0.
    """
    rows = m.shape[0]
    lo = np.max(m - Z * sd, axis=1)
    step = (np.max(m + Z * sd, axis=1) - lo) / (points - 1)
    width = int(points.max())
    j = np.arange(width)
    t = lo[:, None] + j[None, :] * step[:, None]  # rows x width
    z = (t[:, None, :] - m[:, :, None]) / sd[:, :, None]  # rows x arms x width
    log_cdf = np.where(live[:, :, None], log_ndtr(z), 0.0)
    total = log_cdf.sum(axis=1)
    density = np.exp(-0.5 * z * z + total[:, None, :] - log_cdf) / (sd[:, :, None] * np.sqrt(2.0 * np.pi))
    weights = np.where(j[None, :] < points[:, None], step[:, None], 0.0)
    weights[:, 0] *= 0.5
    weights[np.arange(rows), points - 1] *= 0.5
    out: FloatArray = np.einsum("cap,cp->ca", density, weights)
    out[~live] = 0.0
    return out


def _per_arm(m: FloatArray, sd: FloatArray) -> FloatArray:
    """Spreads too unlike for one grid: each arm's integral in its own z, Simpson's rule on a step
    small enough for the steepest factor (its scale in z is ``s_i / s_a``)."""
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
    keys = [_key(snapshot, cols, vals) for cols, vals in encoded]
    missing = []
    for i, key in enumerate(keys):
        row = None if cache is None else cache.lookup(key)
        if row is None:
            missing.append(i)
        else:
            probs[i] = row
    if missing:
        probs[missing] = choice_probabilities_many(
            means[missing], model.explore * variances[missing], snapshot.floor
        )
        if cache is not None:
            for i in missing:
                cache.store(keys[i], probs[i].copy())
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
