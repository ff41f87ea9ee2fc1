"""Learning quality: how much of the oracle's lift each policy captures, on the same visitors.

A simulation drives Perch's real pipeline in-process -- ``control_plane.events.ingest.ingest``
into SQLite, ``publish_experiment`` (learner, promotion gate, encode, KV), and
``core.decide`` on the decoded snapshot -- with a publish lag, and runs the peers on
the same stream:

* the oracle (true best arm per visitor) and uniform, both in expectation;
* context-free Thompson sampling and per-cell Thompson sampling with instant updates;
* Vowpal Wabbit ``--cb_explore_adf`` with ``--squarecb`` and with epsilon-greedy;
* MABWiser ``LinTS`` over the one-hot context.

Environments (4 arms; device, source and country, some cells rare):

* ``additive``: effects add up in the logit;
* ``interactions``: the best arm is set by the (device, source) pair;
* ``switching``: additive, and every feature's effects move to other arms half-way;
* ``context-free``: only the arms differ.

Every environment has returning visitors (30 %) and conversion delays (exponential,
mean ``DELAY_MEAN_S``, against a publish every ``PUBLISH_EVERY`` visits). Common random
numbers: the visitors, their contexts, each visit's conversion draw and delay are fixed
by the seed, so every policy sees the same stream. A policy's score is the expected
reward of what it showed (the true rate), so the comparison carries no conversion noise:
``captured = (policy - uniform) / (oracle - uniform)`` and regret ``= oracle - policy``,
summed over visits.
"""

from __future__ import annotations

import importlib.util
import itertools
import multiprocessing
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.learning_peers import BetaTS, LinTS, Uniform, VowpalWabbit
from benchmarks.learning_world import (
    ARMS,
    DELAY_MEAN_S,
    ENVIRONMENTS,
    FEATURES,
    PUBLISH_EVERY,
    RETURNING,
    START_MS,
    VISIT_MS,
    WINDOW_S,
    Environment,
    Policy,
    Visit,
    environment,
    simulate,
    stream,
)
from control_plane.distribution.kv_publishers import LocalKVPublisher
from control_plane.events.ingest import ingest
from control_plane.experiments import ExperimentSpec
from control_plane.learning.publish import publish_experiment
from control_plane.metrics import Metrics
from control_plane.storage.store import Store
from core import LocalKV, decide, decode_snapshot, exposure_event, outcome_event, snapshot_key

__all__ = ["ENVIRONMENTS", "POLICIES", "Environment", "run", "simulate"]


class Perch:
    """Perch's own loop: events through ingestion, learn and publish, decide on the decoded snapshot."""

    def __init__(self, root: Path, model: str, seed: int, contextual: dict[str, Any] | None = None) -> None:
        root.mkdir(parents=True)
        self.store = Store.from_url(f"sqlite:///{root / 'perch.db'}", "bench-unit-key")
        self.store.migrate()
        self.spec = ExperimentSpec.create(
            {
                "key": "bench",
                "arms": [{"key": f"a{i}"} for i in range(ARMS)],
                "default_arm": "a0",
                "features": list(FEATURES),
                "model": model,
                **({"contextual": contextual} if contextual else {}),
                "holdout": 0.0,
                "reward": {"kind": "binary", "window_s": WINDOW_S},
            }
        )
        self.record = self.store.create_experiment(self.spec, START_MS)
        self.kv = LocalKV(root)
        self.publisher = LocalKVPublisher(self.kv)
        self.metrics = Metrics()
        self.snapshot: Any = None
        self.rng = random.Random(seed)
        self.decisions: dict[int, str] = {}
        self.events: list[dict[str, Any]] = []
        self.learn_s: list[float] = []

    def choose(self, visit: Visit, now_ms: int) -> int:
        if self.snapshot is None:
            return self.rng.randrange(ARMS)
        d = decide(self.snapshot, f"v{visit.visitor}", visit.context, now_ms=now_ms, rng=self.rng)
        self.decisions[visit.index] = d.decision_id
        self.events.append(exposure_event(d, f"v{visit.visitor}", now_ms, dict(visit.context)))
        return self.snapshot.arm_index[d.arm]

    def update(
        self, now_ms: int, shown: list[tuple[Visit, int, int]], arrived: list[tuple[Visit, int, int]]
    ) -> None:
        batch = list(self.events)
        self.events.clear()
        for visit, _, ts in arrived:
            decision = self.decisions.get(visit.index)
            if decision is not None:
                batch.append(
                    outcome_event(decision, "bench", 1.0, ts_ms=ts + visit.delay_ms, unit=f"v{visit.visitor}")
                )
        for start in range(0, len(batch), 5_000):
            ingest(self.store, batch[start : start + 5_000], None, now_ms)
        started = time.perf_counter()
        publish_experiment(
            self.store,
            self.publisher,
            self.record,
            self.metrics,
            now_ms=lambda: now_ms,
            force=True,
            sleep=lambda _: None,
        )
        self.learn_s.append(time.perf_counter() - started)
        self.snapshot = decode_snapshot(self.kv.get(snapshot_key("bench")) or b"")


PEER_PACKAGES = {
    "VW squarecb": "vowpalwabbit",
    "VW epsilon-greedy": "vowpalwabbit",
    "MABWiser LinTS": "mabwiser",
}
POLICIES = (
    "uniform",
    "context-free TS",
    "per-cell TS (instant)",
    "VW squarecb",
    "VW epsilon-greedy",
    "MABWiser LinTS",
    "Perch segments",
    "Perch contextual",
)


def _policy(name: str, seed: int, root: Path) -> tuple[Policy, bool]:
    if name == "uniform":
        return Uniform(seed), False
    if name == "context-free TS":
        return BetaTS(seed, per_cell=False), False
    if name == "per-cell TS (instant)":
        return BetaTS(seed, per_cell=True), True
    if name == "VW squarecb":
        return VowpalWabbit(seed, "--squarecb"), False
    if name == "VW epsilon-greedy":
        return VowpalWabbit(seed, "--epsilon 0.05"), False
    if name == "MABWiser LinTS":
        return LinTS(seed), False
    if name == "Perch contextual, no interactions":
        return Perch(root / f"no-pairs-{seed}", "contextual", seed, {"interactions": []}), False
    if name.startswith("Perch contextual explore="):
        explore = float(name.split("=")[1])
        return Perch(root / f"explore-{explore}-{seed}", "contextual", seed, {"explore": explore}), False
    if name.startswith("Perch"):
        return Perch(root / f"{name.split()[1]}-{seed}", name.split()[1], seed), False
    raise ValueError(name)


def _one(args: tuple[str, str, int, int, str]) -> dict[str, Any]:
    env_name, policy_name, seed, visitors, root = args
    env = environment(env_name, seed)
    visits = stream(env, visitors, seed)
    policy, instant = _policy(policy_name, seed, Path(root) / f"{env_name}-{policy_name.replace(' ', '_')}")
    started = time.perf_counter()
    got = simulate(env, visits, policy, instant)
    seconds = time.perf_counter() - started
    if hasattr(policy, "close"):
        policy.close()
    oracle = np.array([v.rates.max() for v in visits])
    uniform = np.array([v.rates.mean() for v in visits])
    out = {
        "environment": env_name,
        "policy": policy_name,
        "seed": seed,
        "reward": float(got.sum()),
        "oracle": float(oracle.sum()),
        "uniform": float(uniform.sum()),
        "seconds": seconds,
    }
    if isinstance(policy, Perch) and policy.learn_s:
        out["publish_p50_s"] = float(np.median(policy.learn_s))
    return out


def run(
    *,
    visitors: int = 100_000,
    seeds: Sequence[int] = (1, 2, 3, 4, 5, 6),
    environments: Sequence[str] = ENVIRONMENTS,
    policies: Sequence[str] = POLICIES,
    processes: int = 2,
) -> dict[str, Any]:
    """Every (environment, policy, seed) once; figures averaged over seeds.

    Six seeds, not three: one peer's share of the oracle's lift ranged from 18 % to 87 % over
    six seeds of one world, so three could not rank the policies (measured when choosing
    ``explore``: the 3-seed verdicts flipped on seeds 4-6).

    A peer whose package is not installed (the ``bench`` extra) is left out and listed.
    """
    skipped = sorted(
        {p for p in policies if p in PEER_PACKAGES and importlib.util.find_spec(PEER_PACKAGES[p]) is None}
    )
    policies = [p for p in policies if p not in skipped]
    with tempfile.TemporaryDirectory(prefix="perch-bench-learning-") as root:
        jobs = [(e, p, s, visitors, root) for e in environments for p in policies for s in seeds]
        if processes > 1:
            with multiprocessing.get_context("spawn").Pool(processes) as pool:
                rows = pool.map(_one, jobs, chunksize=1)
        else:
            rows = [_one(job) for job in jobs]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for (env_name, policy_name), group in itertools.groupby(
        sorted(rows, key=lambda r: (r["environment"], r["policy"])),
        key=lambda r: (r["environment"], r["policy"]),
    ):
        items = list(group)
        captured = [(r["reward"] - r["uniform"]) / (r["oracle"] - r["uniform"]) for r in items]
        table.setdefault(env_name, {})[policy_name] = {
            "captured": float(np.mean(captured)),
            "captured_min": float(np.min(captured)),
            "captured_max": float(np.max(captured)),
            "regret": float(np.mean([r["oracle"] - r["reward"] for r in items])),
            "seconds": float(np.mean([r["seconds"] for r in items])),
            **(
                {"publish_p50_s": float(np.mean([r["publish_p50_s"] for r in items]))}
                if "publish_p50_s" in items[0]
                else {}
            ),
        }
    return {
        "visitors": visitors,
        "seeds": list(seeds),
        "publish_every": PUBLISH_EVERY,
        "delay_mean_s": DELAY_MEAN_S,
        "visit_ms": VISIT_MS,
        "returning": RETURNING,
        "table": table,
        "skipped": skipped,
    }
