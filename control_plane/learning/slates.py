"""Ranked experiments after the fact: off-policy estimates for lists, and the position bias.

**Estimators** (one row per shown position; ``slate`` names the list it was in). Each returns the
estimated reward per list of a target policy from lists logged by another:

* standard IPS weighs a position's reward by the ratio of the *whole list's* probabilities under
  the two policies (unbiased whatever the user does; high variance);
* independent IPS by the ratio of the *item-at-position* marginals (unbiased when each position's
  reward depends on its own item only, the item-position click model; what the snapshot's
  per-position propensities give);
* their self-normalised forms divide by the mean weight (overall for standard, per position for
  independent), as Open Bandit Pipeline does. ``tests/control_plane/learning/obp_slates.json``
  holds OBP 0.5.7's own results on synthetic logs, matched to 1e-9.

**Position bias.** A position-based model: P(click | item i at position p in context cell c) =
theta_p x gamma_ic, where theta_p is the chance position p is examined and gamma_ic the item's
attractiveness to the visitors of that cell. Per cell, because a personalizing ranker puts what
each visitor likes most on top: pooled over visitors, an item's attractiveness would be confounded
with the positions it gets, and the examination of low positions underestimated. Fitted by
expectation-maximisation on the (item, cell, position) -> (shown, clicked) table; theta is
reported relative to the first position (the model fixes it only up to that scale), and each
item's attractiveness as its average over the cells, weighted by how often it was shown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "PositionModel",
    "fit_position_model",
    "independent_ips",
    "self_normalized_independent_ips",
    "self_normalized_standard_ips",
    "standard_ips",
]

FloatArray = npt.NDArray[np.float64]


def _inputs(
    slate: npt.ArrayLike, reward: npt.ArrayLike, logged: npt.ArrayLike, target: npt.ArrayLike
) -> tuple[npt.NDArray[np.object_], FloatArray, FloatArray, FloatArray]:
    s = np.asarray(slate)
    r, b, e = (np.asarray(x, dtype=np.float64) for x in (reward, logged, target))
    if not (s.ndim == r.ndim == b.ndim == e.ndim == 1) or not len(s) == len(r) == len(b) == len(e):
        raise ValueError("slate, reward and both propensities must be 1-d arrays of one length")
    if len(s) == 0:
        raise ValueError("no logged positions to estimate from")
    if not (np.isfinite(b).all() and (b > 0).all()):
        raise ValueError("logged propensities must be finite and > 0")
    if not (np.isfinite(e).all() and (e >= 0).all() and np.isfinite(r).all()):
        raise ValueError("target propensities must be finite and >= 0, rewards finite")
    return s, r, b, e


def _per_list(s: npt.NDArray[np.object_], terms: FloatArray) -> float:
    return float(terms.sum() / len(np.unique(s)))


def standard_ips(
    slate: npt.ArrayLike, reward: npt.ArrayLike, logged: npt.ArrayLike, target: npt.ArrayLike
) -> float:
    """``logged``/``target``: each row's whole-list probability (the same on every row of a list).

    The same weighted sum as :func:`independent_ips`: what differs is which probabilities it is given.
    """
    s, r, b, e = _inputs(slate, reward, logged, target)
    return _per_list(s, r * e / b)


def self_normalized_standard_ips(
    slate: npt.ArrayLike, reward: npt.ArrayLike, logged: npt.ArrayLike, target: npt.ArrayLike
) -> float:
    s, r, b, e = _inputs(slate, reward, logged, target)
    w = e / b
    return _per_list(s, r * w / w.mean()) if w.mean() > 0 else 0.0


def independent_ips(
    slate: npt.ArrayLike, reward: npt.ArrayLike, logged: npt.ArrayLike, target: npt.ArrayLike
) -> float:
    """``logged``/``target``: each row's item-at-its-position probability."""
    return standard_ips(slate, reward, logged, target)


def self_normalized_independent_ips(
    slate: npt.ArrayLike,
    reward: npt.ArrayLike,
    logged: npt.ArrayLike,
    target: npt.ArrayLike,
    position: npt.ArrayLike,
) -> float:
    """Normalised per position: each position's weights average to one over the logs."""
    s, r, b, e = _inputs(slate, reward, logged, target)
    pos = np.asarray(position)
    if pos.shape != s.shape:
        raise ValueError("position must be a 1-d array as long as the others")
    w = e / b
    terms = np.zeros_like(r)
    for p in np.unique(pos):
        at = pos == p
        mean = w[at].mean()
        terms[at] = r[at] * w[at] / mean if mean > 0 else 0.0
    return _per_list(s, terms)


@dataclass(frozen=True, slots=True)
class PositionModel:
    """A fitted position-based model: examination per position (the first = 1), attractiveness per item."""

    examination: tuple[float, ...]
    attractiveness: Mapping[str, float]  # per item, over its cells weighted by times shown
    shown: int
    clicks: int
    iterations: int

    def to_dict(self) -> dict[str, object]:
        return {
            "examination": [round(x, 4) for x in self.examination],
            "attractiveness": {k: round(v, 5) for k, v in self.attractiveness.items()},
            "shown": self.shown,
            "clicks": self.clicks,
            "iterations": self.iterations,
        }


def fit_position_model(
    table: Mapping[tuple[str, str, int], tuple[int, int]],
    slots: int,
    *,
    iterations: int = 200,
    tolerance: float = 1e-7,
) -> PositionModel | None:
    """Fit theta (per position) and gamma (per item and cell) to ``(item, cell, position) -> (shown,
    clicked)``.

    None when nothing was clicked (the model says nothing then). Clicks are capped at the times
    shown, and positions past ``slots`` are ignored: hostile or stale rows cannot break the fit.
    """
    items: Sequence[tuple[str, str]] = sorted({(item, cell) for item, cell, _ in table})
    index = {key: i for i, key in enumerate(items)}
    n = np.zeros((len(items), slots))
    c = np.zeros((len(items), slots))
    for (item, cell, position), (shown, clicked) in table.items():
        if 0 <= position < slots and shown > 0:
            n[index[item, cell], position] += shown
            c[index[item, cell], position] += min(max(clicked, 0), shown)
    if c.sum() == 0:
        return None
    theta = np.full(slots, 0.5)
    gamma = np.full(len(items), 0.5)
    done = 0
    for done in range(1, iterations + 1):  # noqa: B007 - the count is reported
        tg = np.outer(gamma, theta)
        unclicked = n - c
        denom = np.maximum(1.0 - tg, 1e-12)
        # Expected examinations and attractions behind the positions shown but not clicked.
        examined = c + unclicked * (theta[None, :] * (1.0 - gamma[:, None])) / denom
        attracted = c + unclicked * ((1.0 - theta[None, :]) * gamma[:, None]) / denom
        with np.errstate(invalid="ignore", divide="ignore"):
            new_theta = np.where(n.sum(0) > 0, examined.sum(0) / n.sum(0), theta)
            new_gamma = np.where(n.sum(1) > 0, attracted.sum(1) / n.sum(1), gamma)
        new_theta = np.clip(new_theta, 1e-6, 1.0)
        new_gamma = np.clip(new_gamma, 1e-6, 1.0)
        step = max(np.abs(new_theta - theta).max(), np.abs(new_gamma - gamma).max())
        theta, gamma = new_theta, new_gamma
        if step < tolerance:
            break
    top = theta[0] if theta[0] > 0 else 1.0
    weight: dict[str, float] = {}
    pooled: dict[str, float] = {}
    for (item, _), i in index.items():
        times = float(n[i].sum())
        weight[item] = weight.get(item, 0.0) + times
        pooled[item] = pooled.get(item, 0.0) + times * float(gamma[i] * top)
    return PositionModel(
        examination=tuple(float(t / top) for t in theta),
        attractiveness={item: pooled[item] / weight[item] for item in sorted(pooled) if weight[item] > 0},
        shown=int(n.sum()),
        clicks=int(c.sum()),
        iterations=done,
    )
