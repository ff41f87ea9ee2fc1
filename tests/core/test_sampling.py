from __future__ import annotations

import random

import numpy as np
import pytest
from scipy import stats

from core import beta_variate, beta_variates, gamma_variate

N = 20_000


def _stream(seed: int) -> random.Random:
    return random.Random(seed)


@pytest.mark.parametrize("shape", [0.05, 0.5, 1.0, 3.7, 250.0])
def test_gamma_matches_scipy(shape: float) -> None:
    uniform = _stream(11).random
    sample = [gamma_variate(uniform, shape) for _ in range(N)]
    assert stats.kstest(sample, stats.gamma(shape).cdf).pvalue > 1e-3


@pytest.mark.parametrize(("a", "b"), [(0.3, 0.7), (1.0, 1.0), (2.5, 40.0), (500.0, 9500.0), (0.1, 0.2)])
def test_beta_matches_scipy(a: float, b: float) -> None:
    uniform = _stream(23).random
    sample = [beta_variate(uniform, a, b) for _ in range(N)]
    assert stats.kstest(sample, stats.beta(a, b).cdf).pvalue > 1e-3


def test_tiny_shapes_agree_with_numpy() -> None:
    # With shapes this small many draws round to exactly 0.0 or 1.0 in float64,
    # which the continuous KS test cannot take; numpy's sampler rounds the same
    # way, so compare the two samples instead.
    uniform = _stream(29).random
    ours = [beta_variate(uniform, 0.02, 0.05) for _ in range(N)]
    theirs = np.random.default_rng(29).beta(0.02, 0.05, N)
    assert stats.ks_2samp(ours, theirs).pvalue > 1e-3


def test_ks_check_has_power_against_a_slightly_wrong_beta() -> None:
    # The same check must reject a 10% error in one shape: otherwise the
    # tests above could not fail.
    uniform = _stream(23).random
    sample = [beta_variate(uniform, 33.0, 300.0) for _ in range(N)]
    assert stats.kstest(sample, stats.beta(30.0, 300.0).cdf).pvalue < 1e-6


def test_beta_variates_share_one_stream_and_match_single_draws_in_law() -> None:
    uniform = _stream(5).random
    draws = [beta_variates(uniform, [2.0, 8.0], [8.0, 2.0]) for _ in range(N)]
    first = [d[0] for d in draws]
    second = [d[1] for d in draws]
    assert stats.kstest(first, stats.beta(2.0, 8.0).cdf).pvalue > 1e-3
    assert stats.kstest(second, stats.beta(8.0, 2.0).cdf).pvalue > 1e-3


def test_same_stream_gives_same_draws() -> None:
    first = beta_variates(_stream(99).random, [1.5, 0.4, 90.0], [3.0, 0.9, 10.0])
    again = beta_variates(_stream(99).random, [1.5, 0.4, 90.0], [3.0, 0.9, 10.0])
    assert first == again
    assert first != beta_variates(_stream(100).random, [1.5, 0.4, 90.0], [3.0, 0.9, 10.0])


def test_underflowing_shapes_put_mass_at_the_ends_in_ratio_a_to_b() -> None:
    uniform = _stream(3).random
    sample = [beta_variate(uniform, 1e-30, 3e-30) for _ in range(8_000)]
    assert set(sample) <= {0.0, 1.0}
    ones = sum(sample)
    assert stats.binomtest(int(ones), len(sample), 0.25).pvalue > 1e-3


def test_samplers_need_nothing_but_random() -> None:
    calls = 0
    source = _stream(1)

    def uniform() -> float:
        nonlocal calls
        calls += 1
        return source.random()

    beta_variates(uniform, [1.0] * 10, [1.0] * 10)
    assert calls >= 20  # at least one uniform per gamma variate
