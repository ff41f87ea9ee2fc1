"""The benchmark targets: one table, read by RESULTS.md's headline (benchmarks/report.py) and held
against README.md's headline by benchmarks/test_targets.py, so the two cannot drift apart."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["README_ROWS", "TARGETS", "Target", "readme_target"]


@dataclass(frozen=True)
class Target:
    """``limit`` is in the unit the benchmark reports (µs, s, a ratio, a share, events/s); ``text``
    is how both reports state it."""

    limit: float
    text: str
    higher_is_better: bool = False

    def met(self, value: float) -> bool:
        return value >= self.limit if self.higher_is_better else value <= self.limit

    def verdict(self, value: float | None) -> str:
        if value is None:
            return "not measured"
        return "met" if self.met(value) else "**missed**"


TARGETS: dict[str, Target] = {
    "pyodide.warm_p99_us": Target(200, "≤ 0.2 ms"),
    "pyodide.cold_p99_us": Target(1000, "≤ 1 ms"),
    "pyodide.fetch_p99_us": Target(1000, "≤ 1 ms"),
    "pyodide.contextual.warm_p99_us": Target(200, "≤ 0.2 ms"),
    "pyodide.contextual.cold_p99_us": Target(1000, "≤ 1 ms"),
    "pyodide.contextual.fetch_p99_us": Target(1150, "≤ 1.15 ms"),
    # A ranked decision point: 5 positions from 50 items (core.slate).
    "pyodide.ranked.decide_p99_us": Target(500, "≤ 0.5 ms"),
    # Reading a visitor's profile (KV in memory) and adding it to the context, on top of the request.
    "pyodide.profile_overhead_p99_us": Target(300, "≤ 0.3 ms"),
    "core.mabwiser_ratio": Target(5.0, "≥ 5x", higher_is_better=True),
    # The cycle at the most exposures may take at most this factor (plus 50 ms) of the cycle at
    # the fewest: the statistics are aggregates, so its time must not grow with the traffic.
    "learner.growth": Target(1.5, "flat"),
    "learner.contextual_cycle_s": Target(2.0, "≤ 2 s"),
    "learning.additive_captured": Target(0.75, "≥ 75 %", higher_is_better=True),
    # Perch contextual's captured share minus the best peer's, per world.
    "learning.ahead": Target(0.0, "ahead", higher_is_better=True),
    "learning.context_free_behind": Target(0.03, "within 3 points"),
    "consume.events_per_s": Target(25_000, "≥ 25,000 events/s", higher_is_better=True),
    "consume.chdb_events_per_s": Target(30_000, "≥ 30,000 events/s", higher_is_better=True),
    "clickhouse.bytes_per_exposure": Target(60, "≤ 60 B"),
    "clickhouse.cell_read_ms": Target(100, "≤ 100 ms"),
    # A profile cycle costs O(changed visitors): 10x the profiles held, the same changed, the same cost.
    "profiles.growth": Target(1.5, "flat (≤ 1.5x)"),
}

# README.md's headline rows (under "## Benchmarks"), by the start of their figure, and the targets
# each one states: several targets of one unit read "≤ 1 / 1.15 ms", others are joined by commas.
README_ROWS: dict[str, tuple[str, ...]] = {
    "Pyodide 314 (Node 24): warm `decide` p99": ("pyodide.warm_p99_us", "pyodide.contextual.warm_p99_us"),
    "Pyodide: cold path": ("pyodide.cold_p99_us", "pyodide.contextual.cold_p99_us"),
    "Pyodide: whole `Default.fetch` p99": ("pyodide.fetch_p99_us", "pyodide.contextual.fetch_p99_us"),
    "Pyodide: profile hydration": ("pyodide.profile_overhead_p99_us",),
    "Pyodide: ranked `decide`": ("pyodide.ranked.decide_p99_us",),
    "CPython: MABWiser TS `predict` time": ("core.mabwiser_ratio",),
    "learn-and-publish cycle, contextual": ("learner.contextual_cycle_s",),
    "learning, share of the oracle's lift": ("learning.additive_captured", "learning.ahead"),
    "… interactions world": ("learning.ahead",),
    "… best arms switching half-way": ("learning.ahead",),
    "… context-free world": ("learning.context_free_behind",),
    "event path": ("consume.events_per_s",),
    "… HTTP `/v1/events`, after ÷ before": (),  # measured apart: RESULTS-event-path.md
    "… into ClickHouse (chDB)": ("consume.chdb_events_per_s",),
    "ClickHouse (chDB): bytes per stored exposure": ("clickhouse.bytes_per_exposure",),
    "ClickHouse (chDB): learner's cell read": ("clickhouse.cell_read_ms",),
    "ClickHouse (chDB): ingestion's store step": (),  # no target: how lookups grow with the table
    "profile cycle": ("profiles.growth",),
}

_BOUND = re.compile(r"^([≤≥]) ([\d.,]+) (.+)$")


def readme_target(keys: tuple[str, ...]) -> str:
    """The README's statement of ``keys``' targets, numbers only (the README drops "events/s")."""
    texts = list(dict.fromkeys(TARGETS[k].text for k in keys))
    bounds = [_BOUND.match(t) for t in texts]
    if len(texts) > 1 and all(bounds):
        ops_units = {(b[1], b[3]) for b in bounds if b}
        if len(ops_units) == 1:
            ((op, unit),) = ops_units
            return f"{op} {' / '.join(b[2] for b in bounds if b)} {unit}"
    return ", ".join(re.sub(r" events/s$", "", t) for t in texts)
