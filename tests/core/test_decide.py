from __future__ import annotations

import random
from collections import Counter

import pytest
from scipy import stats

from core import DECISION_FIELDS, REASONS, Decision, Fallback, Snapshot, bucket, decide, fallback
from tests.factories import NOW, build_snapshot

MOBILE = {"device": "mobile"}


def run(snap: Snapshot, unit: str | None, context: dict[str, str] | None = None, **kw: object) -> Decision:
    kw.setdefault("now_ms", NOW)
    kw.setdefault("rng", random.Random(0))
    return decide(snap, unit, context, **kw)  # type: ignore[arg-type]


def test_decision_carries_the_contract_fields(snapshot: Snapshot) -> None:
    d = run(snapshot, "u-1", MOBILE, rng=random.Random(4))
    assert d.experiment == "home-hero"
    assert d.snapshot_version == 7
    assert d.snapshot_age_s == 60.0
    assert d.reason in REASONS
    assert len(d.decision_id) == 32 and int(d.decision_id, 16) >= 0
    assert set(d.to_dict()) == {
        "experiment",
        "arm",
        "payload",
        "html",
        "propensity",
        "reason",
        "segment",
        "snapshot_version",
        "snapshot_age_s",
        "decision_id",
        "because",
    }


def test_no_consent_gives_default_arm_without_segment(snapshot: Snapshot) -> None:
    for i in range(200):
        d = run(snapshot, f"u{i}", MOBILE, consent=False)
        assert (d.arm, d.reason, d.segment, d.propensity) == ("control", "consent", None, 1.0)
        assert d.payload == {"headline": "Welcome"}


def test_holdout_is_the_hashed_control_group(snapshot: Snapshot) -> None:
    units = [f"visitor-{i}" for i in range(5000)]
    held = {u for u in units if run(snapshot, u, MOBILE).reason == "holdout"}
    assert held == {u for u in units if bucket(u, "home-hero:holdout") < 0.1}
    assert stats.binomtest(len(held), len(units), 0.1).pvalue > 1e-3
    for u in held:
        d = run(snapshot, u, MOBILE)
        assert (d.arm, d.propensity, d.segment) == ("control", 1.0, "mobile")


def test_holdout_membership_never_depends_on_the_snapshot_version() -> None:
    units = [f"visitor-{i}" for i in range(3000)]
    memberships = [
        {u for u in units if run(build_snapshot(version=v, alpha=[a, 1.0, 2.0] * 4), u).reason == "holdout"}
        for v, a in [(1, 1.0), (2, 50.0), (900, 3.0)]
    ]
    assert memberships[0] and memberships[0] == memberships[1] == memberships[2]


def test_stale_snapshot_serves_default_but_holdout_comes_first() -> None:
    snap = build_snapshot(max_age_s=30.0)  # created 60 s before NOW
    reasons = Counter(run(snap, f"u{i}").reason for i in range(1000))
    assert set(reasons) == {"stale", "holdout"}
    d = next(run(snap, f"u{i}") for i in range(1000) if run(snap, f"u{i}").reason == "stale")
    assert (d.arm, d.propensity, d.snapshot_age_s) == ("control", 1.0, 60.0)


def test_clock_skew_never_gives_negative_age(snapshot: Snapshot) -> None:
    assert run(snapshot, "u-3", now_ms=snapshot.created_at - 5_000).snapshot_age_s == 0.0
    assert run(snapshot, "u-3", now_ms=snapshot.created_at - 5_000).reason == "personalized"


def test_snapshot_from_far_in_the_future_counts_as_stale(snapshot: Snapshot) -> None:
    now = snapshot.created_at - int(snapshot.max_age_s * 1000) - 1
    assert run(snapshot, "u-3", now_ms=now).reason == "stale"


def test_exact_ties_are_broken_uniformly() -> None:
    # Shapes this small round almost every draw to exactly 0.0 or 1.0; without
    # a tie-break the first arm would win about half of all decisions.
    snap = build_snapshot(
        holdout=0.0, floor=0.0, alpha=[1e-3] * 12, beta=[1e-3] * 12, allocation=[1 / 3, 1 / 3, 1 / 3] * 4
    )
    counts = Counter(run(snap, f"u{i}").arm for i in range(6000))
    assert stats.chisquare([counts[a.key] for a in snap.arms]).pvalue > 1e-3


def test_personalized_decision_uses_allocation_of_its_segment() -> None:
    alloc = [0.2, 0.3, 0.5, 0.6, 0.3, 0.1, 0.1, 0.1, 0.8, 0.25, 0.25, 0.5]
    snap = build_snapshot(holdout=0.0, allocation=alloc)
    for ctx, s in [({}, 0), (MOBILE, 1), ({"source": "search"}, 2), ({**MOBILE, "source": "search"}, 3)]:
        for i in range(50):
            d = run(snap, f"u{i}", ctx)
            assert d.reason == "personalized"
            assert d.segment == snap.segments[s].key
            assert d.propensity == pytest.approx(alloc[s * 3 + snap.arm_index[d.arm]], abs=1e-7)


def test_thompson_prefers_the_arm_with_the_better_posterior() -> None:
    # 'bold' dominates in segment 'all', 'calm' dominates among mobile visitors.
    alpha = [1.0, 300.0, 1.0, 1.0, 1.0, 300.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    beta = [300.0, 1.0, 300.0, 300.0, 300.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    snap = build_snapshot(holdout=0.0, floor=0.0, alpha=alpha, beta=beta, allocation=[0.01, 0.98, 0.01] * 4)
    assert {run(snap, f"u{i}").arm for i in range(300)} == {"bold"}
    snap = build_snapshot(holdout=0.0, floor=0.0, alpha=alpha, beta=beta, allocation=[0.01, 0.01, 0.98] * 4)
    assert {run(snap, f"u{i}", MOBILE).arm for i in range(300)} == {"calm"}


def test_floor_explores_every_arm_uniformly() -> None:
    alpha = [1.0, 1000.0, 1.0] * 4
    beta = [1000.0, 1.0, 1000.0] * 4
    snap = build_snapshot(holdout=0.0, floor=0.3, alpha=alpha, beta=beta, allocation=[0.1, 0.8, 0.1] * 4)
    counts = Counter(run(snap, f"u{i}").arm for i in range(6000))
    # 'control' and 'calm' only ever come from the floor: 0.3 / 3 each.
    assert stats.binomtest(counts["control"], 6000, 0.1).pvalue > 1e-3
    assert stats.binomtest(counts["calm"], 6000, 0.1).pvalue > 1e-3


def test_same_unit_same_version_same_arm_across_calls_and_generators(snapshot: Snapshot) -> None:
    snap = build_snapshot(
        holdout=0.0, alpha=[5.0, 5.0, 5.0] * 4, beta=[5.0, 5.0, 5.0] * 4, allocation=[1 / 3, 1 / 3, 1 / 3] * 4
    )
    for i in range(300):
        arms = {run(snap, f"u{i}", MOBILE, rng=random.Random(seed)).arm for seed in range(5)}
        assert len(arms) == 1
    # ... and decision ids still differ per request.
    assert (
        run(snap, "u1", rng=random.Random(1)).decision_id != run(snap, "u1", rng=random.Random(2)).decision_id
    )


def test_new_snapshot_version_may_reshuffle_arms() -> None:
    def arms(version: int) -> list[str]:
        snap = build_snapshot(
            version=version,
            holdout=0.0,
            alpha=[5.0, 5.0, 5.0] * 4,
            beta=[5.0, 5.0, 5.0] * 4,
            allocation=[1 / 3, 1 / 3, 1 / 3] * 4,
        )
        return [run(snap, f"u{i}").arm for i in range(600)]

    first, second = arms(1), arms(2)
    changed = sum(a != b for a, b in zip(first, second, strict=True))
    # With three equally likely arms, about 2/3 of visitors land elsewhere.
    assert stats.binomtest(changed, 600, 2 / 3).pvalue > 1e-3


def test_units_without_id_draw_from_the_given_generator() -> None:
    snap = build_snapshot(
        holdout=0.0,
        floor=0.0,
        alpha=[5.0, 5.0, 5.0] * 4,
        beta=[5.0, 5.0, 5.0] * 4,
        allocation=[1 / 3, 1 / 3, 1 / 3] * 4,
    )
    fresh = [run(snap, None, rng=random.Random(seed)).arm for seed in range(300)]
    assert len(set(fresh)) == 3
    assert fresh == [run(snap, None, rng=random.Random(seed)).arm for seed in range(300)]
    assert run(snap, "", rng=random.Random(3)) == run(snap, None, rng=random.Random(3))


def test_anonymous_units_are_held_out_at_the_holdout_rate() -> None:
    snap = build_snapshot(holdout=0.2)
    rng = random.Random(8)
    held = sum(run(snap, None, rng=rng).reason == "holdout" for _ in range(5000))
    assert stats.binomtest(held, 5000, 0.2).pvalue > 1e-3


def test_a_fallback_serializes_as_a_decision_does(snapshot: Snapshot) -> None:
    decided = run(snapshot, "u-1", MOBILE).to_dict()
    served = fallback("home-hero", "no snapshot in KV", random.Random(0))
    assert isinstance(served, Fallback) and served.cause == "no snapshot in KV"
    out = served.to_dict()
    assert list(out) == list(decided) == list(DECISION_FIELDS)
    # Its id is drawn as decide() draws one: the same generator state gives the same id.
    assert out["decision_id"] == run(snapshot, "u-1", MOBILE, rng=random.Random(0)).decision_id
    assert out == {
        **dict.fromkeys(DECISION_FIELDS),
        "experiment": "home-hero",
        "reason": "fallback",
        "decision_id": out["decision_id"],
        "because": [],
    }
    assert served.reason in REASONS
