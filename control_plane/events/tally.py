"""What one ingest transaction adds up: its result counts, the cell deltas and counter bumps.

Gathered in memory while a batch (or a group of batches) is stored, and written last in a few
statements (:meth:`Cells.flush`), so the statistics cost a commit one append, not a row lock.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from control_plane.experiments import ExperimentSpec
from control_plane.storage.stats import Deltas
from control_plane.storage.store import Store
from core import feature_path

__all__ = ["Cells", "IngestResult", "Paths", "path_of"]


@dataclass
class IngestResult:
    accepted: dict[str, int] = field(default_factory=lambda: {"exposure": 0, "outcome": 0, "stitch": 0})
    duplicates: int = 0
    joined: int = 0
    late: int = 0
    pending: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "joined": self.joined,
            "late": self.late,
            "pending": self.pending,
        }


def path_of(spec: ExperimentSpec, context: dict[str, str]) -> list[str]:
    """The exposure's cell: the experiment's features in order (absent ones as 'unknown')."""
    return list(feature_path(spec.features, context))


class Paths:
    """Each exposure's cell as stored (JSON of its feature path), made once per distinct context:
    a group of thousands of events holds a few hundred contexts."""

    def __init__(self, specs: Mapping[str, ExperimentSpec]) -> None:
        self.specs = specs
        self.made: dict[tuple[str, tuple[Any, ...]], str] = {}

    def of(self, experiment: str, context: dict[str, Any]) -> str:
        spec = self.specs.get(experiment)
        if spec is None:
            return "[]"
        key = (experiment, tuple([context.get(name) for name in spec.features]))
        path = self.made.get(key)
        if path is None:
            path = self.made[key] = json.dumps(path_of(spec, context))
        return path


class Cells:
    """Cell deltas and counter bumps gathered over a transaction, written last in a few statements.

    The deltas are appended (control_plane.storage.stats): no statistics row is read or locked, so
    concurrent writers (group commits, consumers) never wait on each other for them.
    """

    def __init__(self) -> None:
        self.deltas = Deltas()
        self.bumps: Counter[tuple[str, str]] = Counter()
        self.specs: dict[str, ExperimentSpec] = {}  # of the experiments with deltas (half-lives)
        # An event stamped after the batch arrived (a skewed clock) counts as arriving now: its mass
        # relative to a later hour would weigh up to 2^60 times one event when read before it.
        self.now_ms: int | None = None

    def add(self, experiment: str, path: str, arm: str, *, ts: int, n: float, r: float) -> None:
        half_life = self.specs[experiment].half_life_s
        if self.now_ms is not None:
            ts = min(ts, self.now_ms)
        self.deltas.add(experiment, path, arm, ts=ts, n=n, r=r, half_life_s=half_life)

    def bump(self, experiment: str, name: str) -> None:
        self.bumps[experiment, name] += 1

    def flush(self, store: Store, conn: Connection) -> None:
        self.deltas.append(conn)
        # Sorted, so concurrent writers take the counter rows in one order and cannot deadlock.
        for (experiment, name), by in sorted(self.bumps.items()):
            store.bump(conn, experiment, name, by)
        self.bumps.clear()
