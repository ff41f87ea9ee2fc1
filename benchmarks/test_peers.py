"""MABWiser and Vowpal Wabbit on Perch's problem, in the same run as ``test_core.py``.

``benchmarks/run.py`` divides each peer's median by Perch's ``decide``
median of the same shape and reports the ratio.  The peers are the
dev/bench extras; without them these benchmarks skip.  With
``--benchmark-disable`` the models are fitted on tiny logs (the cost of a
prediction does not depend on how much they learnt).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks import peers
from benchmarks.shapes import ARMS, SEGMENTS


@pytest.fixture
def smoke(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("benchmark_disable"))


def _need(module: str) -> None:
    pytest.importorskip(module, reason=f"{module} is a bench extra: pip install -e '.[bench]'")


@pytest.fixture
def finish() -> Iterator[list[Any]]:
    closers: list[Any] = []
    yield closers
    for close in closers:
        close()


@pytest.mark.parametrize("segments", SEGMENTS)
@pytest.mark.parametrize("arms", ARMS)
def test_mabwiser_thompson_predict(benchmark: Any, smoke: bool, arms: int, segments: int) -> None:
    _need("mabwiser")
    benchmark.extra_info.update(kind="mabwiser.ts_predict", arms=arms, segments=segments)
    decide = peers.mabwiser_decider(arms, segments, per_arm=2 if smoke else 20)
    assert str(benchmark(decide)).startswith("a")


@pytest.mark.parametrize("segments", SEGMENTS)
@pytest.mark.parametrize("arms", ARMS)
def test_vw_cb_explore_adf_predict(
    benchmark: Any, smoke: bool, finish: list[Any], arms: int, segments: int
) -> None:
    _need("vowpalwabbit")
    benchmark.extra_info.update(kind="vw.cb_explore_adf_predict", arms=arms, segments=segments)
    decide, close = peers.vw_decider(arms, segments, train=20 if smoke else 2_000)
    finish.append(close)
    assert 0 <= benchmark(decide) < arms


@pytest.mark.parametrize("arms", ARMS)
def test_vw_cb_explore_adf_predict_preparsed(
    benchmark: Any, smoke: bool, finish: list[Any], arms: int
) -> None:
    _need("vowpalwabbit")
    segments = 50
    benchmark.extra_info.update(kind="vw.cb_explore_adf_predict_preparsed", arms=arms, segments=segments)
    decide, close = peers.vw_preparsed_decider(arms, segments, train=20 if smoke else 2_000)
    finish.append(close)
    assert 0 <= benchmark(decide) < arms
