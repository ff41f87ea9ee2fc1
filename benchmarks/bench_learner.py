"""Learner scaling: one learn-and-publish cycle as events and as segments x arms grow.

The cycle is ``control_plane.learning.publish.publish_experiment`` (force=True) on a
SQLite store and the local KV publisher: read the cells, learn (segment
tree, shrinkage, 20,000-draw Monte Carlo allocation), the promotion gate
(SNIPS of the candidate and of the current snapshot on the newest logged
exposures, at most ``Gate.max_exposures`` of them), encode, write KV, record
the snapshot.  One untimed cycle first publishes a current snapshot, so the
timed ones are the steady state, gate included.

It reads cells, never all events, so its time should not move with the
number of events: the event series writes the statistics directly
(``stats`` rows, as ingestion leaves them) for 10^4 .. 10^7 exposures over a
fixed population of contexts, plus the newest ``min(N, LOGGED_ROWS)``
exposure rows the gate reads (it never reads more than 20,000, through the
(experiment, ts) index).  For the smaller sizes it also ingests the same
number of real exposures and their outcomes through
``control_plane.events.ingest.ingest`` and runs the same cycle on what they left.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import load_average
from benchmarks.shapes import HEADLINE, SEED, SHAPES, leaf_paths
from control_plane.distribution.kv_publishers import LocalKVPublisher
from control_plane.events.ingest import ingest
from control_plane.experiments import ExperimentSpec
from control_plane.learning import publish
from control_plane.learning.publish import publish_experiment
from control_plane.metrics import Metrics
from control_plane.storage.schema import exposures, stats
from control_plane.storage.store import Store
from core import LocalKV

__all__ = ["run"]

UNIT_KEY = "bench-unit-key-0123456789"
NOW = 1_780_000_000_000
BATCH = 100
LOGGED_ROWS = 25_000  # > Gate.max_exposures: the gate reads a full window


def _spec(arms: int, segments: int) -> ExperimentSpec:
    return ExperimentSpec.from_dict(
        {
            "key": f"learn-{arms}x{segments}",
            "arms": [{"key": f"a{i}", "html": f"<b>variant {i}</b>"} for i in range(arms)],
            "default_arm": "a0",
            "features": ["device", "source"] if segments > 1 else [],
            "holdout": 0.0,
            "floor": 0.05,
            "max_segments": max(segments, 1),
        }
    )


class _Population:
    """Where N synthetic exposures fall: paths by a Zipf-like weight, arms uniformly,
    conversions at a true rate per (path, arm); all from the one seed."""

    def __init__(self, arms: int, segments: int) -> None:
        self.paths = leaf_paths(segments)
        self.arms = arms
        rng = np.random.default_rng(SEED)
        weights = 1.0 / np.arange(1, len(self.paths) + 1) ** 0.8
        self.path_p = weights / weights.sum()
        self.rates = rng.uniform(0.01, 0.2, size=(len(self.paths), arms))

    def counts(self, events: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(SEED + events)
        cell_p = np.repeat(self.path_p / self.arms, self.arms)
        n = rng.multinomial(events, cell_p).reshape(len(self.paths), self.arms)
        return n, rng.binomial(n, self.rates)

    def logged(self, count: int, experiment: str) -> list[dict[str, Any]]:
        """The newest ``count`` exposure rows, as ingestion stores them (uniform logging)."""
        rng = np.random.default_rng(SEED + 1)
        paths = rng.choice(len(self.paths), size=count, p=self.path_p)
        arms = rng.integers(0, self.arms, size=count)
        converted = rng.random(count) < self.rates[paths, arms]
        return [
            {
                "decision_id": f"{i:032x}",
                "experiment": experiment,
                "arm": f"a{int(a)}",
                "unit_hash": None,
                "path": json.dumps(list(self.paths[int(p)])),
                "segment": None,
                "reason": "personalized",
                "propensity": 1.0 / self.arms,
                "snapshot_version": 1,
                "ts_ms": NOW - 1_000 - i,
                "reward": float(c),
                "outcomes": int(c),
            }
            for i, (p, a, c) in enumerate(zip(paths, arms, converted, strict=True))
        ]

    def events(self, count: int) -> list[dict[str, Any]]:
        """``count`` real exposure events and the outcomes of those that convert."""
        rng = random.Random(SEED)
        path_index = rng.choices(range(len(self.paths)), weights=self.path_p.tolist(), k=count)
        out: list[dict[str, Any]] = []
        for i, p in enumerate(path_index):
            path = self.paths[p]
            arm = rng.randrange(self.arms)
            decision = f"{rng.getrandbits(128):032x}"
            context = dict(zip(("device", "source"), path, strict=False))
            out.append(_exposure(decision, f"a{arm}", context, NOW - 60_000 + i))
            if rng.random() < self.rates[p, arm]:
                out.append(_outcome(decision, NOW - 30_000 + i))
        return out


def _exposure(
    decision: str, arm: str, context: dict[str, str], ts: int, experiment: str = ""
) -> dict[str, Any]:
    return {
        "type": "exposure",
        "id": f"x-{decision}",
        "ts": ts,
        "decision_id": decision,
        "experiment": experiment,
        "arm": arm,
        "unit": f"u-{decision[:12]}",
        "propensity": 0.1,
        "reason": "personalized",
        "segment": "all",
        "snapshot_version": 1,
        "context": context,
    }


def _outcome(decision: str, ts: int, experiment: str = "") -> dict[str, Any]:
    return {
        "type": "outcome",
        "id": f"o-{decision}",
        "ts": ts,
        "decision_id": decision,
        "experiment": experiment,
        "value": 1.0,
        "unit": f"u-{decision[:12]}",
    }


@contextmanager
def _timed(owner: Any, name: str, parts: dict[str, float], key: str, seen: dict[str, Any]) -> Iterator[None]:
    """Time every call of ``owner.name`` during the block (and keep its last result)."""
    original = getattr(owner, name, None)
    if original is None:  # the cycle no longer has this part: nothing to time
        yield
        return

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            seen[name] = original(*args, **kwargs)
            return seen[name]
        finally:
            parts[key] += time.perf_counter() - started

    setattr(owner, name, timed)
    try:
        yield
    finally:
        if owner is publish:
            setattr(owner, name, original)
        else:
            delattr(owner, name)  # an instance attribute shadowing the method


class _ContextualPopulation(_Population):
    """``paths`` distinct contexts over ``features`` features of ``values`` values each: with 50 arms,
    4 x 48 and 2,000 paths this is the issue's 50 arms x 200 columns x 10^5 cells."""

    def __init__(self, arms: int, features: int, values: int, paths: int) -> None:
        rng = np.random.default_rng(SEED)
        seen: set[tuple[str, ...]] = set()
        while len(seen) < paths:
            seen.add(tuple(f"v{int(v)}" for v in rng.integers(0, values, size=features)))
        self.paths = sorted(seen)
        self.arms = arms
        weights = 1.0 / np.arange(1, paths + 1) ** 0.5
        self.path_p = weights / weights.sum()
        self.rates = rng.uniform(0.01, 0.2, size=(paths, arms))

    def logged(self, count: int, experiment: str) -> list[dict[str, Any]]:
        # With visitors: a value gets a model column only once enough distinct visitors have it.
        rows = super().logged(count, experiment)
        for i, row in enumerate(rows):
            row["unit_hash"] = f"{i:032x}"
        return rows


def _contextual_spec(arms: int, features: int, values: int) -> ExperimentSpec:
    return ExperimentSpec.create(
        {
            "key": f"learn-ctx-{arms}x{features}x{values}",
            "arms": [{"key": f"a{i}"} for i in range(arms)],
            "default_arm": "a0",
            "features": [f"f{j}" for j in range(features)],
            "holdout": 0.0,
            "floor": 0.05,
            "min_segment_units": 1,
            "contextual": {"max_values": values, "interactions": []},  # the 200-column shape
        }
    )


class _Bench:
    def __init__(self, root: Path, name: str, spec: ExperimentSpec) -> None:
        self.root = root / name
        self.root.mkdir(parents=True)
        self.store = Store.from_url(f"sqlite:///{self.root / 'perch.db'}", UNIT_KEY)
        self.store.migrate()
        self.store.create_experiment(spec, NOW)
        self.spec = spec
        self.kv = LocalKVPublisher(LocalKV(self.root))
        self.metrics = Metrics()

    def write_cells(self, population: _Population, n: np.ndarray, r: np.ndarray) -> None:
        rows = [
            {
                "experiment": self.spec.key,
                "path": json.dumps(list(path)),
                "arm": f"a{a}",
                "exposures": float(n[p, a]),
                "reward": float(r[p, a]),
                "decayed_exposures": float(n[p, a]),
                "decayed_reward": float(r[p, a]),
                "ref_ms": NOW,
            }
            for p, path in enumerate(population.paths)
            for a in range(population.arms)
            if n[p, a] > 0
        ]
        logged = population.logged(min(int(n.sum()), LOGGED_ROWS), self.spec.key)
        with self.store.write() as conn:
            conn.execute(stats.insert(), rows)
            conn.execute(exposures.insert(), logged)

    def ingest_events(self, events: list[dict[str, Any]]) -> float:
        for event in events:
            event["experiment"] = self.spec.key
        started = time.perf_counter()
        for i in range(0, len(events), BATCH):
            ingest(self.store, events[i : i + BATCH], f"bench-{i}", NOW)
        return time.perf_counter() - started

    def cycle(self) -> dict[str, Any]:
        """One forced learn-and-publish, with the time of its parts taken inside it."""
        record = self.store.get_experiment(self.spec.key)
        assert record is not None
        parts = {"cells_read_s": 0.0, "learn_s": 0.0, "gate_s": 0.0}
        seen: dict[str, Any] = {}
        with (
            _timed(self.store, "cells", parts, "cells_read_s", seen),
            _timed(publish, "learn", parts, "learn_s", seen),
            _timed(publish, "_gate", parts, "gate_s", seen),
        ):
            started = time.perf_counter()
            result = publish_experiment(
                self.store,
                self.kv,
                record,
                self.metrics,
                now_ms=lambda: NOW,
                force=True,
                sleep=lambda _: None,  # the 1 write/s KV pacing is not the cycle's cost
            )
            total = time.perf_counter() - started
        cells, snapshot = seen["cells"], seen["learn"]
        return {
            "published": result.reason,
            "cycle_s": total,
            **parts,
            "rest_s": total - sum(parts.values()),
            "bytes": result.bytes,
            "segments": len(snapshot.segments),
            "cells": sum(len(arms) for arms in cells.values()),
            "exposures": round(sum(c.exposures for arms in cells.values() for c in arms.values())),
        }

    def close(self) -> None:
        self.store.engine.dispose()


def _repeat(bench: _Bench, repeats: int, budget_s: float) -> dict[str, Any]:
    bench.cycle()  # publishes the current snapshot: the timed cycles meet the promotion gate
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    while len(runs) < repeats and (not runs or time.monotonic() - started < budget_s):
        runs.append(bench.cycle())

    def median(key: str) -> float:
        return float(np.median([r[key] for r in runs]))

    timed = ("cycle_s", "cells_read_s", "learn_s", "gate_s", "rest_s")
    return {
        **{k: v for k, v in runs[0].items() if k not in timed},
        "runs": len(runs),
        **{k: median(k) for k in timed},
    }


def _with_bench(root: Path, name: str, spec: ExperimentSpec, fill: Callable[[_Bench], Any]) -> Any:
    bench = _Bench(root, name, spec)
    try:
        return fill(bench)
    finally:
        bench.close()


def _synthetic(population: _Population, size: int, repeats: int, budget_s: float) -> Callable[[_Bench], Any]:
    """Statistics for ``size`` exposures written as ingestion leaves them, then the timed cycles."""

    def fill(bench: _Bench) -> Any:
        bench.write_cells(population, *population.counts(size))
        return _repeat(bench, repeats, budget_s)

    return fill


def _ingested(population: _Population, size: int, repeats: int, budget_s: float) -> Callable[[_Bench], Any]:
    """``size`` exposures and their outcomes through real ingestion, then the timed cycles."""

    def fill(bench: _Bench) -> Any:
        events = population.events(size)
        seconds = bench.ingest_events(events)
        result = _repeat(bench, repeats, budget_s)
        result["ingest_s"] = seconds
        result["events_ingested"] = len(events)
        return result

    return fill


def _grid(
    root: Path, grid: tuple[tuple[int, int], ...], grid_events: int, repeats: int, budget_s: float
) -> dict[str, Any]:
    out = {}
    for arms, segments in grid:
        population = _Population(arms, segments)
        fill = _synthetic(population, grid_events, repeats, budget_s)
        out[f"{arms}x{segments}"] = _with_bench(root, f"grid-{arms}x{segments}", _spec(arms, segments), fill)
    return out


def _contextual(
    root: Path, contextual: tuple[int, int, int, int], grid_events: int, repeats: int, budget_s: float
) -> dict[str, Any]:
    population = _ContextualPopulation(*contextual)

    def fill(bench: _Bench) -> Any:
        bench.write_cells(population, *population.counts(grid_events))
        return _repeat(bench, repeats, budget_s)

    arms, features, values, _ = contextual
    result = _with_bench(root, "contextual", _contextual_spec(arms, features, values), fill)
    return {
        "arms": arms,
        "features": features,
        "values": values,
        "columns": 1 + features * (values + 2),
        **result,
    }


def run(
    *,
    event_sizes: tuple[int, ...] = (10**4, 10**5, 10**6, 10**7),
    verify_sizes: tuple[int, ...] = (10**4,),
    grid: tuple[tuple[int, int], ...] = SHAPES,
    grid_events: int = 10**6,
    repeats: int = 3,
    budget_s: float = 8.0,
    shape: tuple[int, int] = HEADLINE,
    contextual: tuple[int, int, int, int] = (50, 4, 48, 2_000),
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="perch-bench-learner-"))
    out: dict[str, Any] = {"load_before": load_average(), "shape": "{}x{}".format(*shape)}
    try:
        population = _Population(*shape)
        spec = _spec(*shape)
        out["events"] = {
            str(size): _with_bench(
                root, f"events-{size}", spec, _synthetic(population, size, repeats, budget_s)
            )
            for size in event_sizes
        }
        out["ingested"] = {
            str(size): _with_bench(
                root, f"ingested-{size}", spec, _ingested(population, size, repeats, budget_s)
            )
            for size in verify_sizes
        }
        out["grid_events"] = grid_events
        out["grid"] = _grid(root, grid, grid_events, repeats, budget_s)
        out["contextual"] = _contextual(root, contextual, grid_events, repeats, budget_s)
        out["load_after"] = load_average()
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)
