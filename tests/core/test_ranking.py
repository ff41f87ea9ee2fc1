from __future__ import annotations

import random
from array import array

import pytest

from core import Ranking, SnapshotError, choose_items, position_id, quota, split_position_id

GROUPS = ["a", "a", "a", "a", "b", "b", "c", "c"]


@pytest.mark.parametrize(
    ("diversity", "slots", "owed"),
    [
        (0.2, 5, 1),
        (0.2, 4, 1),
        (0.25, 10, 3),
        (0.3, 10, 3),
        (0.0, 5, 0),
        (1.0, 5, 5),
        (0.21, 5, 2),
        (0.5, 3, 2),
    ],
)
def test_quota_is_the_least_whole_number_of_positions_at_least_the_share(
    diversity: float, slots: int, owed: int
) -> None:
    assert quota(diversity, slots) == owed


def test_scores_alone_fill_the_list_when_the_quota_is_met_anyway() -> None:
    scores = [0.9, 0.1, 0.2, 0.3, 0.8, 0.7, 0.05, 0.6]
    chosen, primary = choose_items(scores, GROUPS, [False] * 8, 4, diversity=0.2, primary=None)
    assert primary == "a"
    assert chosen == [0, 4, 5, 7]


def test_the_quota_passes_over_inside_items_only_for_the_positions_owed() -> None:
    # Group a holds the four best scores: without the quota the list would be all a.
    scores = [0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.05, 0.3]
    chosen, primary = choose_items(scores, GROUPS, [False] * 8, 5, diversity=0.4, primary=None)
    assert primary == "a"
    # 0.4 x 5 = 2 outside positions: the two best outside items (7, then 5), the rest by score.
    assert chosen == [0, 1, 2, 7, 5]
    outside = [i for i in chosen if GROUPS[i] != "a"]
    assert len(outside) == 2


def test_the_profiles_primary_group_overrides_the_top_item() -> None:
    scores = [0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.05, 0.3]
    chosen, primary = choose_items(scores, GROUPS, [False] * 8, 5, diversity=0.2, primary="b")
    assert primary == "b"
    assert chosen == [0, 1, 2, 3, 7]  # b's items are not needed: the a's and c's are outside b


def test_forced_items_are_placed_whatever_their_score_and_shown_in_score_order() -> None:
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.01]
    forced = [False] * 7 + [True]
    chosen, _ = choose_items(scores, GROUPS, forced, 3, diversity=0.0, primary=None)
    assert chosen == [0, 1, 7]


def test_quota_capped_by_the_outside_items_there_are() -> None:
    groups = ["a"] * 5 + ["b"]
    chosen, _ = choose_items(
        [0.5, 0.4, 0.3, 0.2, 0.1, 0.0], groups, [False] * 6, 5, diversity=0.6, primary=None
    )
    assert chosen == [0, 1, 2, 3, 5]


def test_ungrouped_top_item_owes_no_quota() -> None:
    groups = ["", "a", "a", "b"]
    chosen, primary = choose_items([0.9, 0.8, 0.7, 0.1], groups, [False] * 4, 2, diversity=0.5, primary=None)
    assert (chosen, primary) == ([0, 1], "")


def test_every_random_list_meets_the_quota() -> None:
    rng = random.Random(5)
    for _ in range(2_000):
        n = rng.randrange(2, 30)
        k = rng.randrange(1, n + 1)
        groups = [rng.choice("abcd") for _ in range(n)]
        diversity = rng.choice([0.0, 0.2, 0.34, 0.5, 1.0])
        forced = [rng.random() < 0.1 for _ in range(n)]
        scores = [rng.random() for _ in range(n)]
        primary = rng.choice([None, "a", "b"])
        chosen, used = choose_items(scores, groups, forced, k, diversity=diversity, primary=primary)
        assert len(chosen) == k == len(set(chosen))
        assert chosen == sorted(chosen, key=lambda i: -scores[i])
        outside = sum(1 for i in chosen if groups[i] != used)
        assert outside >= min(quota(diversity, k), sum(1 for g in groups if g != used))
        if diversity == 0.0:  # nothing can pass a forced item over
            assert sum(1 for i in chosen if forced[i]) == min(k, sum(forced))


def test_position_ids_round_trip() -> None:
    slate = f"{random.Random(1).getrandbits(128):032x}"
    ids = [position_id(slate, p) for p in range(5)]
    assert len({i[:30] for i in ids}) == 1 and len(set(ids)) == 5
    assert all(len(i) == 32 for i in ids)
    assert [split_position_id(i) for i in ids] == [(slate[:30], p) for p in range(5)]


def test_ranking_checks_its_tables_against_the_snapshot() -> None:
    ranking = Ranking(2, 0.2, ["a", "b", "a"], [0.0] * 3)
    checked = ranking.check(3, 1)
    assert isinstance(checked.forced, array) and checked.group_names == ("a", "b")
    with pytest.raises(SnapshotError, match="one per arm"):
        ranking.check(4, 1)
    with pytest.raises(SnapshotError, match=r"ranking.forced: 3 values, must be 6"):
        ranking.check(3, 2)
    with pytest.raises(SnapshotError, match="probability"):
        Ranking(2, 0.2, ["a", "b", "a"], [0.0, 2.0, 0.0]).check(3, 1)
    with pytest.raises(SnapshotError, match=r"ranking.positions: 5 values, must be 18"):
        Ranking(2, 0.2, ["a", "b", "a"], [0.0] * 3, [0.1] * 5).check(3, 1)


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({"slots": 0}, r"slots=0, must be an integer in \[1, 32\]"),
        ({"slots": 33}, "slots=33"),
        ({"slots": True}, "slots=True"),
        ({"diversity": 1.5}, r"diversity=1.5, must be a number in \[0, 1\]"),
        ({"diversity": float("nan")}, "diversity=nan"),
        ({"groups": ["a", 3]}, "ranking.groups: 3"),
    ],
)
def test_ranking_refuses_broken_settings(kwargs: dict[str, object], rule: str) -> None:
    fields: dict[str, object] = {"slots": 2, "diversity": 0.2, "groups": ["a", "b"], "forced": [0.0, 0.0]}
    fields.update(kwargs)
    with pytest.raises(SnapshotError, match=rule):
        Ranking(**fields)  # type: ignore[arg-type]
