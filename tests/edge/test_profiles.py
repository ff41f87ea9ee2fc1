"""Profile hydration at the edge (edge.profiles), the signals route and /v1/perch.js."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from typing import Any

import pytest

from control_plane.learning.learner import learn
from control_plane.storage.stats import CellStats
from core import Profile, encode_profile, profile_key, unit_tag
from edge import profiles as module
from edge.routing import handle
from edge.visit import Edge
from tests.edge.conftest import CONFIG, SECRET, FakePlatform, read_body, request, serve
from tests.factories import NOW, spec

UID = "0123456789abcdef0123456789abcdef"
TAG = unit_tag(SECRET, UID)
DECIDE = "https://s.test/v1/decide?experiment=hero"
RUNNER = Profile(
    features={"interest": "running", "engagement": "high"},
    because={"interest": "you viewed running shoes"},
    updated_ms=NOW - 1000,
)


@pytest.fixture
def platform(platform: FakePlatform) -> FakePlatform:
    """A contextual experiment where a runner's best arm is b, a cook's c (learnt from cells)."""
    hero = spec(model="contextual", features=["device", "profile.interest"], holdout=0.0, floor=0.0)
    cells = {
        (device, interest): {
            arm: CellStats(400.0, 300.0 if (arm == "b") == (interest == "running") else 40.0) for arm in "abc"
        }
        for device in ("mobile", "desktop", "unknown")
        for interest in ("running", "cooking", "unknown")
    }
    platform.put(learn(hero, cells, version=1, now_ms=NOW - 1000, seed=1))
    return platform


def decide(edge: Edge, platform: FakePlatform, url: str = DECIDE, uid: str = UID) -> dict[str, Any]:
    response = serve(edge, platform, request(url, headers={"cookie": f"perch_uid={uid}"}))
    assert response.status == 200
    (decision,) = json.loads(asyncio.run(read_body(response)))["decisions"]
    return decision  # type: ignore[no-any-return]


def exposures(platform: FakePlatform) -> list[dict[str, Any]]:
    asyncio.run(platform.drain())
    return [e for _, body, _ in platform.posts for e in json.loads(body)["events"] if e["type"] == "exposure"]


def test_a_visitors_profile_becomes_context_and_why_says_what_it_came_from(
    edge: Edge, platform: FakePlatform
) -> None:
    platform.kv[profile_key(TAG)] = encode_profile(RUNNER)
    decision = decide(edge, platform)
    assert decision["arm"] == "b" and "profile.interest=running" in decision["because"]
    assert "you viewed running shoes" in decision["why"]
    (exposure,) = exposures(platform)
    assert exposure["context"]["profile.interest"] == "running"  # what the learner will credit
    # Another visitor, no profile: the same snapshot picks for an unknown interest.
    other = decide(edge, platform, uid="f" * 32)
    assert "you viewed" not in other["why"]


def test_a_client_cannot_claim_profile_features(edge: Edge, platform: FakePlatform) -> None:
    decide(edge, platform, DECIDE + "&ctx.profile.interest=running")
    (exposure,) = exposures(platform)
    assert exposure["context"]["profile.interest"] == "unknown"


def test_the_cache_answers_the_visitors_next_requests(edge: Edge, platform: FakePlatform) -> None:
    platform.kv[profile_key(TAG)] = encode_profile(RUNNER)
    decide(edge, platform)
    reads = platform.kv_reads
    for _ in range(3):
        assert decide(edge, platform)["arm"] == "b"
    assert platform.kv_reads == reads  # snapshot and profile both from the isolate
    health = edge.profiles.health()
    assert health["by_status"] == {"hit": 1, "cached": 3} and health["hit_rate"] == 1.0
    assert health["kv_read_ms"]["p99"] is not None


def test_a_slow_profile_read_is_not_waited_for_and_fills_the_cache_for_next_time(
    edge: Edge, platform: FakePlatform
) -> None:
    platform.kv[profile_key(TAG)] = encode_profile(RUNNER)
    decide(edge, platform, uid="e" * 32)  # the snapshot is cached first
    platform.kv_delay_s = 0.1  # past the 20 ms budget

    async def twice() -> tuple[dict[str, Any], dict[str, Any]]:
        req = request(DECIDE, headers={"cookie": f"perch_uid={UID}"})
        first = json.loads(await read_body(await handle(edge, platform, req, random.Random(1))))
        await platform.drain()  # the read finishes in the background (waitUntil)
        second = json.loads(await read_body(await handle(edge, platform, req, random.Random(2))))
        return first["decisions"][0], second["decisions"][0]

    first, second = asyncio.run(twice())
    assert first["reason"] == "personalized" and "profile not read in time" in first["why"]
    assert "you viewed running shoes" in second["why"]
    assert edge.profiles.counts["timeout"] == 1 and edge.profiles.counts["cached"] == 1


@pytest.mark.parametrize(
    ("kv", "note"),
    [
        (b"\xc1 not msgpack", "profile unreadable"),
        (encode_profile(RUNNER)[:-3], "profile unreadable"),
        (b"\x81\xa6schema\x09", "profile unreadable"),  # a map of another schema
        (OSError("KV down"), "profile store unavailable"),
    ],
)
def test_a_broken_profile_never_fails_a_decision(
    edge: Edge, platform: FakePlatform, kv: bytes | Exception, note: str
) -> None:
    decide(edge, platform, uid="e" * 32)  # the snapshot is cached first
    if isinstance(kv, Exception):
        platform.kv_error = kv
    else:
        platform.kv[profile_key(TAG)] = kv
    decision = decide(edge, platform)
    assert decision["reason"] == "personalized" and note in decision["why"]


def test_the_isolates_profile_cache_stays_bounded(
    edge: Edge, platform: FakePlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "MAX_PROFILES", 5)
    for i in range(12):
        decide(edge, platform, uid=f"{i:032x}")
    assert len(edge.profiles.entries) == 5
    assert edge.profiles.counts["miss"] == 12


def test_a_visitor_who_asked_not_to_be_personalized_gets_the_default(
    edge: Edge, platform: FakePlatform
) -> None:
    platform.kv[profile_key(TAG)] = encode_profile(Profile(features={"interest": "running"}, dnp=True))
    decision = decide(edge, platform)
    assert decision["reason"] == "consent" and decision["arm"] == "a"
    assert decision["why"] == "you asked not to be personalized: the default variant"
    (exposure,) = exposures(platform)
    assert exposure["unit"] is None


def test_health_reports_hydration(edge: Edge, platform: FakePlatform) -> None:
    decide(edge, platform)
    doc = json.loads(asyncio.run(read_body(serve(edge, platform, request("https://s.test/v1/health")))))
    assert doc["profiles"]["by_status"] == {"miss": 1} and doc["profiles"]["hit_rate"] == 0.0


# --- signals ---------------------------------------------------------------------------------------


def signals(
    edge: Edge, platform: FakePlatform, body: object, cookie: str = f"perch_uid={UID}"
) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = serve(edge, platform, request("https://s.test/v1/signals", "POST", {"cookie": cookie}, raw))
    return response.status, json.loads(asyncio.run(read_body(response)))


def test_signals_are_checked_one_by_one_and_sent_home_for_the_cookies_visitor(
    edge: Edge, platform: FakePlatform
) -> None:
    beacon = {
        "schema": 1,
        "signals": [
            {"kind": "page_view", "category": "running-shoes"},
            {"kind": "scroll", "value": 150},
            {"kind": "add_to_cart", "category": "running-shoes", "value": 89.9, "id": "cart-1"},
            {"kind": "purchase", "unit": "someone-else", "value": 89.9},
        ],
    }
    status, doc = signals(edge, platform, beacon)
    assert status == 202 and doc["accepted"] == 3
    (refused,) = doc["rejected"]
    assert refused["index"] == 1 and "within [0, 100]" in refused["error"]
    asyncio.run(platform.drain())
    (sent,) = [json.loads(body)["events"] for _, body, _ in platform.posts]
    assert {e["unit"] for e in sent} == {UID} and {e["tag"] for e in sent} == {TAG}
    assert [e["kind"] for e in sent] == ["page_view", "add_to_cart", "purchase"]
    assert edge.rejected_signals == 1


def test_a_retried_beacon_carries_the_same_event_ids(edge: Edge, platform: FakePlatform) -> None:
    beacon = {"schema": 1, "signals": [{"kind": "custom", "name": "newsletter", "id": "n-1"}]}
    signals(edge, platform, beacon)
    platform.clock_ms += 5000
    signals(edge, platform, beacon)
    asyncio.run(platform.drain())
    ids = [e["id"] for _, body, _ in platform.posts for e in json.loads(body)["events"]]
    assert len(ids) == 2 and ids[0] == ids[1]


@pytest.mark.parametrize(
    ("body", "cookie", "status", "message"),
    [
        (b"{", f"perch_uid={UID}", 400, "body must be JSON"),
        ({"signals": []}, f"perch_uid={UID}", 400, '{"schema": 1, "signals": [...]}'),
        ({"schema": 1, "signals": [{"kind": "x"}] * 51}, f"perch_uid={UID}", 400, "1 to 50 per beacon"),
        ({"schema": 1, "signals": [{"kind": "nope"}]}, f"perch_uid={UID}", 400, "no usable signal"),
        ({"schema": 1, "signals": [{"kind": "page_view"}]}, "", 400, "no visitor id"),
    ],
)
def test_bad_signal_beacons_get_a_4xx_that_says_what_was_expected(
    edge: Edge, platform: FakePlatform, body: object, cookie: str, status: int, message: str
) -> None:
    got, doc = signals(edge, platform, body, cookie)
    assert got == status and message in str(doc)
    asyncio.run(platform.drain())
    assert platform.posts == []


def test_without_consent_nothing_is_recorded(edge: Edge, platform: FakePlatform) -> None:
    status, doc = signals(
        edge, platform, {"schema": 1, "signals": [{"kind": "page_view"}]}, f"perch_uid={UID}; perch_consent=0"
    )
    assert status == 200 and doc["accepted"] == 0
    asyncio.run(platform.drain())
    assert platform.posts == []


def test_the_script_is_served_first_party(edge: Edge, platform: FakePlatform) -> None:
    response = serve(edge, platform, request("https://s.test/v1/perch.js"))
    body = asyncio.run(read_body(response))
    assert response.status == 200 and dict(response.headers)["content-type"].startswith(
        "application/javascript"
    )
    assert b"sendBeacon" in body and b"http" not in body.replace(b"https://", b"")  # no third party
    assert len(body) < 4096


def test_a_new_visitor_or_profiles_off_costs_no_profile_read(edge: Edge, platform: FakePlatform) -> None:
    response = serve(edge, platform, request(DECIDE))  # no cookie: an id is made on this request
    assert response.status == 200 and edge.profiles.counts == {}
    off = Edge(dataclasses.replace(CONFIG, profiles=False))
    platform.kv[profile_key(TAG)] = encode_profile(RUNNER)
    assert "you viewed" not in decide(off, platform)["why"]
    assert off.profiles.counts == {}


def test_without_the_edge_secret_signals_are_refused_and_no_profile_is_read(platform: FakePlatform) -> None:
    bare = Edge(dataclasses.replace(CONFIG, edge_secret=None))
    status, doc = signals(bare, platform, {"schema": 1, "signals": [{"kind": "page_view"}]})
    assert status == 503 and "signals need PERCH_EDGE_SECRET (it names the visitor's profile)" in doc["error"]
    assert serve(bare, platform, request("https://s.test/v1/signals")).status == 405
    decide(bare, platform)
    assert bare.profiles.counts == {}


def test_one_visitor_cannot_flood_the_profile_store(edge: Edge, platform: FakePlatform) -> None:
    def burst(start: int) -> tuple[int, Any]:
        items = [{"kind": "page_view", "category": "books", "id": f"p{start + i}"} for i in range(50)]
        return signals(edge, platform, {"schema": 1, "signals": items})

    assert burst(0)[0] == 202 and burst(50)[0] == 202  # 100 at once
    status, doc = burst(100)
    assert status == 429 and "budget" in doc["error"]
    platform.clock_ms += 20_000  # 20 more, at one a second
    status, doc = burst(200)
    assert (status, doc["accepted"], doc["throttled"]) == (202, 20, 30)
    other = signals(
        edge, platform, {"schema": 1, "signals": [{"kind": "page_view"}]}, "perch_uid=" + "f" * 32
    )
    assert other[0] == 202  # another visitor's budget is their own
    asyncio.run(platform.drain())
    assert sum(len(json.loads(body)["events"]) for _, body, _ in platform.posts) == 121
    assert edge.signal_budget.refused == 80
