"""Off-policy evaluation: what a candidate policy would have earned on logged traffic.

Every personalized exposure logs the probability its arm had under the
snapshot that chose it (the propensity ``p``).  Reweighting each logged reward
by ``w = q / p``, where ``q`` is the candidate's probability of the same arm in
the same context, gives unbiased estimates of the candidate's mean reward
without serving it:

* IPS   = mean(w r)                                    unbiased, high variance
* SNIPS = sum(w r) / sum(w)                            slightly biased, much steadier
* DR    = mean(dm_target + w (r - dm_logged))          unbiased if either the
  propensities or the reward model are right; low variance when the model is good

``dm_logged`` is a reward model's prediction for the logged arm and
``dm_target`` its prediction averaged over the candidate's arm probabilities.
The effective sample size (sum w)^2 / sum w^2 says how many logged rows the
estimate is really worth: far below ``n`` means the candidate goes where the
logging policy rarely went, and no estimator can be trusted much.

Conventions: the estimators raise ``ValueError`` (with the reason) when their
estimate is undefined -- no rows, or for SNIPS a zero weight sum -- rather than
returning a number a caller might act on; :func:`evaluate` reports a zero
weight sum as ``snips=None`` since IPS and DR are still defined then.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt
from sqlalchemy import select

from control_plane.experiments import ExperimentSpec
from control_plane.propensity import PropensityCache, many_probabilities
from control_plane.storage.schema import exposures
from core import Snapshot, with_unknowns

if TYPE_CHECKING:
    from control_plane.storage.store import Store

__all__ = [
    "LoggedExposure",
    "OPEResult",
    "doubly_robust",
    "effective_sample_size",
    "evaluate",
    "ips",
    "logged_exposures",
    "policy_eval",
    "snips",
]

FloatArray = npt.NDArray[np.float64]


class LoggedExposure(NamedTuple):
    """One personalized decision as logged: what was shown, where, how likely, what it earned."""

    arm: str
    path: tuple[str, ...]
    propensity: float
    reward: float


@dataclass(frozen=True, slots=True)
class OPEResult:
    """Estimates of the candidate's mean reward per personalized decision."""

    ips: float
    snips: float | None  # None when the candidate gives every logged arm probability 0
    dr: float | None  # None when no reward model was given
    ess: float
    n: int
    ips_se: float | None  # None below 2 rows
    dr_se: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _vector(name: str, values: npt.ArrayLike) -> FloatArray:
    out = np.asarray(values, dtype=np.float64)
    if out.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {out.shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} must be finite")
    return out


def _inputs(
    rewards: npt.ArrayLike, propensities: npt.ArrayLike, target: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """(rewards, weights), validated: equal lengths, p in (0, 1], q in [0, 1], at least one row."""
    r = _vector("rewards", rewards)
    p = _vector("propensities", propensities)
    q = _vector("target", target)
    if not r.size == p.size == q.size:
        raise ValueError(f"lengths differ: rewards {r.size}, propensities {p.size}, target {q.size}")
    if r.size == 0:
        raise ValueError("no logged rows: an off-policy estimate needs at least one")
    # A zero propensity would mean the logging policy could not have shown the
    # logged arm: the row is corrupt, and its weight infinite.
    if np.any(p <= 0.0) or np.any(p > 1.0):
        raise ValueError("propensities must be in (0, 1]")
    if np.any(q < 0.0) or np.any(q > 1.0):
        raise ValueError("target probabilities must be in [0, 1]")
    return r, q / p


def _se(terms: FloatArray) -> float | None:
    if terms.size < 2:
        return None
    return float(np.std(terms, ddof=1) / math.sqrt(terms.size))


def ips(rewards: npt.ArrayLike, propensities: npt.ArrayLike, target: npt.ArrayLike) -> float:
    """Inverse propensity scoring: mean(q/p * r)."""
    r, w = _inputs(rewards, propensities, target)
    return float(np.mean(w * r))


def snips(rewards: npt.ArrayLike, propensities: npt.ArrayLike, target: npt.ArrayLike) -> float:
    """Self-normalised IPS: sum(w r) / sum(w); ValueError when sum(w) = 0."""
    r, w = _inputs(rewards, propensities, target)
    total = float(np.sum(w))
    if total <= 0.0:
        raise ValueError("the candidate gives every logged arm probability 0: SNIPS is undefined")
    return float(np.sum(w * r) / total)


def _dr_terms(r: FloatArray, w: FloatArray, dm_logged: npt.ArrayLike, dm_target: npt.ArrayLike) -> FloatArray:
    logged = _vector("dm_logged", dm_logged)
    target = _vector("dm_target", dm_target)
    if not logged.size == target.size == r.size:
        raise ValueError(
            f"lengths differ: rewards {r.size}, dm_logged {logged.size}, dm_target {target.size}"
        )
    terms: FloatArray = target + w * (r - logged)
    return terms


def doubly_robust(
    rewards: npt.ArrayLike,
    propensities: npt.ArrayLike,
    target: npt.ArrayLike,
    dm_logged: npt.ArrayLike,
    dm_target: npt.ArrayLike,
) -> float:
    """mean(dm_target + q/p * (r - dm_logged)): the model's value, corrected by weighted residuals."""
    r, w = _inputs(rewards, propensities, target)
    return float(np.mean(_dr_terms(r, w, dm_logged, dm_target)))


def effective_sample_size(weights: npt.ArrayLike) -> float:
    """(sum w)^2 / sum w^2; 0.0 for no rows or all-zero weights (nothing to learn from)."""
    w = _vector("weights", weights)
    if np.any(w < 0.0):
        raise ValueError("weights must be >= 0")
    squares = float(np.sum(w * w))
    if squares == 0.0:
        return 0.0
    return float(np.sum(w)) ** 2 / squares


def evaluate(
    rewards: npt.ArrayLike,
    propensities: npt.ArrayLike,
    target: npt.ArrayLike,
    dm_logged: npt.ArrayLike | None = None,
    dm_target: npt.ArrayLike | None = None,
) -> OPEResult:
    """All estimates at once; DR only with both model arrays. ValueError for no rows."""
    r, w = _inputs(rewards, propensities, target)
    if (dm_logged is None) != (dm_target is None):
        raise ValueError("doubly robust needs both dm_logged and dm_target, or neither")
    weighted = w * r
    total = float(np.sum(w))
    dr: float | None = None
    dr_se: float | None = None
    if dm_logged is not None and dm_target is not None:
        terms = _dr_terms(r, w, dm_logged, dm_target)
        dr, dr_se = float(np.mean(terms)), _se(terms)
    return OPEResult(
        ips=float(np.mean(weighted)),
        snips=float(np.sum(weighted) / total) if total > 0.0 else None,
        dr=dr,
        ess=effective_sample_size(w),
        n=int(r.size),
        ips_se=_se(weighted),
        dr_se=dr_se,
    )


Row = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float]


def _policy_rows(
    candidate: Snapshot,
    spec: ExperimentSpec,
    paths: Sequence[tuple[str, ...]],
    propensities: PropensityCache | None = None,
) -> dict[tuple[str, ...], Row]:
    """Per logged path: the candidate's P(arm), its model of each arm's reward, and their average.

    The direct-method term is the model's value under the candidate's allocation as a distribution:
    float32 rows sum to 1 only within rounding, so average with the row as weights (the reference
    formula, Open Bandit Pipeline's `np.average(q_hat, weights=pi_e)`). The importance weights stay
    the raw cells, exactly the propensities the edge logs.
    """
    n_arms = len(candidate.arms)
    contexts = [dict(zip(spec.features, path, strict=False)) for path in paths]
    if candidate.model is not None:
        probs, m, v = many_probabilities(candidate, contexts, propensities)
        # E[sigmoid(score)] under the posterior, by the probit approximation (MacKay 1992).
        rates = 1.0 / (1.0 + np.exp(-m / np.sqrt(1.0 + np.pi * v / 8.0)))
        values = np.sum(probs * rates, axis=1) / np.sum(probs, axis=1)
        return {path: (probs[i], rates[i], float(values[i])) for i, path in enumerate(paths)}
    alloc = np.asarray(candidate.allocation, dtype=np.float64).reshape(-1, n_arms)
    alpha = np.asarray(candidate.alpha, dtype=np.float64).reshape(-1, n_arms)
    beta = np.asarray(candidate.beta, dtype=np.float64).reshape(-1, n_arms)
    means = alpha / (alpha + beta)
    by_segment = np.sum(alloc * means, axis=1) / np.sum(alloc, axis=1)
    out = {}
    for path, context in zip(paths, contexts, strict=True):
        s = candidate.segment_for(with_unknowns(candidate.context_features, context))
        out[path] = (alloc[s], means[s], float(by_segment[s]))
    return out


def _policy_arrays(
    rows: Sequence[Sequence[Any]],
    candidate: Snapshot,
    spec: ExperimentSpec,
    propensities: PropensityCache | None,
) -> tuple[list[float], list[float], list[float], list[float], list[float]]:
    """(rewards, logged propensities, candidate's probabilities, model of the logged arm, model value)."""
    rows_of = _policy_rows(candidate, spec, list(dict.fromkeys(tuple(row[1]) for row in rows)), propensities)
    r: list[float] = []
    p: list[float] = []
    q: list[float] = []
    dm_logged: list[float] = []
    dm_target: list[float] = []
    for arm, path, propensity, reward in rows:
        alloc, means, model_value = rows_of[tuple(path)]
        a = candidate.arm_index.get(arm)
        r.append(float(reward))
        p.append(float(propensity))
        q.append(0.0 if a is None else float(alloc[a]))
        dm_logged.append(0.0 if a is None else float(means[a]))
        dm_target.append(model_value)
    return r, p, q, dm_logged, dm_target


def policy_eval(
    rows: Iterable[Sequence[Any]],
    candidate: Snapshot,
    spec: ExperimentSpec,
    propensities: PropensityCache | None = None,
) -> OPEResult:
    """Evaluate ``candidate`` on logged personalized exposures (see :func:`logged_exposures`).

    Each row is (arm, path, propensity, reward).  The candidate's probability of
    the logged arm is the exact probability ``core.decide`` picks that arm for a
    personalized visitor in that context: its allocation in the segment the
    context matches, or a contextual model's choice probability
    (:mod:`control_plane.propensity`).  The reward model is the candidate's own
    posterior mean per arm there.  A logged arm
    the candidate does not have gets probability 0 (its model value then never
    matters).  ValueError when there are no rows.
    """
    return evaluate(*_policy_arrays(list(rows), candidate, spec, propensities))


@dataclass(frozen=True, slots=True)
class Comparison:
    """Two policies evaluated on the same logged rows, and their SNIPS difference with its
    paired standard error (None where a SNIPS estimate is undefined)."""

    candidate: OPEResult
    current: OPEResult
    difference: float | None  # candidate - current
    difference_se: float | None


def snips_difference(
    rewards: npt.ArrayLike, propensities: npt.ArrayLike, candidate: npt.ArrayLike, current: npt.ArrayLike
) -> tuple[float, float | None] | None:
    """SNIPS(candidate) - SNIPS(current) on the same rows, and its standard error; None if undefined.

    The error is the delta method's, on the paired per-row influence of each estimate,
    ``w_i (r_i - V) / mean(w)``: the rows are shared, so most of their noise cancels and the
    difference is known far better than either estimate alone.
    """
    r, w_new = _inputs(rewards, propensities, candidate)
    _, w_old = _inputs(rewards, propensities, current)
    if float(np.sum(w_new)) <= 0.0 or float(np.sum(w_old)) <= 0.0:
        return None
    v_new = float(np.sum(w_new * r) / np.sum(w_new))
    v_old = float(np.sum(w_old * r) / np.sum(w_old))
    influence = w_new * (r - v_new) / np.mean(w_new) - w_old * (r - v_old) / np.mean(w_old)
    return v_new - v_old, _se(influence)


def compare(
    rows: Iterable[Sequence[Any]],
    candidate: Snapshot,
    current: Snapshot,
    spec: ExperimentSpec,
    propensities: PropensityCache | None = None,
) -> Comparison:
    """:func:`policy_eval` of both snapshots on ``rows``, and their paired SNIPS difference."""
    rows = list(rows)
    new = _policy_arrays(rows, candidate, spec, propensities)
    old = _policy_arrays(rows, current, spec, propensities)
    difference = snips_difference(new[0], new[1], new[2], old[2])
    return Comparison(
        evaluate(*new),
        evaluate(*old),
        None if difference is None else difference[0],
        None if difference is None else difference[1],
    )


def logged_exposures(
    store: Store,
    experiment: str,
    since_ms: int,
    limit: int = 50_000,
    *,
    until_ms: int | None = None,
) -> list[LoggedExposure]:
    """Personalized exposures with a logged propensity since ``since_ms``, newest first.

    ``until_ms`` lets a caller leave out exposures still inside the reward
    window, whose rewards are not all in yet and would bias every estimate down.
    """
    paths: dict[str, tuple[str, ...]] = {}  # thousands of rows share a few hundred paths: parse each once
    if store.events is not None:  # the events are in ClickHouse (PERCH_EVENTS_URL)
        return [
            LoggedExposure(
                arm, paths[path] if path in paths else paths.setdefault(path, tuple(json.loads(path))), p, r
            )
            for arm, path, p, r in store.events.logged(experiment, since_ms, until_ms, limit)
        ]
    query = select(exposures.c.arm, exposures.c.path, exposures.c.propensity, exposures.c.reward).where(
        exposures.c.experiment == experiment,
        exposures.c.reason == "personalized",
        exposures.c.propensity.is_not(None),
        exposures.c.ts_ms >= since_ms,
    )
    if until_ms is not None:
        query = query.where(exposures.c.ts_ms < until_ms)
    query = query.order_by(exposures.c.ts_ms.desc(), exposures.c.decision_id.desc()).limit(limit)
    with store.engine.connect() as conn:
        return [
            LoggedExposure(
                arm,
                paths[path] if path in paths else paths.setdefault(path, tuple(json.loads(path))),
                float(propensity),
                float(reward),
            )
            for arm, path, propensity, reward in conn.execute(query)
        ]
