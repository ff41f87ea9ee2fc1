"""control_plane.learning.beta: Monte Carlo over Beta posteriors, checked against exact integrals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

from control_plane.learning import beta as beta_mc
from control_plane.learning.beta import MIN_DRAWS, allocation, posterior_summary, prob_best
from core import Arm, Segment, Snapshot


def _exact_first_wins(a1: float, b1: float, a2: float, b2: float) -> float:
    # P(X1 > X2) = integral of f1(x) F2(x) dx.
    value, _ = integrate.quad(
        lambda x: stats.beta.pdf(x, a1, b1) * stats.beta.cdf(x, a2, b2), 0.0, 1.0, limit=200
    )
    return float(value)


@pytest.mark.parametrize(
    "shapes", [(3.0, 7.0, 4.0, 6.0), (20.0, 180.0, 25.0, 200.0), (1.0, 3.0, 2.0, 2.0), (1.5, 1.2, 40.0, 30.0)]
)
def test_prob_best_matches_numerical_integration(shapes: tuple[float, float, float, float]) -> None:
    a1, b1, a2, b2 = shapes
    draws = 200_000
    p = prob_best(np.array([[a1, a2]]), np.array([[b1, b2]]), draws, np.random.default_rng(11))
    exact = _exact_first_wins(a1, b1, a2, b2)
    se = (exact * (1 - exact) / draws) ** 0.5
    assert abs(p[0, 0] - exact) < 5 * se
    assert p[0].sum() == 1.0


def test_the_integration_check_can_fail() -> None:
    # A 10% error in one shape moves P(best) far beyond the tolerance above.
    draws = 200_000
    p = prob_best(np.array([[3.3, 4.0]]), np.array([[7.0, 6.0]]), draws, np.random.default_rng(11))
    exact = _exact_first_wins(3.0, 7.0, 4.0, 6.0)
    assert abs(p[0, 0] - exact) > 10 * (exact * (1 - exact) / draws) ** 0.5


def test_allocation_mixes_the_floor_uniformly() -> None:
    alpha = np.array([[3.0, 4.0, 5.0], [30.0, 10.0, 10.0]])
    beta = np.array([[7.0, 6.0, 5.0], [70.0, 90.0, 90.0]])
    p = prob_best(alpha, beta, 50_000, np.random.default_rng(3))
    table = allocation(alpha, beta, 0.3, 50_000, np.random.default_rng(3))
    np.testing.assert_allclose(table, 0.1 + 0.7 * p, atol=1e-9)
    assert np.all(allocation(alpha, beta, 1.0, 50_000, np.random.default_rng(3)) == 1 / 3)


def test_exact_ties_from_tiny_shapes_are_split_uniformly() -> None:
    alpha = np.full((1, 3), 1e-3)
    # Most draws are exactly 0.0 or 1.0: without the tie-break arm 0 would win most of them.
    samples = np.random.default_rng(1).beta(alpha[0], alpha[0], size=(10_000, 3))
    assert np.mean((samples == samples.max(axis=1, keepdims=True)).sum(axis=1) > 1) > 0.3
    draws = 300_000
    p = prob_best(alpha, alpha, draws, np.random.default_rng(5))
    assert np.abs(p - 1 / 3).max() < 5 * (2 / 9 / draws) ** 0.5


@pytest.mark.parametrize("floor", [0.0, 0.05, 0.5, 0.999])
def test_every_cell_exceeds_the_floor_share_and_rows_sum_to_one_in_float32(floor: float) -> None:
    # Arm 0 always wins: Monte Carlo never sees the others.
    alpha = np.array([[900.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    beta = np.array([[1.0, 900.0, 900.0, 900.0], [1.0, 1.0, 1.0, 1.0]])
    table = allocation(alpha, beta, floor, MIN_DRAWS, np.random.default_rng(0))
    assert np.all(table > floor / 4)
    assert np.all(table > 0.0)
    packed = table.astype(np.float32)
    assert np.all(packed > 0.0)
    assert np.abs(packed.astype(np.float64).sum(axis=1) - 1.0).max() < 1e-5
    # And core accepts it as is.
    Snapshot(
        experiment="x",
        version=0,
        created_at=0,
        max_age_s=1.0,
        salt="x",
        default_arm="a0",
        holdout=0.0,
        floor=floor,
        arms=[Arm(f"a{i}") for i in range(4)],
        segments=[Segment("all"), Segment("m", {"d": "m"}, 0)],
        alpha=alpha.ravel().tolist(),
        beta=beta.ravel().tolist(),
        allocation=packed.ravel().tolist(),
    )


def test_too_few_draws_are_refused() -> None:
    ones = np.ones((1, 2))
    with pytest.raises(ValueError, match="draws=9999"):
        allocation(ones, ones, 0.1, MIN_DRAWS - 1, np.random.default_rng(0))


def test_large_blocks_are_split_without_changing_the_law(monkeypatch: pytest.MonkeyPatch) -> None:
    # A block smaller than one segment's draws must give the same estimate.
    alpha = np.array([[3.0, 4.0], [5.0, 5.0], [1.0, 9.0]])
    beta = np.array([[7.0, 6.0], [5.0, 5.0], [9.0, 1.0]])
    monkeypatch.setattr(beta_mc, "_BLOCK_BYTES", 2 * beta_mc._BYTES_PER_SAMPLE * 3_000)
    p = prob_best(alpha, beta, 60_000, np.random.default_rng(9))
    exact = _exact_first_wins(3.0, 7.0, 4.0, 6.0)
    assert abs(p[0, 0] - exact) < 5 * (exact * (1 - exact) / 60_000) ** 0.5
    assert p[2, 0] < 1e-3 and p[2, 1] > 0.999


def test_posterior_summary_matches_beta_quantiles() -> None:
    alpha = np.array([[2.0, 30.0], [0.5, 400.0]])
    beta = np.array([[50.0, 40.0], [3.0, 9600.0]])
    summary = posterior_summary(alpha, beta, draws=40_000)
    np.testing.assert_allclose(summary.mean, alpha / (alpha + beta), rtol=1e-12)
    np.testing.assert_allclose(summary.low, stats.beta.ppf(0.025, alpha, beta), rtol=0.03, atol=1e-4)
    np.testing.assert_allclose(summary.high, stats.beta.ppf(0.975, alpha, beta), rtol=0.03, atol=1e-4)
    assert np.all(summary.low < summary.mean) and np.all(summary.mean < summary.high)


# -- the edge's view ---------------------------------------------------------------------------------
