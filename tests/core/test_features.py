"""One rule for missing features, wherever a context is read."""

from __future__ import annotations

from core import feature_path, with_unknowns


def test_missing_or_unusable_values_are_unknown() -> None:
    context: dict[str, object] = {"device": "mobile", "source": 3, "bad": "a\x00b"}
    assert feature_path(["device", "source", "country", "bad"], context) == (
        "mobile",
        "unknown",
        "unknown",
        "unknown",
    )
    assert feature_path(["device"], None) == ("unknown",)


def test_with_unknowns_keeps_other_text_values_and_fills_the_named_ones() -> None:
    out = with_unknowns(["device", "source"], {"device": "tablet", "colo": "AMS", "n": 1})
    assert out == {"device": "tablet", "source": "unknown", "colo": "AMS"}
