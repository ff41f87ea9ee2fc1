"""Core decision costs on CPython (pytest-benchmark); ``make bench`` reports them.

``benchmarks/run.py`` runs this module and ``test_peers.py`` in one pytest
run and reads each benchmark's ``extra_info["kind"]`` to build its tables.
With ``--benchmark-disable`` (``make test``) every benchmark runs once, as a
plain test, so none of them can rot; nothing here is a timed pass/fail.

The per-unit generator choice is measured here too: seeding a Mersenne
Twister per decision (what ``core.decide`` does) against a pure-Python
SplitMix64 seeded from the same hash, for the draw counts of 2 and 50 arms.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.shapes import ARMS, CREATED_MS, SEED, SEGMENTS, context_for, snapshot_of_shape
from core import (
    beta_variates,
    bucket,
    decide,
    decode_snapshot,
    draw_stream,
    encode_snapshot,
    seed64,
)

NOW = CREATED_MS + 1_000
UNITS = [f"{random.Random(SEED + i).getrandbits(128):032x}" for i in range(1024)]


def _tag(benchmark: Any, kind: str, **info: Any) -> None:
    benchmark.extra_info.update(kind=kind, **info)


@pytest.mark.parametrize("segments", SEGMENTS)
@pytest.mark.parametrize("arms", ARMS)
def test_decide(benchmark: Any, arms: int, segments: int) -> None:
    """One decision for a returning visitor in the most specific segment."""
    _tag(benchmark, "perch.decide", arms=arms, segments=segments)
    snap = snapshot_of_shape(arms, segments)
    ctx = context_for(segments)
    rng = random.Random(SEED)
    counter = iter(range(10**9))

    def one() -> str:
        return decide(snap, UNITS[next(counter) & 1023], ctx, now_ms=NOW, rng=rng).arm

    assert benchmark(one) in snap.arm_index


@pytest.mark.parametrize("segments", SEGMENTS)
@pytest.mark.parametrize("arms", ARMS)
def test_decode_snapshot(benchmark: Any, arms: int, segments: int) -> None:
    data = encode_snapshot(snapshot_of_shape(arms, segments))
    _tag(benchmark, "perch.decode", arms=arms, segments=segments, snapshot_bytes=len(data))
    assert benchmark(decode_snapshot, data).experiment == f"bench-{arms}x{segments}"


def test_bucket(benchmark: Any) -> None:
    _tag(benchmark, "perch.bucket")
    assert 0.0 <= benchmark(bucket, "visitor-123456", "home-hero:holdout") < 1.0


# Where a decision's time goes: the parts of decide() on their own.


def test_draw_stream(benchmark: Any) -> None:
    """The per-visitor generator: SHA-256 of (unit, salt) and seeding a Mersenne Twister."""
    _tag(benchmark, "perch.part.draw_stream")
    snap = snapshot_of_shape(2, 1)
    assert benchmark(draw_stream, snap, UNITS[0]).random() < 1.0


@pytest.mark.parametrize("arms", ARMS)
def test_beta_draws(benchmark: Any, arms: int) -> None:
    """The Thompson draw alone: one Beta variate per arm from an already seeded stream."""
    _tag(benchmark, "perch.part.beta_draws", arms=arms)
    snap = snapshot_of_shape(arms, 1)
    uniform = random.Random(SEED).random
    alphas, betas = snap.alpha[:arms], snap.beta[:arms]
    assert len(benchmark(beta_variates, uniform, alphas, betas)) == arms


@pytest.mark.parametrize("segments", [50, 500])
def test_segment_for(benchmark: Any, segments: int) -> None:
    _tag(benchmark, "perch.part.segment_for", segments=segments)
    snap = snapshot_of_shape(2, segments)
    assert benchmark(snap.segment_for, context_for(segments)) == segments - 1


_M64 = (1 << 64) - 1


class SplitMix64:
    """The alternative to a per-decision Mersenne Twister, for comparison only."""

    __slots__ = ("state",)

    def __init__(self, seed: int) -> None:
        self.state = seed & _M64

    def random(self) -> float:
        s = self.state = (self.state + 0x9E3779B97F4A7C15) & _M64
        z = ((s ^ (s >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        return ((z ^ (z >> 31)) >> 11) * (1.0 / 9007199254740992.0)


GENERATORS: dict[str, Callable[[int], Callable[[], float]]] = {
    "mersenne": lambda seed: random.Random(seed).random,
    "splitmix64": lambda seed: SplitMix64(seed).random,
}


@pytest.mark.parametrize("arms", [2, 50])
@pytest.mark.parametrize("generator", sorted(GENERATORS))
def test_seeded_thompson_draw(benchmark: Any, generator: str, arms: int) -> None:
    _tag(benchmark, "generator", generator=generator, arms=arms)
    make = GENERATORS[generator]
    alphas, betas = [30.0] * arms, [300.0] * arms

    def one() -> int:
        draws = beta_variates(make(seed64("visitor-1", "bench:draw")), alphas, betas)
        return max(range(arms), key=draws.__getitem__)

    assert 0 <= benchmark(one) < arms
