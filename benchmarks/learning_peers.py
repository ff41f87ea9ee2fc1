"""The learning benchmark's peers: uniform, Thompson sampling (context-free and per cell), Vowpal
Wabbit's contextual bandits and MABWiser's LinTS, each a Policy of benchmarks/learning_world.py."""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np

from benchmarks.learning_world import ARMS, FEATURES, WINDOW_S, Visit

__all__ = ["BetaTS", "LinTS", "Uniform", "VowpalWabbit"]


class Uniform:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def choose(self, visit: Visit, now_ms: int) -> int:
        return self.rng.randrange(ARMS)

    def update(self, now_ms: int, shown: list[Any], arrived: list[Any]) -> None:
        pass


class BetaTS:
    """Thompson sampling with Beta(1, 1) per arm, per full context cell or for everyone."""

    def __init__(self, seed: int, per_cell: bool) -> None:
        self.rng = np.random.default_rng(seed)
        self.per_cell = per_cell
        self.n: dict[tuple[str, ...], np.ndarray] = {}
        self.r: dict[tuple[str, ...], np.ndarray] = {}

    def _key(self, visit: Visit) -> tuple[str, ...]:
        return tuple(visit.context.values()) if self.per_cell else ()

    def choose(self, visit: Visit, now_ms: int) -> int:
        key = self._key(visit)
        n, r = self.n.get(key, np.zeros(ARMS)), self.r.get(key, np.zeros(ARMS))
        return int(np.argmax(self.rng.beta(1.0 + r, 1.0 + n - r)))

    def update(
        self, now_ms: int, shown: list[tuple[Visit, int, int]], arrived: list[tuple[Visit, int, int]]
    ) -> None:
        for visit, arm, _ in shown:
            self.n.setdefault(self._key(visit), np.zeros(ARMS))[arm] += 1
        for visit, arm, _ in arrived:
            self.r.setdefault(self._key(visit), np.zeros(ARMS))[arm] += 1


class _Matured:
    """Peers that learn an exposure once its label is final: converted, or its window has passed."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Visit, int, int]] = []
        self.converted: set[int] = set()

    def ready(
        self, now_ms: int, shown: list[tuple[Visit, int, int]], arrived: list[tuple[Visit, int, int]]
    ) -> list[tuple[Visit, int, float]]:
        self.waiting += shown
        self.converted.update(v.index for v, _, _ in arrived)
        out, keep = [], []
        for visit, arm, ts in self.waiting:
            if visit.index in self.converted:
                out.append((visit, arm, 1.0))
                self.converted.discard(visit.index)
            elif now_ms - ts > WINDOW_S * 1000:
                out.append((visit, arm, 0.0))
            else:
                keep.append((visit, arm, ts))
        self.waiting = keep
        return out


class VowpalWabbit(_Matured):
    def __init__(self, seed: int, exploration: str) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import vowpalwabbit

        self.vw = vowpalwabbit.Workspace(
            f"--cb_explore_adf -q sa {exploration} --random_seed {seed} --quiet", enable_logging=False
        )
        self.rng = random.Random(seed)
        self.pmf: dict[int, float] = {}

    @staticmethod
    def _lines(context: dict[str, str], label: tuple[int, float, float] | None = None) -> list[str]:
        lines = ["shared |s " + " ".join(f"{k}={v}" for k, v in context.items())]
        for a in range(ARMS):
            prefix = f"0:{label[1]}:{label[2]} " if label is not None and label[0] == a else ""
            lines.append(f"{prefix}|a arm=a{a}")
        return lines

    def choose(self, visit: Visit, now_ms: int) -> int:
        pmf = self.vw.predict(self._lines(visit.context))
        arm = self.rng.choices(range(ARMS), weights=pmf)[0]
        self.pmf[visit.index] = max(float(pmf[arm]), 1e-6)
        return arm

    def update(
        self, now_ms: int, shown: list[tuple[Visit, int, int]], arrived: list[tuple[Visit, int, int]]
    ) -> None:
        for visit, arm, reward in self.ready(now_ms, shown, arrived):
            self.vw.learn(self._lines(visit.context, (arm, -reward, self.pmf.pop(visit.index))))

    def close(self) -> None:
        self.vw.finish()


class LinTS(_Matured):
    """MABWiser's LinTS on the one-hot context, refitted with the matured labels at each update."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from mabwiser.mab import MAB, LearningPolicy

        self.columns = [(f, v) for f, values in FEATURES.items() for v in values]
        self.mab = MAB(list(range(ARMS)), LearningPolicy.LinTS(alpha=0.25), seed=seed)
        self.fitted = False
        self.rng = random.Random(seed)

    def _x(self, context: dict[str, str]) -> list[float]:
        return [1.0 if context.get(f) == v else 0.0 for f, v in self.columns]

    def choose(self, visit: Visit, now_ms: int) -> int:
        if not self.fitted:
            return self.rng.randrange(ARMS)
        return int(self.mab.predict([self._x(visit.context)]))

    def update(
        self, now_ms: int, shown: list[tuple[Visit, int, int]], arrived: list[tuple[Visit, int, int]]
    ) -> None:
        ready = self.ready(now_ms, shown, arrived)
        if not ready:
            return
        decisions = [arm for _, arm, _ in ready]
        rewards = [reward for _, _, reward in ready]
        contexts = np.array([self._x(v.context) for v, _, _ in ready])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.fitted:
                self.mab.partial_fit(decisions, rewards, contexts)
            else:
                self.mab.fit(decisions, rewards, contexts)
        self.fitted = True
