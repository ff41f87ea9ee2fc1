"""control_plane.profiles.builder: signals and stated attributes become profiles, incrementally."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from control_plane.distribution.kv_publishers import LocalKVPublisher
from control_plane.events.ingest import ingest
from control_plane.profiles.builder import (
    ProfileSettings,
    SettingsError,
    build_cycle,
    publish_profiles,
    scores,
)
from control_plane.storage import profiles as rows
from control_plane.storage.schema import profiles
from control_plane.storage.store import Store
from core import LocalKV, decode_profile, profile_key, signal_event, unit_tag
from tests.factories import NOW

SECRET = "edge-secret-0123456789"
DAY = 86_400_000
SETTINGS = ProfileSettings(attributes=frozenset({"plan"}))


def seen(
    unit: str,
    category: str,
    *,
    days_ago: float = 1.0,
    kind: str = "page_view",
    value: float | None = None,
    n: int = 1,
) -> list[dict[str, Any]]:
    ts = int(NOW - days_ago * DAY)
    return [
        signal_event(unit, unit_tag(SECRET, unit), kind, ts + i, category=category, value=value)
        for i in range(n)
    ]


def docs(store: Store) -> dict[str, dict[str, Any]]:
    with store.engine.connect() as conn:
        return {t: json.loads(d) for t, d in conn.execute(select(profiles.c.tag, profiles.c.doc))}


def test_a_visitors_signals_become_features_and_words(store: Store) -> None:
    events = (
        seen("ann", "running-shoes", n=3)
        + seen("ann", "socks")
        + seen("ann", "running-shoes", kind="purchase", value=120.0)
    )
    ingest(store, events, None, NOW)
    result = build_cycle(store, SETTINGS, NOW)
    assert (result.built, result.changed) == (1, 1)
    doc = docs(store)[unit_tag(SECRET, "ann")]
    assert doc["features"]["interest"] == "running-shoes"
    assert doc["because"] == {"interest": "you viewed running shoes"}
    assert doc["features"]["ltv"] == "mid"  # 120 against the default bands: [50, 200)
    assert doc["numbers"]["affinities"]["running-shoes"] > doc["numbers"]["affinities"]["socks"]
    assert doc["dnp"] is False


def test_the_formulas_on_numbers_worked_by_hand() -> None:
    week = 7 * DAY
    got = scores(
        [(NOW - week, "page_view", "a", None), (NOW - 3 * week, "time_on_page", "a", 600.0)], NOW, 14.0
    )
    # weights: 1 * 2^(-7/14) + min(600/60, 10)/2 * 2^(-21/14)
    weighed = 2**-0.5 + 5 * 2**-1.5
    assert got["engagement"] == pytest.approx(1 - math.exp(-weighed / 10), abs=1e-6)
    assert got["recency_days"] == pytest.approx(7.0)
    # two active days 14 days apart: churn = 1 - exp(-7 / 14)
    assert got["churn"] == pytest.approx(1 - math.exp(-0.5), abs=1e-6)
    assert got["interest"] == "a" and got["affinities"] == {"a": 1.0}


def test_a_cycle_rebuilds_only_the_visitors_who_changed(store: Store) -> None:
    ingest(store, [e for u in ("ann", "bob", "cat") for e in seen(u, "books", n=2)], None, NOW)
    assert build_cycle(store, SETTINGS, NOW).built == 3
    assert build_cycle(store, SETTINGS, NOW + 1000).built == 0
    ingest(store, seen("bob", "travel", n=5, days_ago=0), None, NOW + 2000)
    second = build_cycle(store, SETTINGS, NOW + 3000)
    assert (second.built, second.changed) == (1, 1)
    assert docs(store)[unit_tag(SECRET, "bob")]["features"]["interest"] == "travel"
    # A week on, every profile is rebuilt once (recency and churn move with time alone).
    assert build_cycle(store, SETTINGS, NOW + 8 * DAY).built == 3


def test_changed_profiles_are_published_in_bulk_and_only_once(store: Store, tmp_path: Path) -> None:
    kv = LocalKV(tmp_path)
    ingest(store, seen("ann", "books", n=2) + seen("bob", "travel", n=2), None, NOW)
    build_cycle(store, SETTINGS, NOW)
    assert publish_profiles(store, LocalKVPublisher(kv)) == 2
    profile = decode_profile(kv.get(profile_key(unit_tag(SECRET, "ann"))) or b"")
    assert profile.features["interest"] == "books" and profile.because["interest"] == "you viewed books"
    assert publish_profiles(store, LocalKVPublisher(kv)) == 0
    ingest(store, seen("ann", "travel", n=9, days_ago=0), None, NOW)
    build_cycle(store, SETTINGS, NOW + 1000)
    assert publish_profiles(store, LocalKVPublisher(kv)) == 1
    assert (
        decode_profile(kv.get(profile_key(unit_tag(SECRET, "ann"))) or b"").features["interest"] == "travel"
    )


def test_stated_attributes_the_operator_lists_are_features_and_the_flag_is_honoured(store: Store) -> None:
    tag = unit_tag(SECRET, "ann")
    rows.set_attributes(store, "ann", tag, {"plan": "pro", "industry": "retail"}, NOW)
    build_cycle(store, SETTINGS, NOW)
    doc = docs(store)[tag]
    assert doc["features"] == {"plan": "pro"}  # industry is not listed as a feature
    rows.set_attributes(store, "ann", tag, {"plan": None, rows.DNP: "true"}, NOW + 1)
    build_cycle(store, SETTINGS, NOW + 2)
    assert docs(store)[tag]["features"] == {} and docs(store)[tag]["dnp"] is True


def test_a_sensitive_attribute_cannot_be_listed_as_a_feature() -> None:
    with pytest.raises(SettingsError, match="'household_income' is sensitive"):
        ProfileSettings(attributes=frozenset({"plan", "household_income"}))


def test_visitors_with_like_interests_share_a_cluster_and_keep_its_label(store: Store) -> None:
    groups = {"run": ("running-shoes", "socks"), "cook": ("pans", "recipes"), "trip": ("flights", "hotels")}
    events = []
    for name, (first, second) in groups.items():
        for i in range(15):
            events += seen(f"{name}-{i}", first, n=3 + i % 4) + seen(f"{name}-{i}", second, n=1 + i % 3)
    ingest(store, events, None, NOW)
    build_cycle(store, SETTINGS, NOW)  # no profiles to learn clusters from yet
    result = build_cycle(store, SETTINGS, NOW + 8 * DAY)  # refit on the profiles built, rebuild all
    assert result.refitted and result.clusters == 3
    held = docs(store)
    label = {
        name: {held[unit_tag(SECRET, f"{name}-{i}")]["features"]["cluster"] for i in range(15)}
        for name in groups
    }
    assert all(len(v) == 1 for v in label.values()) and len({v.pop() for v in label.values()}) == 3
    run = held[unit_tag(SECRET, "run-0")]
    assert run["because"]["cluster"].startswith("you browse like others interested in running shoes")
    before = {t: d["features"]["cluster"] for t, d in held.items()}
    assert build_cycle(store, SETTINGS, NOW + 16 * DAY).refitted
    assert {t: d["features"]["cluster"] for t, d in docs(store).items()} == before


def test_a_visitor_erased_during_a_cycle_gets_no_profile_back(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from control_plane.storage import privacy

    ingest(store, seen("ann", "books", n=3) + seen("bob", "travel", n=3), None, NOW)
    real = rows.attributes_of

    def erased_meanwhile(conn: Any, hashes: Any) -> Any:
        out = real(conn, hashes)
        privacy.erase(store, "ann")  # after the builder read ann's signals, before it saves
        return out

    monkeypatch.setattr(rows, "attributes_of", erased_meanwhile)
    assert build_cycle(store, SETTINGS, NOW).built == 1
    assert set(docs(store)) == {unit_tag(SECRET, "bob")}


def test_a_visitor_erased_during_a_publish_leaves_no_value_in_kv(store: Store, tmp_path: Path) -> None:
    from control_plane.storage import privacy

    ingest(store, seen("ann", "books", n=3) + seen("bob", "travel", n=3), None, NOW)
    build_cycle(store, SETTINGS, NOW)
    kv = LocalKV(tmp_path)

    class ErasingMidway(LocalKVPublisher):
        def put_many(self, items: Any) -> None:
            privacy.erase(store, "ann")  # the erasure's own KV delete ran before this put
            super().put_many(items)

    assert publish_profiles(store, ErasingMidway(kv)) == 2
    assert kv.get(profile_key(unit_tag(SECRET, "ann"))) is None
    assert kv.get(profile_key(unit_tag(SECRET, "bob"))) is not None


def test_long_category_names_are_worded_within_bounds_and_a_bad_row_stops_no_one(
    store: Store, tmp_path: Path
) -> None:
    long = [f"{name}-" + "x" * 55 for name in ("trail", "road", "track")]
    events = []
    for i in range(30):
        for k, category in enumerate(long):
            events += seen(f"u-{i}", category, n=1 + (i + k) % 3)
    ingest(store, events, None, NOW)
    build_cycle(store, SETTINGS, NOW)
    build_cycle(store, SETTINGS, NOW + 8 * DAY)  # clusters, whose words name long categories
    assert all(len(w) <= 160 for d in docs(store).values() for w in d["because"].values())
    with store.write() as conn:  # a row no profile can be made of (as an older version might leave)
        conn.execute(
            profiles.update()
            .where(profiles.c.tag == unit_tag(SECRET, "u-0"))
            .values(
                doc=json.dumps({"features": {"Bad Name": "x"}, "because": {}, "dnp": False, "updated_ms": 1})
            )
        )
    kv = LocalKV(tmp_path)
    assert publish_profiles(store, LocalKVPublisher(kv)) == 30
    assert kv.get(profile_key(unit_tag(SECRET, "u-0"))) is None
    assert kv.get(profile_key(unit_tag(SECRET, "u-1"))) is not None
    assert publish_profiles(store, LocalKVPublisher(kv)) == 0  # the bad one is not retried forever


def test_numbers_are_never_reused_after_an_erasure_so_no_signal_is_skipped(store: Store) -> None:
    from control_plane.storage import privacy

    ingest(store, seen("ann", "books", n=2) + seen("bob", "travel", n=2, days_ago=0.5), None, NOW)
    build_cycle(store, SETTINGS, NOW)
    privacy.erase(store, "bob")  # held the newest numbers
    ingest(store, seen("cat", "garden", n=2), None, NOW)
    assert build_cycle(store, SETTINGS, NOW + 1).built == 1
    assert docs(store)[unit_tag(SECRET, "cat")]["features"]["interest"] == "garden"


def test_attribute_changes_are_stamped_in_commit_order(store: Store) -> None:
    tag = unit_tag(SECRET, "ann")
    rows.set_attributes(store, "ann", tag, {"plan": "pro"}, NOW)
    build_cycle(store, SETTINGS, NOW)
    # A clock behind the last change (another server's): still seen by the next cycle.
    rows.set_attributes(store, "ben", unit_tag(SECRET, "ben"), {"plan": "free"}, NOW - 5000)
    assert build_cycle(store, SETTINGS, NOW + 1).built == 1
    assert docs(store)[unit_tag(SECRET, "ben")]["features"] == {"plan": "free"}
