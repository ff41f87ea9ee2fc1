"""The simulated world of the learning benchmark: environments whose best arm depends on the
context (or not), the visitor stream every policy sees, and the loop that feeds a policy with a
publish lag. See benchmarks/bench_learning.py."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = [
    "ARMS",
    "DELAY_MEAN_S",
    "ENVIRONMENTS",
    "FEATURES",
    "PUBLISH_EVERY",
    "RETURNING",
    "START_MS",
    "VISIT_MS",
    "WINDOW_S",
    "Environment",
    "Policy",
    "Visit",
    "environment",
    "simulate",
    "stream",
]

FEATURES = {
    "device": {"desktop": 0.5, "mobile": 0.4, "tablet": 0.1},
    "source": {"search": 0.4, "social": 0.3, "direct": 0.25, "email": 0.05},
    "country": {"us": 0.5, "de": 0.2, "fr": 0.15, "br": 0.1, "jp": 0.05},
}
ARMS = 4
START_MS = 1_780_000_000_000
VISIT_MS = 100  # ten visits a second
PUBLISH_EVERY = 2_000  # visits between publishes: 200 s of traffic
DELAY_MEAN_S = 300.0  # conversions arrive minutes after the exposure
WINDOW_S = 3_600
RETURNING = 0.3


@dataclass(frozen=True)
class Environment:
    name: str
    base: float  # intercept, logits
    main: tuple[float, ...]  # per arm
    effects: dict[str, dict[str, tuple[float, ...]]]  # feature -> value -> per-arm logit effect
    pairs: dict[tuple[str, str], tuple[float, ...]]  # (device, source) -> per-arm effect
    switch: bool = False

    def logits(self, context: dict[str, str], late: bool) -> np.ndarray:
        out = self.base + np.array(self.main)
        for name, value in context.items():
            effect = np.array(self.effects.get(name, {}).get(value, (0.0,) * ARMS))
            out = out + (np.roll(effect, 1) if late and self.switch else effect)
        pair = self.pairs.get((context["device"], context["source"]))
        if pair is not None:
            out = out + np.array(pair)
        return out

    def rates(self, context: dict[str, str], late: bool) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(context, late)))


def environment(name: str, seed: int) -> Environment:
    rng = np.random.default_rng([seed, sum(name.encode())])
    effects: dict[str, dict[str, tuple[float, ...]]] = {}
    pairs: dict[tuple[str, str], tuple[float, ...]] = {}
    main = tuple(rng.normal(0, 0.1, ARMS))
    if name in ("additive", "switching"):
        effects = {f: {v: tuple(rng.normal(0, 0.45, ARMS)) for v in values} for f, values in FEATURES.items()}
    elif name == "interactions":
        effects = {f: {v: tuple(rng.normal(0, 0.1, ARMS)) for v in values} for f, values in FEATURES.items()}
        pairs = {
            (d, s): tuple(rng.normal(0, 0.6, ARMS))
            for d, s in itertools.product(FEATURES["device"], FEATURES["source"])
        }
    elif name == "context-free":
        main = tuple(rng.permutation([0.0, 0.1, 0.2, 0.3]))
    else:
        raise ValueError(f"unknown environment {name!r}")
    return Environment(name, -3.3, main, effects, pairs, switch=name == "switching")


ENVIRONMENTS = ("additive", "interactions", "switching", "context-free")


@dataclass(frozen=True)
class Visit:
    index: int
    visitor: int
    context: dict[str, str]
    rates: np.ndarray  # true conversion rate per arm at this time
    u: float  # conversion draw: converts iff u < rate of the arm shown
    delay_ms: int


def stream(env: Environment, visitors: int, seed: int) -> list[Visit]:
    rng = random.Random(seed)
    people: list[dict[str, str]] = []
    out = []
    for i in range(visitors):
        if people and rng.random() < RETURNING:
            who = rng.randrange(len(people))
        else:
            people.append({f: rng.choices(list(v), list(v.values()))[0] for f, v in FEATURES.items()})
            who = len(people) - 1
        context = people[who]
        rates = env.rates(context, late=i >= visitors // 2)
        delay = int(rng.expovariate(1.0 / DELAY_MEAN_S) * 1000)
        out.append(Visit(i, who, context, rates, rng.random(), delay))
    return out


class Policy(Protocol):
    def choose(self, visit: Visit, now_ms: int) -> int: ...

    def update(
        self, now_ms: int, shown: list[tuple[Visit, int, int]], arrived: list[tuple[Visit, int, int]]
    ) -> None:
        """Every ``PUBLISH_EVERY`` visits: exposures since the last update, and outcomes that arrived
        (each as (visit, arm, exposure ms))."""


def simulate(env: Environment, visits: Sequence[Visit], policy: Policy, instant: bool = False) -> np.ndarray:
    """The true rate of what ``policy`` showed, per visit."""
    got = np.empty(len(visits))
    shown: list[tuple[Visit, int, int]] = []
    pending: list[tuple[int, Visit, int, int]] = []  # (arrival ms, visit, arm, exposure ms)
    for visit in visits:
        now = START_MS + visit.index * VISIT_MS
        arm = policy.choose(visit, now)
        got[visit.index] = visit.rates[arm]
        shown.append((visit, arm, now))
        if visit.u < visit.rates[arm] and visit.delay_ms <= WINDOW_S * 1000:
            pending.append((now + visit.delay_ms, visit, arm, now))
        if instant or (visit.index + 1) % PUBLISH_EVERY == 0:
            pending.sort(key=lambda p: p[0])
            cut = next((k for k, p in enumerate(pending) if p[0] > now), len(pending))
            arrived = [(v, a, ts) for _, v, a, ts in pending[:cut]]
            del pending[:cut]
            policy.update(now, shown, arrived)
            shown = []
    return got
