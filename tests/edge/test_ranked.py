"""Ranked decision points at the edge: JSON items, list slots, one exposure and token per position."""

from __future__ import annotations

import asyncio
import json
import re

from core import Profile, encode_profile, profile_key, split_position_id, unit_tag, verify_token
from edge.visit import Edge
from tests.edge.conftest import SECRET, FakePlatform, read_body, request, serve
from tests.edge.test_handler import UID, body_json, events
from tests.factories import build_ranked_snapshot

COOKIE = {"cookie": f"perch_uid={UID}"}
LIST_PAGE = (
    b'<html><body><ul data-perch-slot="recs"><li>origin 1</li><li>origin 2</li></ul>'
    b'<h1 data-perch-slot="home-hero">Welcome</h1></body></html>'
)


def test_decide_answers_items_each_with_its_own_id_and_token(edge: Edge, platform: FakePlatform) -> None:
    platform.put(build_ranked_snapshot())
    status, doc, _ = body_json(edge, platform, "https://s.test/v1/decide?experiment=recs", headers=COOKIE)
    assert status == 200
    (answer,) = doc["decisions"]
    assert answer["reason"] == "personalized" and len(answer["items"]) == 5
    assert "ranked for segment 'all'" in answer["why"] and "from outside the interest" in answer["why"]
    slate = answer["decision_id"][:30]
    for p, item in enumerate(answer["items"]):
        assert item["position"] == p and split_position_id(item["decision_id"]) == (slate, p)
        token = verify_token(SECRET, item["token"])
        assert (token.decision_id, token.arm, token.experiment) == (item["decision_id"], item["arm"], "recs")
    exposures = [e for e in events(platform) if e["type"] == "exposure"]
    assert [(e["decision_id"], e["arm"]) for e in exposures] == [
        (i["decision_id"], i["arm"]) for i in answer["items"]
    ]
    assert all(e["unit"] == UID and e["reason"] == "personalized" for e in exposures)


def test_a_click_beacon_with_a_positions_token_credits_that_item(edge: Edge, platform: FakePlatform) -> None:
    platform.put(build_ranked_snapshot())
    _, doc, _ = body_json(edge, platform, "https://s.test/v1/decide?experiment=recs", headers=COOKIE)
    third = doc["decisions"][0]["items"][2]
    events(platform)
    platform.posts.clear()
    beacon = json.dumps({"token": third["token"]}).encode()
    status, answer, _ = body_json(edge, platform, "https://s.test/v1/events", "POST", COOKIE, beacon)
    assert (status, answer["accepted"]) == (202, 1)
    (outcome,) = events(platform)
    assert (outcome["type"], outcome["decision_id"]) == ("outcome", third["decision_id"])


def test_the_profiles_interest_is_the_primary_group(edge: Edge, platform: FakePlatform) -> None:
    platform.put(build_ranked_snapshot())
    tag = unit_tag(SECRET, UID)
    platform.kv[profile_key(tag)] = encode_profile(Profile(features={"interest": "g3"}, updated_ms=1))
    _, doc, _ = body_json(edge, platform, "https://s.test/v1/decide?experiment=recs", headers=COOKIE)
    answer = doc["decisions"][0]
    assert answer["primary_group"] == "g3"
    groups = [i["group"] for i in answer["items"]]
    assert sum(g != "g3" for g in groups) >= 1


def test_no_consent_gets_the_default_order_and_is_not_logged_by_unit(
    edge: Edge, platform: FakePlatform
) -> None:
    platform.put(build_ranked_snapshot())
    headers = {"cookie": f"perch_uid={UID}; perch_consent=0"}
    _, doc, _ = body_json(edge, platform, "https://s.test/v1/decide?experiment=recs", headers=headers)
    answer = doc["decisions"][0]
    assert answer["reason"] == "consent"
    assert [i["arm"] for i in answer["items"]] == [f"item-{i}" for i in range(5)]
    assert all(e["unit"] is None for e in events(platform) if e["type"] == "exposure")


def _list_page(platform: FakePlatform) -> None:
    headers = [("content-type", "text/html; charset=utf-8")]
    platform.pages["https://origin.test/shop"] = (200, headers, [LIST_PAGE[:20], LIST_PAGE[20:]])


def test_a_list_slot_gets_the_items_fragments_and_their_tokens_in_order(
    edge: Edge, platform: FakePlatform
) -> None:
    platform.put(build_ranked_snapshot())
    _list_page(platform)
    response = serve(edge, platform, request("https://s.test/shop", headers=COOKIE))
    html = asyncio.run(read_body(response)).decode()
    match = re.search(
        r'<ul data-perch-tokens="([^"]+)" data-perch-slot="recs">((?:<li>item \d+</li>){5})</ul>', html
    )
    assert match, html
    tokens = match.group(1).split(" ")
    shown = re.findall(r"<li>item (\d+)</li>", match.group(2))
    assert [verify_token(SECRET, t).arm for t in tokens] == [f"item-{i}" for i in shown]
    exposures = [e for e in events(platform) if e["type"] == "exposure" and e["experiment"] == "recs"]
    assert [e["arm"] for e in exposures] == [f"item-{i}" for i in shown]


def test_a_list_slot_keeps_the_origins_items_when_an_item_has_no_fragment(
    edge: Edge, platform: FakePlatform
) -> None:
    snap = build_ranked_snapshot()
    from core import Arm

    platform.put(build_ranked_snapshot(arms=[Arm(a.key, a.payload) for a in snap.arms]))
    _list_page(platform)
    html = asyncio.run(
        read_body(serve(edge, platform, request("https://s.test/shop", headers=COOKIE)))
    ).decode()
    assert '<ul data-perch-slot="recs"><li>origin 1</li><li>origin 2</li></ul>' in html


def test_a_page_with_a_broken_ranked_snapshot_still_renders(edge: Edge, platform: FakePlatform) -> None:
    platform.kv["perch:snapshot:recs"] = b"\x93broken"
    _list_page(platform)
    response = serve(edge, platform, request("https://s.test/shop", headers=COOKIE))
    html = asyncio.run(read_body(response)).decode()
    assert response.status == 200
    assert "<li>origin 1</li><li>origin 2</li>" in html


def test_the_session_interest_counts_when_the_profiles_names_no_group(
    edge: Edge, platform: FakePlatform
) -> None:
    from edge.session import Session, session_cookie

    platform.put(build_ranked_snapshot())
    now_s = platform.now_ms() // 1000
    primaries = set()
    for i in range(12):  # visitors whose top-scored items differ: only the session can make it g2
        uid = f"{i:032x}"
        cookie = session_cookie(
            Session(now_s - 60, now_s - 60, now_s - 30, -1, 2, 1, "g2"), SECRET, uid, 3600
        )
        platform.kv[profile_key(unit_tag(SECRET, uid))] = encode_profile(
            Profile(features={"interest": "books"}, updated_ms=1)
        )
        headers = {"cookie": f"perch_uid={uid}; {cookie.split(';', 1)[0]}"}
        _, doc, _ = body_json(edge, platform, "https://s.test/v1/decide?experiment=recs", headers=headers)
        primaries.add(doc["decisions"][0]["primary_group"])
    assert primaries == {"g2"}  # "books" names no group of items; the session's "g2" does
