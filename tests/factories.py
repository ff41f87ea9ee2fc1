"""The builders tests across the tree share: an experiment spec, events, a snapshot.

Their defaults fit together (the spec's "hero" takes the events' arms and features; every clock
starts at NOW), so a test states only what it is about. They live here, not in a conftest or
a test module, because tests in other directories import them.
"""

from __future__ import annotations

from typing import Any

from control_plane.experiments import ExperimentSpec
from core import Arm, Segment, Snapshot

__all__ = ["HOUR", "NOW", "UNIT_KEY", "build_snapshot", "exposure", "outcome", "spec"]

NOW = 1_780_000_000_000  # ms; a fixed clock keeps stored rows and snapshots reproducible
HOUR = 3_600_000
UNIT_KEY = "test-unit-key"  # the store's key for unit hashes


def spec(**overrides: object) -> ExperimentSpec:
    """The "hero" experiment: arms a, b and c, contextual on device and source."""
    doc: dict[str, object] = {
        "key": "hero",
        "arms": [{"key": "a", "html": "<b>A</b>"}, {"key": "b", "payload": {"x": 1}}, {"key": "c"}],
        "default_arm": "a",
        "features": ["device", "source"],
        "holdout": 0.1,
        "floor": 0.05,
    }
    doc.update(overrides)
    return ExperimentSpec.from_dict(doc)


def exposure(
    i: int,
    *,
    arm: str = "b",
    reason: str = "personalized",
    ts: int = NOW,
    unit: str | None = "auto",
    context: dict[str, str] | None = None,
    experiment: str = "hero",
) -> dict[str, Any]:
    """An exposure event; by default each decision is a visitor of its own (segments need several)."""
    if unit == "auto":
        unit = f"u-{i}"
    return {
        "type": "exposure",
        "id": f"x-{i:032x}",
        "ts": ts,
        "decision_id": f"{i:032x}",
        "experiment": experiment,
        "arm": arm,
        "unit": unit,
        "propensity": 0.5,
        "reason": reason,
        "segment": "all",
        "snapshot_version": 1,
        "context": {"device": "mobile", "source": "search"} if context is None else context,
    }


def outcome(i: int, *, value: float = 1.0, ts: int = NOW + 1000, event: str | None = None) -> dict[str, Any]:
    """The outcome of ``exposure(i)``'s decision."""
    return {
        "type": "outcome",
        "id": event or f"o-{i}",
        "ts": ts,
        "decision_id": f"{i:032x}",
        "experiment": "hero",
        "value": value,
        "unit": "u-1",
    }


def build_snapshot(**overrides: Any) -> Snapshot:
    """A valid 3-arm, 4-segment snapshot; keyword arguments replace fields."""
    arms = [Arm("control", {"headline": "Welcome"}), Arm("bold", html="<h1>Go</h1>"), Arm("calm")]
    segments = [
        Segment("all"),
        Segment("mobile", {"device": "mobile"}, 0),
        Segment("search", {"source": "search"}, 0),
        Segment("mobile-search", {"device": "mobile", "source": "search"}, 1),
    ]
    fields: dict[str, Any] = {
        "experiment": "home-hero",
        "version": 7,
        "created_at": NOW - 60_000,
        "max_age_s": 3600.0,
        "salt": "home-hero",
        "default_arm": "control",
        "holdout": 0.1,
        "floor": 0.05,
        "arms": arms,
        "segments": segments,
        "alpha": [2.0, 30.0, 5.0] * 4,
        "beta": [50.0, 40.0, 60.0] * 4,
        "allocation": [0.1, 0.8, 0.1] * 4,
    }
    fields.update(overrides)
    return Snapshot(**fields)


def build_ranked_snapshot(items: int = 20, slots: int = 5, groups: int = 4, **overrides: Any) -> Snapshot:
    """A ranked decision point: ``items`` items in ``groups`` groups (item i in group i % groups),
    two segments, item i's Beta mean rising with i; keyword arguments replace fields."""
    from core import Ranking

    arms = [Arm(f"item-{i}", {"sku": i}, html=f"<li>item {i}</li>") for i in range(items)]
    segments = [Segment("all"), Segment("mobile", {"device": "mobile"}, 0)]
    names = [f"g{i % groups}" for i in range(items)]
    fields: dict[str, Any] = {
        "experiment": "recs",
        "version": 3,
        "created_at": NOW - 60_000,
        "max_age_s": 3600.0,
        "salt": "recs",
        "default_arm": "item-0",
        "holdout": 0.0,
        "floor": 0.0,
        "arms": arms,
        "segments": segments,
        "alpha": [1.0 + 4 * i for i in range(items)] * 2,
        "beta": [400.0] * items * 2,
        "allocation": [1.0 / items] * items * 2,
        "ranking": Ranking(slots, 0.2, names, [0.0] * items * 2),
    }
    fields.update(overrides)
    return Snapshot(**fields)
