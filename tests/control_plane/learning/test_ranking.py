from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from control_plane.experiments import ExperimentError, ExperimentSpec
from control_plane.learning.learner import learn
from control_plane.learning.ranking import FloorProgress, floor_progress, forced_probabilities
from control_plane.storage.stats import CellStats
from core import decide_ranked, decode_snapshot, encode_snapshot

NOW = 1_800_000_000_000
DAY_MS = 86_400_000


def ranked_spec(**ranking: object) -> ExperimentSpec:
    return ExperimentSpec.create(
        {
            "key": "recs",
            "arms": [{"key": f"i{i}", "group": f"g{i % 4}", "html": f"<li>{i}</li>"} for i in range(12)],
            "default_arm": "i0",
            "features": ["device"],
            "model": "segments",
            "holdout": 0.0,
            "floor": 0.02,
            "ranking": {"slots": 4, **ranking},
        }
    )


def cells(rates: dict[str, list[float]]) -> dict[tuple[str, ...], dict[str, CellStats]]:
    return {
        (device,): {f"i{i}": CellStats(200.0, 200.0 * r) for i, r in enumerate(rs)}
        for device, rs in rates.items()
    }


RATES = {
    "mobile": [0.01 + 0.01 * i for i in range(12)],
    "desktop": [0.13 - 0.01 * i for i in range(12)],
}


def test_spec_takes_groups_on_the_items_and_round_trips() -> None:
    spec = ranked_spec(min_exposures=50)
    assert spec.ranking is not None and spec.ranking.groups["i5"] == "g1"
    assert ExperimentSpec.from_dict(spec.to_dict()) == spec
    assert (
        "ranking"
        not in ExperimentSpec.create(
            {"key": "a", "arms": [{"key": "x"}, {"key": "y"}], "default_arm": "x"}
        ).to_dict()
    )


@pytest.mark.parametrize(
    ("ranking", "rule"),
    [
        ({"slots": 0}, r"ranking.slots=0, must be an integer in \[1, 32\]"),
        ({"diversity": 2}, "ranking.diversity"),
        ({"period_s": 9}, r"ranking.period_s=9, must be whole seconds from 10 to a year"),
        ({"min_exposures": -1}, "ranking.min_exposures=-1"),
        ({"groups": {"nope": "g"}}, r"ranking.groups names \['nope'\], which are not items"),
        ({"groups": 0}, r"ranking.groups: an object of item key -> group name"),
        ({"groups": []}, r"ranking.groups: an object of item key -> group name"),
        (
            {"groups": {"i1": "g2"}},
            r"item 'i1': group given twice \('g1' on the item, 'g2' in ranking.groups\)",
        ),
    ],
)
def test_spec_refuses_broken_rankings(ranking: dict[str, object], rule: str) -> None:
    with pytest.raises(ExperimentError, match=rule):
        ranked_spec(**ranking)


def test_a_group_name_must_be_a_category_as_interests_are() -> None:
    doc = ranked_spec().to_dict()
    doc["arms"][1]["group"] = "Bad Group"
    del doc["ranking"]["groups"]
    with pytest.raises(
        ExperimentError, match=r"ranking.groups\['i1'\]='Bad Group': a group is a content category"
    ):
        ExperimentSpec.from_dict(doc)
    doc["arms"][1]["group"] = "home & garden"  # what perch.js reports for such a page
    assert ExperimentSpec.from_dict(doc).ranking.groups["i1"] == "home & garden"  # type: ignore[union-attr]


def test_a_group_on_an_item_of_a_single_decision_experiment_is_refused() -> None:
    with pytest.raises(ExperimentError, match="only a ranked experiment uses"):
        ExperimentSpec.create(
            {"key": "a", "arms": [{"key": "x", "group": "g"}, {"key": "y"}], "default_arm": "x"}
        )


def test_the_learnt_position_table_matches_the_edges_own_lists() -> None:
    spec = ranked_spec()
    snap = learn(spec, cells(RATES), version=1, now_ms=NOW)
    assert snap.ranking is not None and decode_snapshot(encode_snapshot(snap)) == snap
    s = snap.segment_for({"device": "mobile"})
    for primary, g in ((None, 0), ("g2", 1 + snap.ranking.group_names.index("g2"))):
        counts: Counter[tuple[int, int]] = Counter()
        lists = 4_000
        for u in range(lists):
            d = decide_ranked(
                snap, f"u{u}", {"device": "mobile"}, now_ms=NOW, rng=random.Random(u), primary=primary
            )
            for item in d.items:
                counts[snap.arm_index[item.arm], item.position] += 1
                assert item.propensity == snap.ranking.propensity(
                    s, g, snap.arm_index[item.arm], item.position
                )
        for i in range(12):
            for p in range(4):
                expected = snap.ranking.propensity(s, g, i, p)
                assert expected is not None
                # Two Monte Carlo estimates of one probability: within 4.5 standard errors of both.
                se = np.sqrt(expected * (1 - expected) * (1 / lists + 1 / 2_000)) + 1e-3
                assert abs(counts[i, p] / lists - expected) < 4.5 * se, (i, p)


def test_every_row_of_the_table_is_a_distribution_over_items_per_position() -> None:
    snap = learn(ranked_spec(), cells(RATES), version=1, now_ms=NOW)
    assert snap.ranking is not None
    table = np.asarray(snap.ranking.positions).reshape(len(snap.segments), -1, 12, 4)
    np.testing.assert_allclose(table.sum(axis=2), 1.0, atol=1e-5)  # one item at each position
    assert (table.sum(axis=3) <= 1.0 + 1e-5).all()  # an item is shown at most once


def test_floors_force_the_missing_exposures_and_a_margin_on_top_of_natural_inclusion() -> None:
    spec = ranked_spec(min_exposures=100)
    shown = {("all", "i0"): 100, ("all", "i1"): 40, ("mobile", "i0"): 100}
    progress = FloorProgress(0, DAY_MS, shown, {"all": 1_000.0, "mobile": 500.0})
    inclusion = np.full((3, 12), 0.05)
    p = forced_probabilities(spec, progress, ["all", "mobile", "desktop"], inclusion)
    # The aim is 100 + 3 x sqrt(100) = 130, so that chance leaves no item short of 100.
    assert p[0, 0] == 0.0  # 30 missing, 50 expected anyway
    # i1: 90 missing, 50 expected anyway -> 40 more from the 950 lists it would miss.
    assert p[0, 1] == pytest.approx(40 / 950)
    assert p[0, 2] == pytest.approx(80 / 950)
    # Each segment its own: i1 has nothing in "mobile" yet (130 missing, 25 expected, of 475).
    assert p[1, 0] == pytest.approx(5 / 475) and p[1, 1] == pytest.approx(105 / 475)
    assert p[2].max() == 0.0  # no lists there in the last period: nothing to plan with
    assert forced_probabilities(ranked_spec(), progress, ["all", "mobile", "desktop"], inclusion).max() == 0.0


def test_floor_progress_reads_this_period_and_the_last_periods_pace_per_segment() -> None:
    calls: list[tuple[int, int]] = []

    def per_segment(experiment: str, since: int, until: int) -> dict[tuple[str, str], int]:
        calls.append((since, until))
        return {("all", "i0"): 30, ("all", "i1"): 10, ("device:mobile", "i0"): 8}

    now = 20 * DAY_MS + DAY_MS // 4  # a quarter into a UTC day
    spec = ranked_spec(min_exposures=10)
    progress = floor_progress(spec, now, per_segment)
    assert progress is not None
    assert calls == [(20 * DAY_MS, now + 1), (now + 1 - DAY_MS, now + 1)]
    assert progress.shown[("all", "i0")] == 30
    # 40 exposures a day at 4 per list: 10 lists a day; the deadline is noon, a quarter of a day away.
    assert progress.requests_left["all"] == pytest.approx(2.5)
    assert progress.requests_left["device:mobile"] == pytest.approx(0.5)
    # Past noon, the period's end is the deadline.
    late = floor_progress(spec, now + DAY_MS // 2, per_segment)
    assert late is not None and late.requests_left["all"] == pytest.approx(2.5)
    doc = progress.to_dict(spec)
    i0 = next(row for row in doc["items"] if row["item"] == "i0")
    assert (i0["shown"], i0["least"], i0["met"]) == (38, 8, False)  # 8 of 10 in device:mobile
    assert doc["segments"] == ["all", "device:mobile"]
    assert floor_progress(ranked_spec(), now, per_segment) is None


def test_a_starved_item_gets_its_floor_in_every_segment_through_the_edge() -> None:
    # i0 is the worst item everywhere: left alone it is almost never shown.
    rates = {"mobile": [0.001] + [0.1] * 11, "desktop": [0.001] + [0.1] * 11}
    spec = ranked_spec(min_exposures=300)
    lists = 2_000
    snap0 = learn(spec, cells(rates), version=1, now_ms=NOW)
    keys = [s.key for s in snap0.segments]
    shown = {(k, f"i{i}"): 1_000 for k in keys for i in range(1, 12)}
    progress = FloorProgress(0, DAY_MS, shown, dict.fromkeys(keys, float(lists)))
    snap = learn(spec, cells(rates), version=1, now_ms=NOW, progress=progress)
    assert snap.ranking is not None
    for context in ({"device": "mobile"}, {"device": "desktop"}):
        s = snap.segment_for(context)
        assert snap.ranking.forced[s * 12] > 0.1
        seen = sum(
            any(
                item.arm == "i0"
                for item in decide_ranked(snap, f"u{u}", context, now_ms=NOW, rng=random.Random(u)).items
            )
            for u in range(lists)
        )
        assert 300 < seen < 352 * 1.2, context  # aimed at 300 + 3 x sqrt(300) = 352
    alone = sum(
        any(
            item.arm == "i0"
            for item in decide_ranked(
                snap0, f"u{u}", {"device": "mobile"}, now_ms=NOW, rng=random.Random(u)
            ).items
        )
        for u in range(lists)
    )
    assert alone < 150


def test_a_contextual_ranked_snapshot_has_floors_but_no_position_table() -> None:
    spec = ExperimentSpec.create({**ranked_spec().to_dict(), "model": "contextual"})
    snap = learn(spec, cells(RATES), version=1, now_ms=NOW)
    assert snap.model is not None and snap.ranking is not None and not len(snap.ranking.positions)
    d = decide_ranked(snap, "u1", {"device": "mobile"}, now_ms=NOW, rng=random.Random(1))
    assert len(d.items) == 4 and all(i.propensity is None for i in d.items)


def test_a_position_table_too_large_for_kv_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from control_plane.learning import ranking

    monkeypatch.setattr(ranking, "MAX_POSITION_CELLS", 100)
    snap = learn(ranked_spec(), cells(RATES), version=1, now_ms=NOW)
    assert snap.ranking is not None and not len(snap.ranking.positions)
    assert all(
        i.propensity is None for i in decide_ranked(snap, "u", {}, now_ms=NOW, rng=random.Random(1)).items
    )


def test_forced_starved_items_are_ordered_as_the_edge_orders_them() -> None:
    # Shapes this small put half the Beta draws below 1e-16: an offset added to such scores would
    # erase them, and the table would order forced items by index where the edge orders by score.
    import dataclasses

    from control_plane.learning.ranking import position_table
    from core import Arm, Ranking, Segment, Snapshot

    n = 6
    snap = Snapshot(
        experiment="starved",
        version=1,
        created_at=NOW,
        max_age_s=3600.0,
        salt="s",
        default_arm="i0",
        holdout=0.0,
        floor=0.0,
        arms=[Arm(f"i{i}") for i in range(n)],
        segments=[Segment("all")],
        alpha=[0.02] * n,
        beta=[200.0] * n,
        allocation=[1 / n] * n,
        ranking=Ranking(3, 0.0, [""] * n, [0.0] + [1.0] * 5),
    )
    table = position_table(snap, np.random.default_rng(5), draws=20_000)
    assert table is not None
    snap = dataclasses.replace(
        snap,
        ranking=dataclasses.replace(snap.ranking, positions=table.ravel().tolist()),  # type: ignore[arg-type]
    )
    lists = 20_000
    counts: Counter[tuple[int, int]] = Counter()
    for u in range(lists):
        for item in decide_ranked(snap, f"u{u}", {}, now_ms=NOW, rng=random.Random(u)).items:
            counts[snap.arm_index[item.arm], item.position] += 1
    for i in range(n):
        for p in range(3):
            expected = float(table[0, 0, i, p])
            se = np.sqrt(expected * (1 - expected) * 2 / lists) + 1e-3
            assert abs(counts[i, p] / lists - expected) < 4.5 * se, (i, p, counts[i, p] / lists, expected)


def test_floors_with_no_segment_to_plan_in_are_not_reported_met() -> None:
    doc = FloorProgress(0, DAY_MS, {}, {}).to_dict(ranked_spec(min_exposures=10))
    assert {(row["least"], row["met"]) for row in doc["items"]} == {(None, None)}


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"slots": 1}, r"diversity 0.2 of 1 position\(s\) rounds up to every position"),
        ({"groups": {"i1": "Shoes"}}, "a group is a content category as perch.js reports it"),
    ],
)
def test_rankings_that_could_not_work_are_refused(change: dict[str, object], rule: str) -> None:
    doc = ranked_spec().to_dict()
    doc["arms"] = [{k: v for k, v in a.items() if k != "group"} for a in doc["arms"]]
    doc["ranking"] = {**doc["ranking"], "groups": {}, **change}
    with pytest.raises(ExperimentError, match=rule):
        ExperimentSpec.from_dict(doc)
    assert ExperimentSpec.from_dict(
        {**doc, "ranking": {**doc["ranking"], "slots": 1, "diversity": 0.0, "groups": {}}}
    )


def test_a_ranked_items_html_must_be_one_element() -> None:
    doc = ranked_spec().to_dict()
    doc["arms"][3]["html"] = "<li>one</li><li>two</li>"
    with pytest.raises(ExperimentError, match=r"items \['i3'\]: a ranked item's html must be one element"):
        ExperimentSpec.from_dict(doc)
    doc["arms"][3]["html"] = "  <li class='x'>one <img src=a.png> <b>bold</b></li>\n"
    assert ExperimentSpec.from_dict(doc).arms[3].html is not None
