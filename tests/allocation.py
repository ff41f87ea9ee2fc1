"""Reference allocation tables for tests, by numpy Monte Carlo.

Deliberately independent of ``core``: numpy's own Beta sampler estimates
P(arm is chosen) for the edge's procedure (Thompson draw, argmax, with
probability ``floor`` a uniform arm instead), so agreement with the edge's
empirical frequencies checks core's sampler and its use, not a copy of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def monte_carlo_allocation(
    alpha: Sequence[float], beta: Sequence[float], arms: int, floor: float, *, draws: int, seed: int
) -> list[float]:
    """Flat (segment x arm) table of choice probabilities."""
    rng = np.random.default_rng(seed)
    a = np.asarray(alpha, dtype=np.float64).reshape(-1, arms)
    b = np.asarray(beta, dtype=np.float64).reshape(-1, arms)
    table = np.empty_like(a)
    for s in range(a.shape[0]):
        samples = rng.beta(a[s], b[s], size=(draws, arms))
        wins = np.bincount(samples.argmax(axis=1), minlength=arms) / draws
        table[s] = (1.0 - floor) * wins + floor / arms
    return [float(x) for x in table.ravel()]
