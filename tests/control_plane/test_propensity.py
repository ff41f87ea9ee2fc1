"""Exact propensities of contextual decisions: the integral, and the edge's own draws."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy import integrate, stats

from control_plane.propensity import (
    PropensityCache,
    choice_probabilities,
    context_moments,
    context_probabilities,
    many_probabilities,
)
from core import decide
from tests.core.test_contextual import model, snapshot


@pytest.mark.parametrize("seed", range(12))
def test_the_integral_matches_adaptive_quadrature_to_1e_9(seed: int) -> None:
    rng = np.random.default_rng(seed)
    arms = int(rng.integers(2, 7))
    means = rng.normal(-3, 0.7, arms)
    variances = np.exp(rng.normal(-2, 2, arms))  # spreads of 1 to 1000 between arms
    got = choice_probabilities(means, variances, 0.0)
    sd = np.sqrt(variances)
    for a in range(arms):

        def integrand(t: float, a: int = a) -> float:
            others = [stats.norm.cdf(t, means[i], sd[i]) for i in range(arms) if i != a]
            return float(stats.norm.pdf(t, means[a], sd[a]) * np.prod(others))

        ref = integrate.quad(
            integrand, means[a] - 12 * sd[a], means[a] + 12 * sd[a], epsabs=1e-13, limit=400
        )[0]
        assert got[a] == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_many_arms_on_the_shared_grid_match_adaptive_quadrature(seed: int) -> None:
    # Alike spreads take the shared trapezoidal grid; arms far below the best are left out of it.
    rng = np.random.default_rng(100 + seed)
    arms = 40
    means = np.concatenate([rng.normal(-3, 0.1, arms - 5), rng.normal(-9, 0.5, 5)])
    sd = np.exp(rng.normal(-2.5, 0.3, arms))
    got = choice_probabilities(means, sd * sd, 0.0)
    for a in range(arms):

        def integrand(t: float, a: int = a) -> float:
            others = stats.norm.logcdf(t, np.delete(means, a), np.delete(sd, a)).sum()
            return float(stats.norm.pdf(t, means[a], sd[a]) * np.exp(others))

        ref = integrate.quad(
            integrand, means[a] - 12 * sd[a], means[a] + 12 * sd[a], epsabs=1e-13, limit=400
        )[0]
        assert got[a] == pytest.approx(ref, abs=1e-9)
    assert got[arms - 5 :].tolist() == [0.0] * 5


def test_many_contexts_at_once_agree_with_one_at_a_time() -> None:
    m, _, _ = model(4, arms=5, explore=0.7)
    snap = snapshot(m, floor=0.05)
    contexts = [
        {"device": d, "source": s, "visits": v}
        for d in ("mobile", "desktop", "tv")
        for s in ("search", "social")
        for v in ("1", "7.5", "nan")
    ] + [{}]
    cache = PropensityCache()
    probs, means, variances = many_probabilities(snap, contexts, cache)
    for i, context in enumerate(contexts):
        m_i, v_i = context_moments(snap, context)
        assert means[i] == pytest.approx(m_i, abs=1e-12)
        assert variances[i] == pytest.approx(v_i, abs=1e-12)
        assert probs[i] == pytest.approx(context_probabilities(snap, context), abs=1e-12)
        assert np.array_equal(cache.get(snap, context), probs[i])  # the batch filled the cache


def test_floor_mixes_in_uniform_and_rows_sum_to_one() -> None:
    got = choice_probabilities([0.0, 5.0, -5.0], [1e-4, 1e-4, 1e-4], 0.3)
    assert got == pytest.approx([0.1, 0.8, 0.1], abs=1e-12)
    assert choice_probabilities([1.0], [1.0], 0.5).tolist() == [1.0]
    # Degenerate spreads (explore = 0): the best mean takes everything.
    assert choice_probabilities([0.0, 1.0], [0.0, 0.0], 0.0) == pytest.approx([0.0, 1.0], abs=1e-12)


def test_the_edges_decisions_follow_the_computed_propensities() -> None:
    m, _, _ = model(9, arms=4, explore=1.5)
    snap = snapshot(m, floor=0.1)
    context = {"device": "mobile", "source": "search", "visits": "2"}
    expected = context_probabilities(snap, context)
    counts = np.zeros(4)
    for i in range(20_000):
        d = decide(snap, f"visitor-{i}", context, now_ms=1_000_000, rng=random.Random(i))
        counts[int(d.arm[1:])] += 1
    assert stats.chisquare(counts, expected * counts.sum()).pvalue > 1e-3


def test_the_cache_returns_the_same_rows_and_stays_bounded() -> None:
    m, _, _ = model(1)
    snap = snapshot(m)
    cache = PropensityCache(size=2)
    contexts = [{"device": d} for d in ("mobile", "desktop", "tablet")]
    rows = [cache.get(snap, c) for c in contexts]
    assert len(cache._rows) == 2
    for c, row in zip(contexts, rows, strict=True):
        assert np.array_equal(cache.get(snap, c), row)
        assert np.array_equal(row, context_probabilities(snap, c))
