"""The problem of a Perch snapshot, posed to MABWiser and to Vowpal Wabbit.

Equivalent problem: ``arms`` arms, visitors in ``segments`` segments (the
global one plus device x source leaves, as in :mod:`benchmarks.shapes`), a
binary reward with a true rate per (segment, arm), and one decision asked
for a visitor of the most specific segment.

* MABWiser's ``ThompsonSampling`` is context-free, so the equivalent of
  Perch's per-segment posteriors is one fitted ``MAB`` per segment, looked up
  from the visitor's context (falling back to the global one) — the decision
  is ``models[segment].predict()``.
* Vowpal Wabbit's ``cb_explore_adf`` takes the context as shared features
  (``device``, ``source``) crossed with each arm's features (``-q sa``), with
  epsilon-greedy exploration at Perch's floor (0.05); one decision is
  ``predict`` (the text examples parsed, as a request must) and a draw from
  the returned PMF.  ``predict`` on examples parsed once beforehand is
  reported too, as the floor of what VW's Python API can do.

Both are fitted on logged data drawn from the same rates with the same seed;
what they learn does not change the cost of a prediction.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable
from typing import Any

from benchmarks.shapes import SEED, context_for, leaf_features

__all__ = ["mabwiser_decider", "vw_decider", "vw_preparsed_decider"]

EPSILON = 0.05


def _rates(arms: int, segments: int) -> list[list[float]]:
    rng = random.Random(SEED)
    return [[rng.uniform(0.01, 0.2) for _ in range(arms)] for _ in range(segments)]


def _segment_of(context: dict[str, str], leaves: dict[tuple[str, str], int]) -> int:
    return leaves.get((context.get("device", ""), context.get("source", "")), 0)


def mabwiser_decider(arms: int, segments: int, per_arm: int = 20) -> Callable[[], Any]:
    """One ``MAB`` per segment, each fitted on ``per_arm`` logged rewards per arm."""
    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mabwiser.mab import MAB, LearningPolicy

    names = [f"a{i}" for i in range(arms)]
    rates = _rates(arms, segments)
    rng = np.random.default_rng(SEED)
    models = []
    for s in range(segments):
        decisions = np.repeat(np.array(names), per_arm)
        rewards = (rng.random(arms * per_arm) < np.repeat(np.array(rates[s]), per_arm)).astype(int)
        model = MAB(names, LearningPolicy.ThompsonSampling(), seed=SEED + s)
        model.fit(decisions, rewards)
        models.append(model)
    leaves = {(f["device"], f["source"]): i for i in range(1, segments) for f in [leaf_features(i)]}
    context = context_for(segments)

    def decide() -> Any:
        return models[_segment_of(context, leaves)].predict()

    return decide


def _vw_lines(context: dict[str, str], arms: int, label: tuple[int, float, float] | None = None) -> list[str]:
    shared = " ".join(f"{k}={v}" for k, v in sorted(context.items())) or "all"
    lines = [f"shared |s {shared}"]
    for a in range(arms):
        prefix = f"0:{label[1]}:{label[2]} " if label is not None and label[0] == a else ""
        lines.append(f"{prefix}|a arm=a{a}")
    return lines


def _vw_workspace(arms: int, segments: int, train: int) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import vowpalwabbit

    vw = vowpalwabbit.Workspace(
        f"--cb_explore_adf -q sa --epsilon {EPSILON} --random_seed {SEED} --quiet", enable_logging=False
    )
    rates = _rates(arms, segments)
    rng = random.Random(SEED)
    for _ in range(train):
        s = rng.randrange(segments)
        a = rng.randrange(arms)  # a uniform logging policy: propensity 1/arms
        cost = -1.0 if rng.random() < rates[s][a] else 0.0
        vw.learn(_vw_lines(leaf_features(s) if s else {}, arms, (a, cost, 1.0 / arms)))
    return vw


def vw_decider(arms: int, segments: int, train: int = 2_000) -> tuple[Callable[[], int], Callable[[], None]]:
    """``predict`` on the visitor's text examples, then a draw from the PMF."""
    vw = _vw_workspace(arms, segments, train)
    context = context_for(segments)
    rng = random.Random(SEED)
    choices = list(range(arms))

    def decide() -> int:
        pmf = vw.predict(_vw_lines(context, arms))
        return rng.choices(choices, weights=pmf)[0]

    return decide, vw.finish


def vw_preparsed_decider(
    arms: int, segments: int, train: int = 2_000
) -> tuple[Callable[[], int], Callable[[], None]]:
    """``predict`` on examples parsed once beforehand (no per-request parsing), then a draw."""
    vw = _vw_workspace(arms, segments, train)
    examples = vw.parse(_vw_lines(context_for(segments), arms))
    rng = random.Random(SEED)
    choices = list(range(arms))

    def decide() -> int:
        pmf = vw.predict(examples)
        return rng.choices(choices, weights=pmf)[0]

    def finish() -> None:
        vw.finish_example(examples)
        vw.finish()

    return decide, finish
