"""A contextual experiment through the API: create, learn, publish schema 2, exact propensities, report."""

from __future__ import annotations

import itertools
import json
import math
import random
from typing import Any

import msgpack
import pytest
from sqlalchemy import select

from control_plane.propensity import context_probabilities
from control_plane.storage.schema import exposures
from control_plane.storage.store import Store
from core import LocalKV, decide, decode_snapshot, snapshot_key
from tests.control_plane.http.test_app import AUTH, ApiClient, Clock, client, clock, kv, signed
from tests.factories import NOW, exposure, outcome

__all__ = ["client", "clock", "kv"]

HERO = {
    "key": "hero",
    "arms": [{"key": "a"}, {"key": "b"}, {"key": "c"}],
    "default_arm": "a",
    "features": ["device", "source"],
    "floor": 0.1,
    "min_segment_units": 1,
}


def _traffic(
    client: ApiClient, count: int, *, version: int | None, start: int = 0, best: dict[str, str] | None = None
) -> None:
    """Visitors whose best arm depends on the device; exposures logged as the edge logs them."""
    rng = random.Random(start)
    events: list[dict[str, Any]] = []
    for i in range(start, start + count):
        device, source = rng.choice(["desktop", "mobile"]), rng.choice(["search", "social"])
        arm = rng.choice(["a", "b", "c"])
        event = exposure(i, arm=arm, context={"device": device, "source": source}, ts=NOW + i)
        event["propensity"], event["snapshot_version"] = None, version
        events.append(event)
        rate = 0.3 if (best or {"desktop": "a", "mobile": "b"})[device] == arm else 0.05
        if rng.random() < rate:
            events.append(outcome(i, ts=NOW + i + 1000))
    for start_at in range(0, len(events), 500):
        r = client.post("/v1/events", **signed(events[start_at : start_at + 500]))
        assert r.status_code == 200, r.text


def _publish(client: ApiClient, clock: Clock) -> dict[str, Any]:
    # Learn a minute after the traffic: every outcome (1 s after its exposure) is in by then,
    # as in life, where nothing arrives from the future.
    clock.ms = max(clock.ms, NOW + 60_000)
    r = client.post("/v1/experiments/hero/publish", headers=AUTH)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def test_a_new_experiment_with_features_learns_a_contextual_model(
    client: ApiClient, store: Store, kv: LocalKV, clock: Clock
) -> None:
    created = client.post("/v1/experiments", json=HERO, headers=AUTH).json()
    assert created["model"] == "contextual" and created["half_life_s"] == 604800.0
    _traffic(client, 1500, version=None)
    _publish(client, clock)
    raw = kv.get(snapshot_key("hero"))
    assert raw is not None and msgpack.unpackb(raw)["schema"] == 2
    snap = decode_snapshot(raw)
    assert snap.model is not None
    for device, best in (("desktop", "a"), ("mobile", "b")):
        d = decide(snap, "v", {"device": device, "source": "search"}, now_ms=NOW, rng=random.Random(0))
        probs = context_probabilities(snap, {"device": device, "source": "search"})
        assert snap.arms[int(probs.argmax())].key == best
        assert d.propensity is None

    report = client.get("/v1/experiments/hero/report", headers=AUTH).json()
    assert report["model"] == "contextual"
    effects = {row["feature"]: row["arms"] for row in report["feature_effects"]}
    assert effects["device=mobile"]["b"]["effect"] > effects["device=mobile"]["a"]["effect"]
    for arms in effects.values():
        for cell in arms.values():
            assert cell["low"] <= cell["effect"] <= cell["high"]


def test_contextual_exposures_get_the_exact_propensity_of_their_snapshot(
    client: ApiClient, store: Store, kv: LocalKV, clock: Clock
) -> None:
    client.post("/v1/experiments", json=HERO, headers=AUTH)
    _traffic(client, 600, version=None)
    version = _publish(client, clock)["snapshot_version"]
    snap = decode_snapshot(kv.get(snapshot_key("hero")) or b"")
    _traffic(client, 40, version=version, start=10_000)
    _traffic(client, 5, version=version + 50, start=20_000)  # a snapshot the store never made
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(exposures.c.arm, exposures.c.path, exposures.c.propensity, exposures.c.decision_id).where(
                exposures.c.decision_id >= f"{10_000:032x}"
            )
        ).all()
    known = [r for r in rows if r.decision_id < f"{20_000:032x}"]
    assert len(known) == 40 and len(rows) == 45
    for arm, path, propensity, _ in known:
        context = dict(zip(["device", "source"], json.loads(path), strict=True))
        expected = context_probabilities(snap, context)[snap.arm_index[arm]]
        assert propensity == pytest.approx(expected, rel=1e-12)
        assert 0.1 / 3 < propensity < 1
    assert all(r.propensity is None for r in rows if r.decision_id >= f"{20_000:032x}")
    assert store.counters("hero")["propensity_unknown"] == 5


def test_the_promotion_gate_evaluates_contextual_candidates(
    client: ApiClient, kv: LocalKV, clock: Clock
) -> None:
    client.post("/v1/experiments", json=HERO, headers=AUTH)
    _traffic(client, 300, version=None)
    version = _publish(client, clock)["snapshot_version"]
    _traffic(client, 900, version=version, start=30_000)
    _publish(client, clock)
    ope = client.get("/v1/experiments/hero/report", headers=AUTH).json()["ope"]
    assert ope is not None
    candidate = ope["evaluation"]["candidate"]
    assert candidate["n"] >= 500 and math.isfinite(candidate["snips"])


def test_segment_experiments_stay_segments_bit_for_bit(client: ApiClient, kv: LocalKV, clock: Clock) -> None:
    client.post("/v1/experiments", json={**HERO, "model": "segments"}, headers=AUTH)
    _traffic(client, 200, version=None)
    _publish(client, clock)
    raw = kv.get(snapshot_key("hero")) or b""
    assert msgpack.unpackb(raw)["schema"] == 1 and decode_snapshot(raw).model is None


def test_every_context_combination_decodes_to_a_decision(
    client: ApiClient, kv: LocalKV, clock: Clock
) -> None:
    client.post("/v1/experiments", json=HERO, headers=AUTH)
    _traffic(client, 300, version=None)
    _publish(client, clock)
    snap = decode_snapshot(kv.get(snapshot_key("hero")) or b"")
    for device, source in itertools.product(["desktop", "mobile", "tv", None], ["search", None]):
        context = {k: v for k, v in (("device", device), ("source", source)) if v is not None}
        d = decide(snap, "u", context, now_ms=NOW, rng=random.Random(1))
        assert d.reason in ("personalized", "holdout") and d.arm in ("a", "b", "c")


def test_a_world_that_changed_raises_a_calibration_alert(
    client: ApiClient, store: Store, clock: Clock
) -> None:
    client.post("/v1/experiments", json={**HERO, "contextual": {"recent_exposures": 600}}, headers=AUTH)
    _traffic(client, 3000, version=None)
    _publish(client, clock)
    assert [a for a in store.alerts("hero") if a["kind"] == "calibration"] == []
    _traffic(client, 600, version=None, start=50_000, best={"desktop": "c", "mobile": "c"})
    _publish(client, clock)
    (alert,) = [a for a in store.alerts("hero") if a["kind"] == "calibration"]
    assert "no longer predicts the newest exposures" in alert["message"]
    assert {row["arm"] for row in alert["details"]} >= {"c"}
    assert all(abs(row["z"]) > 4 for row in alert["details"])
