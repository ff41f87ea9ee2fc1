from __future__ import annotations

from typing import Any

import pytest

from core import Arm, Segment, Snapshot

NOW_MS = 1_780_000_000_000


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
        "created_at": NOW_MS - 60_000,
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


@pytest.fixture
def snapshot() -> Snapshot:
    return build_snapshot()
