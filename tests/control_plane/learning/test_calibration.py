"""The calibration check: observed against predicted, per arm and feature value."""

from __future__ import annotations

import pytest

from control_plane.experiments import ExperimentSpec
from control_plane.learning.calibration import ALERT_Z, calibration
from control_plane.learning.contextual_learner import learn_contextual
from control_plane.storage.stats import CellStats
from core import Arm, Segment, Snapshot

SPEC = ExperimentSpec.create(
    {"key": "hero", "arms": [{"key": "a"}, {"key": "b"}], "default_arm": "a", "features": ["device"]}
)
PATHS = [("mobile",), ("desktop",)]


def fitted() -> Snapshot:
    cells = {p: {"a": CellStats(20_000.0, 1000.0), "b": CellStats(20_000.0, 1000.0)} for p in PATHS}
    return learn_contextual(SPEC, cells, version=1, now_ms=0)


def test_a_changed_arm_and_value_are_named_and_the_rest_is_quiet() -> None:
    snap = fitted()
    recent = {p: {"a": CellStats(2000.0, 100.0), "b": CellStats(2000.0, 100.0)} for p in PATHS}
    assert calibration(snap, SPEC.features, recent) == []
    recent[("mobile",)]["b"] = CellStats(2000.0, 300.0)  # b now converts 15 % of mobiles
    found = calibration(snap, SPEC.features, recent)
    assert {(m.arm, m.feature) for m in found} >= {("b", "device=mobile"), ("b", "")}
    assert all(m.arm == "b" and abs(m.z) > ALERT_Z for m in found)
    worst = found[0]
    assert worst.feature == "device=mobile" and worst.observed == 300.0
    assert worst.expected == pytest.approx(100.0, rel=0.05)


def test_segment_snapshots_and_thin_cells_are_not_judged() -> None:
    snap = fitted()
    thin = {("mobile",): {"b": CellStats(20.0, 10.0)}}  # 1 success expected: too few to judge
    assert calibration(snap, SPEC.features, thin) == []
    plain = Snapshot(
        experiment="hero",
        version=1,
        created_at=0,
        max_age_s=60.0,
        salt="s",
        default_arm="a",
        holdout=0.0,
        floor=0.0,
        arms=[Arm("a"), Arm("b")],
        segments=[Segment("all")],
        alpha=[1.0, 1.0],
        beta=[1.0, 1.0],
        allocation=[0.5, 0.5],
    )
    assert calibration(plain, SPEC.features, {("mobile",): {"b": CellStats(2000.0, 900.0)}}) == []
