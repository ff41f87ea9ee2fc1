"""edge.limits: a per-visitor token bucket, bounded in memory."""

from __future__ import annotations

import pytest

from edge import limits
from edge.limits import Budget


def test_a_bucket_gives_its_capacity_then_refills_at_its_rate() -> None:
    budget = Budget(capacity=10, per_s=2.0)
    assert budget.take("a", 7, 0) == 7
    assert budget.take("a", 7, 0) == 3
    assert budget.take("a", 7, 1500) == 3  # 1.5 s: 3 more
    assert budget.take("a", 100, 60_000) == 10  # never more than the capacity
    assert budget.refused == 4 + 4 + 90


def test_the_buckets_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_BUCKETS", 3)
    budget = Budget(capacity=1)
    for key in "abcde":
        budget.take(key, 1, 0)
    assert list(budget.buckets) == ["c", "d", "e"]


def test_a_budget_must_give_something() -> None:
    with pytest.raises(ValueError, match="must be >= 1 and > 0"):
        Budget(capacity=0)
