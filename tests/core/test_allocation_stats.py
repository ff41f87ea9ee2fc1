"""Empirical arm frequencies match the learner's allocation table.

This is what makes logged propensities trustworthy: the allocation table in
a snapshot is computed by Monte Carlo (numpy's Beta sampler, independent of
core's), and the edge's sticky, hash-seeded draws over 200,000 visitors must
reproduce it segment by segment.
"""

from __future__ import annotations

import random

import pytest
from scipy import stats

from core import Arm, Segment, Snapshot, decide
from tests.allocation import monte_carlo_allocation
from tests.factories import NOW

ARMS = 4
UNITS = 200_000
# Overlapping posteriors so no arm's share is trivial; the last segment has
# shapes below 1, which exercises the sampler's small-shape path.
ALPHA = [20.0, 24.0, 18.0, 6.0, 3.0, 2.0, 4.0, 1.0, 0.6, 0.9, 0.5, 0.8]
BETA = [200.0, 210.0, 170.0, 50.0, 20.0, 25.0, 30.0, 9.0, 0.7, 0.5, 0.9, 0.6]
CONTEXTS = [{"device": "desktop"}, {"device": "mobile"}, {"device": "tablet"}]


def _snapshot(allocation: list[float], floor: float) -> Snapshot:
    return Snapshot(
        experiment="stats",
        version=3,
        created_at=NOW,
        max_age_s=3600.0,
        salt="stats",
        default_arm="a0",
        holdout=0.0,
        floor=floor,
        arms=[Arm(f"a{i}") for i in range(ARMS)],
        segments=[
            Segment("all"),
            Segment("mobile", {"device": "mobile"}, 0),
            Segment("tablet", {"device": "tablet"}, 0),
        ],
        alpha=ALPHA,
        beta=BETA,
        allocation=allocation,
    )


@pytest.fixture(scope="module")
def observed() -> tuple[Snapshot, list[list[int]]]:
    snap = _snapshot(monte_carlo_allocation(ALPHA, BETA, ARMS, 0.1, draws=4_000_000, seed=2024), floor=0.1)
    counts = [[0] * ARMS for _ in CONTEXTS]
    rng = random.Random(7)
    for i in range(UNITS):
        s = i % len(CONTEXTS)
        d = decide(snap, f"unit-{i}", CONTEXTS[s], now_ms=NOW, rng=rng)
        counts[s][snap.arm_index[d.arm]] += 1
    return snap, counts


def _pvalue(counts: list[list[int]], table: list[float]) -> float:
    chi2 = 0.0
    for s, row in enumerate(counts):
        n = sum(row)
        for a, observed in enumerate(row):
            expected = n * table[s * ARMS + a]
            chi2 += (observed - expected) ** 2 / expected
    return float(stats.chi2.sf(chi2, df=len(counts) * (ARMS - 1)))


@pytest.mark.slow
def test_frequencies_match_the_monte_carlo_allocation(observed: tuple[Snapshot, list[list[int]]]) -> None:
    snap, counts = observed
    assert _pvalue(counts, list(snap.allocation)) > 1e-3


@pytest.mark.slow
def test_the_check_rejects_a_table_that_ignores_the_floor(observed: tuple[Snapshot, list[list[int]]]) -> None:
    _, counts = observed
    wrong = monte_carlo_allocation(ALPHA, BETA, ARMS, 0.0, draws=1_000_000, seed=2025)
    assert _pvalue(counts, wrong) < 1e-9


@pytest.mark.slow
def test_the_check_rejects_slightly_wrong_posteriors(observed: tuple[Snapshot, list[list[int]]]) -> None:
    _, counts = observed
    shifted = [a * 1.15 if i % ARMS == 1 else a for i, a in enumerate(ALPHA)]
    wrong = monte_carlo_allocation(shifted, BETA, ARMS, 0.1, draws=1_000_000, seed=2026)
    assert _pvalue(counts, wrong) < 1e-9
