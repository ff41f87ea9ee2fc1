"""Per-arm Gaussian posteriors over a sparse design: what the contextual learner fits.

For each arm, the weights of its score ``x . w`` get

* binary rewards: the Laplace approximation of Bayesian logistic regression (Newton / IRLS
  to the mode, covariance = inverse Hessian at the mode);
* numeric rewards: the conjugate Gaussian linear model.

The prior is centred on the pooled rate (intercept) and zero (features). :func:`fit_arms` picks
the features' prior scale from a grid by the Laplace evidence of all arms together (and the
interactions' own scale); :func:`follow` updates a fit with the newest data, each arm allowed to
have drifted as far as its evidence says. Rows are aggregated cells (context, arm) -> decayed
exposures and rewards, so a fit costs O(cells x k^2) per Newton step, not O(events).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.linalg import LinAlgError, cho_factor, cho_solve, lapack
from scipy.special import expit

__all__ = ["DRIFT_SCALES", "PRIOR_SCALES", "Design", "Fit", "fit_arms", "follow"]

FloatArray = npt.NDArray[np.float64]

PRIOR_SCALES = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.2,
    0.4,
    0.8,
    1.6,
)  # feature weight s.d. in logits, chosen by evidence
DRIFT_SCALES = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)  # how far an arm's weights may have moved, by evidence
# The prior over those: an arm's world stays put with probability 0.9 at each update, else the
# drift is one of the others. Without it the evidence alone often prefers a little drift by chance,
# and the model then chases noise (measured in benchmarks/bench_learning.py, context-free world).
DRIFT_PRIOR = (math.log(0.9),) + (math.log(0.1 / 5),) * 5
INTERCEPT_SCALE = 1.5  # logits around the pooled rate
MAX_NEWTON = 30
NEWTON_TOLERANCE = 1e-4  # largest Newton step (logits) at which a fit has converged


@dataclass(frozen=True, slots=True)
class Fit:
    """Posterior means (arms x D) and covariances (arms x D x D), and the prior scale used."""

    mean: FloatArray
    cov: FloatArray
    prior_scale: float
    log_evidence: float


@dataclass(frozen=True, slots=True)
class Design:
    """A design matrix stored by its few non-zero entries per row (one-hot rows: ``k`` of ``D``).

    ``X w``, ``X' v`` and ``X' diag(c) X`` then cost O(rows x k^2), not O(rows x D^2): what keeps a
    learning cycle at 200 columns and 10^5 cells within its budget.
    """

    cols: npt.NDArray[np.int64]  # rows x k
    vals: FloatArray  # rows x k (padding: column 0 with value 0)
    dim: int
    # X' diag(c) X's (column pair, product of values) per row, made once: every Newton step needs them.
    pairs: npt.NDArray[np.int64] = field(init=False, repr=False)
    products: FloatArray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rows, k = self.cols.shape
        pairs = (self.cols[:, :, None] * self.dim + self.cols[:, None, :]).reshape(rows, k * k)
        products = (self.vals[:, :, None] * self.vals[:, None, :]).reshape(rows, k * k)
        object.__setattr__(self, "pairs", pairs)
        object.__setattr__(self, "products", products)

    @classmethod
    def of(cls, x: FloatArray | Design) -> Design:
        if isinstance(x, Design):
            return x
        k = max(1, int((x != 0).sum(axis=1).max(initial=0)))
        cols = np.zeros((x.shape[0], k), dtype=np.int64)
        vals = np.zeros((x.shape[0], k))
        for i, row in enumerate(x):
            nz = np.flatnonzero(row)
            cols[i, : nz.size] = nz
            vals[i, : nz.size] = row[nz]
        return cls(cols, vals, x.shape[1])

    def rows(self, mask: npt.NDArray[np.bool_]) -> Design:
        return Design(self.cols[mask], self.vals[mask], self.dim)

    def dot(self, w: FloatArray) -> FloatArray:
        out: FloatArray = (self.vals * w[self.cols]).sum(axis=1)
        return out

    def tdot(self, v: FloatArray) -> FloatArray:
        out = np.bincount(self.cols.ravel(), (self.vals * v[:, None]).ravel(), minlength=self.dim)
        return out.astype(np.float64)

    def gram(self, c: FloatArray) -> FloatArray:
        d = self.dim
        weights = (self.products * c[:, None]).ravel()
        out = np.bincount(self.pairs.ravel(), weights, minlength=d * d).reshape(d, d)
        return out.astype(np.float64)


@dataclass(frozen=True, slots=True)
class _Prior:
    """A Gaussian prior over one arm's weights: mean, precision matrix and its log-determinant."""

    mean: FloatArray
    precision: FloatArray
    log_det: float

    @classmethod
    def diagonal(cls, mean: FloatArray, precision: FloatArray) -> _Prior:
        return cls(mean, np.diag(precision), float(np.sum(np.log(precision))))

    @classmethod
    def full(cls, mean: FloatArray, covariance: FloatArray) -> _Prior:
        factor = cho_factor(covariance, check_finite=False)
        return cls(mean, _inverse(factor), -2.0 * float(np.sum(np.log(np.diag(factor[0])))))


def _inverse(factor: tuple[FloatArray, bool]) -> FloatArray:
    """The inverse of a symmetric positive definite matrix from its Cholesky factor.

    LAPACK's potri: 2.5x quicker than solving against the identity, per arm and drift scale.
    """
    half, info = lapack.dpotri(factor[0], lower=factor[1])
    if info != 0:
        raise LinAlgError(f"potri failed ({info})")
    upper = np.tril(half).T if factor[1] else np.triu(half)
    out: FloatArray = upper + np.triu(upper, 1).T
    return out


def _fit_one(
    x: Design,
    n: FloatArray,
    r: FloatArray,
    prior: _Prior,
    *,
    binary: bool,
    noise: float,
    start: FloatArray,
) -> tuple[FloatArray, FloatArray, float]:
    """(mode, Hessian at the mode, Laplace log evidence up to a constant) for one arm."""
    mu0, prec = prior.mean, prior.precision
    w = start.copy()
    if not binary:
        # Conjugate: the mean reward of a row, with precision n / noise.
        y = np.divide(r, n, out=np.zeros_like(r), where=n > 0)
        h = x.gram(n / noise) + prec
        factor = cho_factor(h, check_finite=False)
        w = cho_solve(factor, x.tdot(n * y / noise) + prec @ mu0)
        resid = y - x.dot(w)
        loglik = -0.5 * float(np.sum(n / noise * resid * resid))
    else:
        for _ in range(MAX_NEWTON):
            p = expit(x.dot(w))
            grad = x.tdot(r - n * p) - prec @ (w - mu0)
            h = x.gram(n * p * (1.0 - p)) + prec
            factor = cho_factor(h, check_finite=False)
            step = cho_solve(factor, grad, check_finite=False)
            w = w + step
            # Converged: Newton's error after a step of 1e-4 logits is O(1e-8), and the Hessian at
            # the previous iterate differs from the one at w by O(1e-4) relative, far below what the
            # posterior's own uncertainty moves. (1e-6 cost one more step per fit, 8 % of a cycle.)
            if float(np.max(np.abs(step))) < NEWTON_TOLERANCE:
                break
        eta = x.dot(w)
        loglik = float(np.sum(r * eta - n * np.logaddexp(0.0, eta)))
    log_det_h = 2.0 * float(np.sum(np.log(np.diag(factor[0]))))
    d = w - mu0
    evidence = loglik - 0.5 * float(d @ prec @ d) + 0.5 * prior.log_det - 0.5 * log_det_h
    return w, h, evidence


def _rows(n: FloatArray, r: FloatArray, a: int) -> tuple[npt.NDArray[np.bool_], FloatArray, FloatArray]:
    rows = n[:, a] > 0
    return rows, n[rows, a], np.minimum(r[rows, a], n[rows, a])


def fit_arms(
    x: FloatArray | Design,
    n: FloatArray,
    r: FloatArray,
    *,
    binary: bool,
    prior_scale: float | None,
    scales: Sequence[float] = PRIOR_SCALES,
    interactions: Sequence[bool] | None = None,
) -> Fit:
    """Per-arm posteriors for design ``x`` (paths x D), exposures and rewards ``n``, ``r`` (paths x arms).

    The features' prior scale is ``prior_scale``, or the one of ``scales`` with the most evidence;
    columns flagged in ``interactions`` get their own scale, also by evidence.
    """
    design = Design.of(x)
    grid = tuple(scales) if prior_scale is None else (prior_scale,)
    # Interaction columns get a prior scale of their own: a world where effects add up needs
    # them near zero while its main effects are large, and evidence can tell the two apart.
    pair = np.zeros(design.dim, dtype=bool) if interactions is None else np.asarray(interactions, dtype=bool)
    search = _ScaleSearch(design, n, r, binary=binary, grid=grid, pair=pair)
    middle = len(grid) // 2
    key = search.climb((middle, middle), lambda k, d: (k[0] + d, k[1] + d), 0)  # both scales together
    if pair.any() and prior_scale is None:
        key = search.climb(key, lambda k, d: (k[0], k[1] + d), 1)  # then the interactions' alone
    means, hessians, total = search.fits[key]
    covs = np.stack([_inverse(cho_factor(h, check_finite=False)) for h in hessians])
    return Fit(means, covs, grid[key[0]], total)


_Key = tuple[int, int]  # (index of the features' scale, index of the interactions' scale) in the grid


class _ScaleSearch:
    """Fits of every arm under one prior scale at a time, remembered, for :func:`fit_arms`."""

    def __init__(
        self,
        design: Design,
        n: FloatArray,
        r: FloatArray,
        *,
        binary: bool,
        grid: tuple[float, ...],
        pair: npt.NDArray[np.bool_],
    ) -> None:
        self.binary, self.grid, self.pair = binary, grid, pair
        pooled = (float(r.sum()) + 1.0) / (float(n.sum()) + 2.0)
        self.noise = max(pooled * (1.0 - pooled), 1e-4)
        if binary:
            centre, self.intercept_sd, self.unit = math.log(pooled / (1.0 - pooled)), INTERCEPT_SCALE, 1.0
        else:
            centre, self.intercept_sd, self.unit = pooled, 0.5, math.sqrt(self.noise)
        self.mu0 = np.zeros(design.dim)
        self.mu0[0] = centre
        self.per_arm = [_rows(n, r, a) for a in range(n.shape[1])]
        self.designs = [design.rows(rows) for rows, _, _ in self.per_arm]
        self.starts = np.tile(self.mu0, (n.shape[1], 1))
        self.fits: dict[_Key, tuple[FloatArray, list[FloatArray], float]] = {}

    def fit(self, key: _Key) -> float:
        """The total evidence of all arms under the scales ``key`` (fitted once)."""
        if key not in self.fits:
            features, pairs = self.grid[key[0]] * self.unit, self.grid[key[1]] * self.unit
            prec = np.where(self.pair, 1.0 / pairs**2, 1.0 / features**2)
            prec[0] = 1.0 / self.intercept_sd**2
            prior = _Prior.diagonal(self.mu0, prec)
            means = np.empty_like(self.starts)
            hessians = []
            total = 0.0
            for a, (_, n_a, r_a) in enumerate(self.per_arm):
                w, h, evidence = _fit_one(
                    self.designs[a],
                    n_a,
                    r_a,
                    prior,
                    binary=self.binary,
                    noise=self.noise,
                    start=self.starts[a],
                )
                means[a] = w
                hessians.append(h)
                total += evidence
            self.starts[:] = means  # warm start for the next scale tried
            self.fits[key] = (means, hessians, total)
        return self.fits[key][2]

    def climb(self, key: _Key, step: Callable[[_Key, int], _Key], axis: int) -> _Key:
        # The evidence is unimodal in a scale in practice: climb from where we are rather than
        # fit every scale (3-4 fits instead of 8).
        while True:
            here = self.fit(key)
            up = self.fit(step(key, 1)) if key[axis] + 1 < len(self.grid) else -math.inf
            down = self.fit(step(key, -1)) if key[axis] > 0 and up <= here else -math.inf
            if up > here:
                key = step(key, 1)
            elif down > here:
                key = step(key, -1)
            else:
                return key


def follow(
    old: Fit, x: FloatArray | Design, n: FloatArray, r: FloatArray, *, binary: bool
) -> tuple[Fit, list[float]]:
    """Update ``old`` (fitted on all but the newest data) with the newest data ``n``, ``r``.

    Each arm's prior is its old posterior widened by a drift ``tau^2 I``: how far its weights may
    have moved since. ``tau`` is picked per arm by the Laplace evidence of the newest data (times
    :data:`DRIFT_PRIOR`: change is the exception), so an
    arm whose visitors still behave as before keeps all it learnt (tau near 0: the update is the
    plain posterior on all data), and one whose world changed follows the new data at once,
    without forgetting anything about the arms that did not change.
    """
    design = Design.of(x)
    dim = design.dim
    arms = n.shape[1]
    pooled = (float(r.sum()) + 1.0) / (float(n.sum()) + 2.0)
    noise = max(pooled * (1.0 - pooled), 1e-4)
    unit = 1.0 if binary else math.sqrt(noise)
    means = np.empty((arms, dim))
    covs = np.empty((arms, dim, dim))
    taus = []
    total = 0.0
    for a in range(arms):
        rows, n_a, r_a = _rows(n, r, a)
        rows_a = design.rows(rows)
        best: tuple[float, FloatArray, FloatArray, float] | None = None
        # No drift, then the drift scales upward while their evidence improves (it is unimodal
        # in tau in practice): an arm that did not change costs two fits, not one per scale.
        climbing: float | None = None
        for tau, log_prior in zip(DRIFT_SCALES, DRIFT_PRIOR, strict=True):
            prior = _Prior.full(old.mean[a], old.cov[a] + np.eye(dim) * (tau * unit) ** 2)
            w, h, evidence = _fit_one(rows_a, n_a, r_a, prior, binary=binary, noise=noise, start=old.mean[a])
            if climbing is not None and evidence <= climbing:
                break
            climbing = evidence
            evidence += log_prior
            if best is None or evidence > best[3]:
                best = (tau, w, h, evidence)
        assert best is not None
        taus.append(best[0])
        means[a] = best[1]
        covs[a] = _inverse(cho_factor(best[2], check_finite=False))
        total += best[3]
    return Fit(means, covs, old.prior_scale, old.log_evidence + total), taus
