from __future__ import annotations

from typing import Any

import pytest

from core import Arm, Segment, SnapshotError
from tests.factories import build_snapshot

SEGMENTS = [
    Segment("all"),
    Segment("mobile", {"device": "mobile"}, 0),
    Segment("search", {"source": "search"}, 0),
    Segment("mobile-search", {"device": "mobile", "source": "search"}, 1),
]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"experiment": ""}, "experiment key '': must be 1-128 characters"),
        ({"experiment": "a b"}, "experiment key 'a b'"),
        ({"version": -1}, r"version=-1, must be an integer in \[0, 2\*\*63\)"),
        ({"version": 2**70}, "version=1180591620717411303424, must be an integer in"),
        ({"max_age_s": 10**400}, "max_age_s=1000"),
        ({"version": True}, "version=True"),
        ({"created_at": 1.5}, "created_at=1.5"),
        ({"hash_version": 9}, "hash_version=9, must be one of"),
        ({"max_age_s": 0}, r"max_age_s=0, must be a number in \(0.0, inf\)"),
        ({"max_age_s": float("nan")}, "max_age_s=nan"),
        ({"holdout": 1.0}, r"holdout=1.0, must be a number in \[0.0, 1.0\)"),
        ({"holdout": -0.1}, "holdout=-0.1"),
        ({"floor": 1.5}, r"floor=1.5, must be a number in \[0.0, 1.0\]"),
        ({"salt": "a\x00b"}, "salt must be UTF-8 text without NUL"),
        ({"salt": "a\ud800"}, "salt must be UTF-8 text without NUL"),
        ({"default_arm": "nope"}, "default arm 'nope' is not one of the arms"),
        ({"arms": []}, "0 arms, must be between 1 and"),
        ({"arms": [Arm("a"), Arm("a"), Arm("b")]}, "arm keys must be unique"),
        ({"segments": []}, "0 segments, must be between 1 and"),
        ({"alpha": [1.0] * 11}, "alpha: 11 values, must be arms x segments = 12"),
        (
            {"alpha": [1.0] * 5 + [0.0] + [1.0] * 6},
            "arm 'calm' in segment 'mobile': alpha=0.0, must be finite and > 0",
        ),
        ({"beta": [1.0] * 11 + [float("nan")]}, "arm 'calm' in segment 'mobile-search': beta=nan"),
        ({"beta": [float("inf")] + [1.0] * 11}, "arm 'control' in segment 'all': beta=inf"),
        ({"beta": [-2.0] + [1.0] * 11}, "beta=-2.0"),
        (
            {"allocation": [0.5, 0.5, 0.1] + [0.1, 0.8, 0.1] * 3},
            "segment 'all': allocation sums to 1.100000, must be 1 \\+/- 0.001",
        ),
        (
            {"allocation": [1.5, -0.5, 0.0] + [0.1, 0.8, 0.1] * 3},
            "arm 'control' in segment 'all': allocation=1.5, must be in",
        ),
        ({"allocation": ["x"] * 12}, "allocation: must be a sequence of floats"),
    ],
)
def test_rules_are_enforced_with_a_message_naming_them(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SnapshotError, match=message):
        build_snapshot(**overrides)


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        ([Segment("mobile", {"device": "mobile"})], "segment 0 must be the global segment"),
        ([Segment("all"), Segment("all", {"d": "x"}, 0)], "segment keys must be unique"),
        ([Segment("all"), Segment("m", {"d": "x"})], "parent=None, must be the index of an earlier segment"),
        ([Segment("all"), Segment("m", {"d": "x"}, 1)], "parent=1, must be the index of an earlier segment"),
        (
            [Segment("all"), Segment("m", {"d": "x"}, 0), Segment("s", {"s": "y"}, 1)],
            "its parent 'm' must match a strict subset of its features",
        ),
        (
            [Segment("all"), Segment("m", {"d": "x"}, 0), Segment("m2", {"d": "x"}, 0)],
            "same features as segment 'm'",
        ),
    ],
)
def test_segment_tree_rules(segments: list[Segment], message: str) -> None:
    n = len(segments)
    with pytest.raises(SnapshotError, match=message):
        build_snapshot(
            segments=segments, alpha=[1.0] * 3 * n, beta=[1.0] * 3 * n, allocation=[0.2, 0.3, 0.5] * n
        )


@pytest.mark.parametrize(
    ("arm", "message"),
    [
        (lambda: Arm("a", {1: "x"}), "object key 1 must be UTF-8 text"),
        (lambda: Arm("a", {"\udc80": "x"}), "object key '\\\\udc80' must be UTF-8 text"),
        (lambda: Arm("a", {"x": ["ok", "\ud800"]}), "string '\\\\ud800' is not UTF-8 text"),
        (lambda: Arm("a", html="<b>\ud800</b>"), "html must be a string of UTF-8 text"),
        (lambda: Segment("s", {"device": "\ud800"}, 0), "name and value must be UTF-8 text"),
        (lambda: Arm("a", {"x": float("nan")}), "nan is not a JSON number"),
        (lambda: Arm("a", b"raw"), "bytes is not JSON-able"),
        (lambda: Arm("a", html=3), "html must be a string"),  # type: ignore[arg-type]
        (lambda: Segment("s", {"device": 1}, 0), "feature 'device'=1, name and value must be UTF-8 text"),  # type: ignore[dict-item]
    ],
)
def test_arm_and_segment_rules(arm: Any, message: str) -> None:
    with pytest.raises(SnapshotError, match=message):
        arm()


def test_tables_are_private_copies() -> None:
    from array import array

    alpha = array("f", [2.0, 30.0, 5.0] * 4)
    snap = build_snapshot(alpha=alpha)
    alpha[0] = 0.0  # validated already: the snapshot must not see this
    assert snap.alpha[0] == 2.0


def test_unusable_context_values_fall_back_instead_of_raising() -> None:
    snap = build_snapshot()
    assert snap.segments[snap.segment_for({"device": ["mobile"], "source": "search"})].key == "search"  # type: ignore[dict-item]


def test_payload_depth_is_limited() -> None:
    payload: Any = "leaf"
    for _ in range(40):
        payload = [payload]
    with pytest.raises(SnapshotError, match="nested deeper than 32 levels"):
        Arm("a", payload)


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ({"device": "mobile", "source": "search"}, "mobile-search"),
        ({"device": "mobile", "source": "social"}, "mobile"),  # leaf misses: its parent
        ({"device": "desktop", "source": "search"}, "search"),
        ({"device": "desktop"}, "all"),
        ({}, "all"),
        ({"device": "mobile", "country": "FR"}, "mobile"),  # features no segment uses are ignored
    ],
)
def test_segment_for_picks_most_specific_match(context: dict[str, str], expected: str) -> None:
    snap = build_snapshot()
    assert snap.segments[snap.segment_for(context)].key == expected


def test_equally_specific_shapes_resolve_in_snapshot_order() -> None:
    snap = build_snapshot()
    # Both 'mobile' (device) and 'search' (source) match; 'mobile' comes first.
    both = {"device": "mobile", "source": "search"}
    reordered = build_snapshot(
        segments=[
            SEGMENTS[0],
            SEGMENTS[2],
            SEGMENTS[1],
            Segment("x", {"device": "mobile", "source": "ad"}, 2),
        ]
    )
    assert snap.segments[snap.segment_for({**both, "source": "x"})].key == "mobile"
    assert reordered.segments[reordered.segment_for({"device": "mobile", "source": "search"})].key == "search"


def test_feature_names_lists_what_segments_look_at() -> None:
    assert build_snapshot().feature_names == {"device", "source"}
