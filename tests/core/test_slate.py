from __future__ import annotations

import random
from collections import Counter

import pytest

from core import (
    RankedDecision,
    Ranking,
    Snapshot,
    SnapshotError,
    decide,
    decide_ranked,
    decode_snapshot,
    encode_snapshot,
    quota,
    split_position_id,
)
from tests.factories import NOW, build_ranked_snapshot, build_snapshot


def run(
    snap: Snapshot, unit: str | None, context: dict[str, str] | None = None, **kw: object
) -> RankedDecision:
    kw.setdefault("now_ms", NOW)
    kw.setdefault("rng", random.Random(0))
    return decide_ranked(snap, unit, context, **kw)  # type: ignore[arg-type]


def test_a_ranked_decision_lists_slots_items_with_their_own_ids() -> None:
    snap = build_ranked_snapshot()
    d = run(snap, "u-1", {"device": "mobile"})
    assert d.reason == "personalized" and d.segment == "mobile" and len(d.items) == 5
    assert [item.position for item in d.items] == list(range(5))
    assert {split_position_id(item.decision_id) for item in d.items} == {
        (d.decision_id[:30], p) for p in range(5)
    }
    doc = d.to_dict()
    assert doc["items"][0]["payload"] == {"sku": int(d.items[0].arm.split("-")[1])}
    assert doc["items"][0]["html"].startswith("<li>")
    assert set(doc) == {
        "experiment",
        "items",
        "reason",
        "segment",
        "snapshot_version",
        "snapshot_age_s",
        "decision_id",
        "primary_group",
        "because",
    }


def test_same_unit_same_list_for_the_life_of_a_snapshot() -> None:
    snap = build_ranked_snapshot()
    first = [i.arm for i in run(snap, "u-7", rng=random.Random(1)).items]
    assert all([i.arm for i in run(snap, "u-7", rng=random.Random(s)).items] == first for s in range(10))


def test_the_best_items_lead_and_every_list_meets_the_quota() -> None:
    snap = build_ranked_snapshot()
    ranking = snap.ranking
    assert ranking is not None
    tops: Counter[str] = Counter()
    for u in range(500):
        d = run(snap, f"u{u}")
        groups = [ranking.groups[snap.arm_index[i.arm]] for i in d.items]
        assert sum(g != d.primary_group for g in groups) >= quota(0.2, 5)
        tops[d.items[0].arm] += 1
    # item-19 has the highest posterior mean (77 / 477); a Thompson draw puts it first most often.
    assert tops.most_common(1)[0][0] in {"item-19", "item-18"}


def test_a_profile_primary_group_is_used_when_it_names_an_item_group() -> None:
    snap = build_ranked_snapshot()
    assert run(snap, "u-1", primary="g2").primary_group == "g2"
    # An interest no item belongs to counts as none: the top item's group is used.
    d = run(snap, "u-1", primary="shoes")
    assert d.primary_group == snap.ranking.groups[snap.arm_index[d.items[0].arm]]  # type: ignore[union-attr]


def test_no_consent_holdout_and_stale_show_the_operators_order() -> None:
    snap = build_ranked_snapshot(holdout=0.5)
    reasons: Counter[str] = Counter()
    for u in range(200):
        d = run(snap, f"u{u}")
        reasons[d.reason] += 1
        if d.reason == "holdout":
            assert [i.arm for i in d.items] == [f"item-{i}" for i in range(5)]
            assert all(i.propensity == 1.0 for i in d.items)
    assert 60 < reasons["holdout"] < 140
    d = run(snap, "u-1", consent=False)
    assert (d.reason, d.segment) == ("consent", None)
    assert run(build_ranked_snapshot(), "u-1", now_ms=NOW + 4_000_000).reason == "stale"


def test_forced_items_appear_as_often_as_the_learner_asked() -> None:
    forced = [0.0] * 20 * 2
    forced[0] = 0.5  # item-0, the worst item, in segment "all"
    snap = build_ranked_snapshot(ranking=Ranking(5, 0.2, [f"g{i % 4}" for i in range(20)], forced))
    shown = sum(any(i.arm == "item-0" for i in run(snap, f"u{u}").items) for u in range(2_000))
    assert 0.45 < shown / 2_000 < 0.56


def test_propensities_come_from_the_snapshot_table() -> None:
    base = build_ranked_snapshot(items=4, slots=2, groups=2)
    # segments 2 x (1 + 2 groups) x 4 items x 2 slots
    table = [(i % 97) / 97 for i in range(2 * 3 * 4 * 2)]
    ranking = Ranking(2, 0.2, ["g0", "g1", "g0", "g1"], [0.0] * 8, table)
    snap = build_ranked_snapshot(items=4, slots=2, groups=2, ranking=ranking)
    assert base.ranking is not None and not len(base.ranking.positions)
    d = run(snap, "u-3", {"device": "mobile"}, primary="g1")
    for item in d.items:
        cell = ((1 * 3 + 2) * 4 + snap.arm_index[item.arm]) * 2 + item.position
        assert item.propensity == pytest.approx(table[cell], abs=1e-6)
    assert all(i.propensity is None for i in run(base, "u-3").items)


def test_schema_3_round_trips_and_older_schemas_stay_as_they_were() -> None:
    table = [0.25] * (2 * 5 * 20 * 5)
    ranking = Ranking(5, 0.3, [f"g{i % 4}" for i in range(20)], [0.1] * 40, table)
    snap = build_ranked_snapshot(ranking=ranking)
    wire = encode_snapshot(snap)
    back = decode_snapshot(wire)
    assert back == snap and back.ranking is not None
    assert back.ranking.slots == 5 and back.ranking.diversity == pytest.approx(0.3)
    assert back.ranking.group_names == ("g0", "g1", "g2", "g3")
    assert encode_snapshot(back) == wire
    plain = build_snapshot()
    assert decode_snapshot(encode_snapshot(plain)).ranking is None


def test_decide_ranked_refuses_a_single_decision_snapshot() -> None:
    with pytest.raises(ValueError, match="not a ranked decision point"):
        run(build_snapshot(), "u-1")
    # A single decision on a ranked snapshot still works: its arms are plain arms.
    assert decide(build_ranked_snapshot(), "u-1", {}, now_ms=NOW, rng=random.Random(0)).arm.startswith(
        "item-"
    )


def test_a_ranking_that_does_not_fit_the_snapshot_is_refused() -> None:
    with pytest.raises(SnapshotError, match="one per arm"):
        build_ranked_snapshot(ranking=Ranking(5, 0.2, ["g"] * 3, [0.0] * 40))
