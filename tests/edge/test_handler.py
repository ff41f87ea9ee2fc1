from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from core import INDEX_KEY, DecisionToken, encode_index, mint_token, sign_identity, unit_tag, verify
from edge.cache import MAX_ENTRIES, MAX_NEGATIVE
from edge.platform import EdgeRequest
from edge.visit import Edge
from tests.edge.conftest import IDENTITY_SECRET, SECRET, FakePlatform, header, read_body, request, serve
from tests.factories import NOW, build_snapshot

UID = "0123456789abcdef0123456789abcdef"
DECIDE_FIELDS = {
    "experiment",
    "arm",
    "payload",
    "html",
    "propensity",
    "reason",
    "segment",
    "snapshot_version",
    "snapshot_age_s",
    "because",
    "decision_id",
    "why",
    "token",
}
PAGE = (
    b'<html><body><h1 data-perch-slot="home-hero">Welcome</h1>'
    b'<p data-perch-slot="unknown-exp">keep me</p></body></html>'
)


def body_json(edge: Edge, platform: FakePlatform, *args: object, **kwargs: object) -> tuple[int, dict, list]:  # type: ignore[type-arg]
    response = serve(edge, platform, request(*args, **kwargs))  # type: ignore[arg-type]
    return response.status, json.loads(asyncio.run(read_body(response))), response.headers


def events(platform: FakePlatform) -> list[dict]:  # type: ignore[type-arg]
    asyncio.run(platform.drain())
    out = []
    for url, body, headers in platform.posts:
        assert url == "https://cp.test/v1/events"
        verify(SECRET, headers["X-Perch-Signature"], body, now=NOW // 1000)
        out += json.loads(body)["events"]
    return out


def test_get_decide_contract(edge: Edge, platform: FakePlatform) -> None:
    status, doc, headers = body_json(
        edge,
        platform,
        "https://s.test/v1/decide?experiment=home-hero&experiment=nope&ctx.device=mobile",
        headers={"cookie": f"perch_uid={UID}"},
    )
    assert status == 200
    first, second = doc["decisions"]
    assert set(first) == DECIDE_FIELDS
    assert first["experiment"] == "home-hero" and first["snapshot_version"] == 7
    assert first["segment"] == "mobile" and first["reason"] in ("personalized", "holdout")
    assert first["snapshot_age_s"] == 60.0
    assert second["reason"] == "fallback" and second["arm"] is None and "no snapshot in KV" in second["why"]
    assert ("cache-control", "private, no-store") in headers
    assert re.fullmatch(r"perch;dur=\d+\.\d{3}", dict(headers)["server-timing"])
    (exposure,) = events(platform)  # the fallback has no arm to learn from
    assert exposure["type"] == "exposure" and exposure["unit"] == UID
    assert exposure["context"] == {}  # this snapshot asks for no context features
    assert exposure["decision_id"] == first["decision_id"] and exposure["arm"] == first["arm"]


def test_a_fallback_answers_in_the_shape_of_a_decision(edge: Edge, platform: FakePlatform) -> None:
    _, doc, _ = body_json(edge, platform, "https://s.test/v1/decide?experiment=home-hero&experiment=nope")
    decided, fell_back = doc["decisions"]
    assert decided["reason"] != "fallback" and fell_back["reason"] == "fallback"
    assert list(fell_back) == list(decided)  # the same keys, in the same order
    for key, value in fell_back.items():
        if key in ("experiment", "reason", "decision_id", "why"):
            assert isinstance(value, str) and isinstance(decided[key], str), key
        elif key == "because":
            assert value == [] and isinstance(decided[key], list)
        else:  # nothing was decided: no arm, no snapshot, no token
            assert value is None and (decided[key] is not None or key in ("payload", "token")), key
    assert re.fullmatch(r"[0-9a-f]{32}", fell_back["decision_id"])
    assert fell_back["decision_id"] != decided["decision_id"]


def test_post_decide_with_context(edge: Edge, platform: FakePlatform) -> None:
    body = json.dumps(
        {"experiments": ["home-hero"], "context": {"device": "mobile", "source": "search"}}
    ).encode()
    status, doc, _ = body_json(
        edge, platform, "https://s.test/v1/decide", "POST", {"cookie": f"perch_uid={UID}"}, body
    )
    assert status == 200 and doc["decisions"][0]["segment"] == "mobile-search"


def test_exposures_carry_the_context_features_the_snapshot_asks_for(
    edge: Edge, platform: FakePlatform
) -> None:
    platform.put(build_snapshot(context_features=["device", "country", "plan"]))
    body_json(
        edge,
        platform,
        "https://s.test/v1/decide?experiment=home-hero&ctx.device=mobile&ctx.other=x",
        headers={"cookie": f"perch_uid={UID}"},
        cf={"country": "DE"},
    )
    (exposure,) = events(platform)
    assert exposure["context"] == {"device": "mobile", "country": "DE", "plan": "unknown"}


def test_same_visitor_same_arm_across_requests(edge: Edge, platform: FakePlatform) -> None:
    url = "https://s.test/v1/decide?experiment=home-hero"
    arms = {
        body_json(edge, platform, url, headers={"cookie": f"perch_uid={UID}"})[1]["decisions"][0]["arm"]
        for _ in range(5)
    }
    assert len(arms) == 1


def test_new_visitor_gets_a_cookie_and_consent_withheld_gets_none(edge: Edge, platform: FakePlatform) -> None:
    response = serve(edge, platform, request("https://s.test/v1/decide?experiment=home-hero"))
    cookie, session = header(response, "set-cookie")
    assert session.startswith("perch_session=")
    assert re.fullmatch(
        r"perch_uid=[0-9a-f]{32}; Path=/; Max-Age=31536000; HttpOnly; Secure; SameSite=Lax", cookie
    )
    response = serve(
        edge, platform, request("https://s.test/v1/decide?experiment=home-hero", headers={"sec-gpc": "1"})
    )
    assert header(response, "set-cookie") == []
    decision = json.loads(asyncio.run(read_body(response)))["decisions"][0]
    assert (decision["arm"], decision["reason"]) == ("control", "consent")
    assert all(e.get("unit") is None for e in events(platform)[1:])


def test_stitch_is_logged(edge: Edge, platform: FakePlatform) -> None:
    body_json(
        edge,
        platform,
        "https://s.test/v1/decide?experiment=home-hero",
        headers={"cookie": f"perch_uid={UID}", "x-perch-user": sign_identity(IDENTITY_SECRET, "user-7")},
    )
    stitches = [e for e in events(platform) if e["type"] == "stitch"]
    assert [(e["anonymous_id"], e["user_id"]) for e in stitches] == [(UID, "user-7")]


@pytest.mark.parametrize(
    "claim",
    ["victim-1", sign_identity("another-site-secret", "victim-1"), "v1." + "0" * 64 + ".victim-1"],
    ids=["bare", "wrong-secret", "forged-mac"],
)
def test_h2_an_identity_the_site_did_not_sign_is_ignored_and_counted(
    edge: Edge, platform: FakePlatform, claim: str
) -> None:
    """An attacker with one cookie cannot claim users: no stitch, no user unit, the claim counted."""
    for via in ({"x-perch-user": claim}, {"cookie": f"perch_uid={UID}; perch_user={claim}"}):
        headers = {"cookie": f"perch_uid={UID}", **via}
        if "cookie" in via:
            headers["cookie"] = via["cookie"]
        body_json(edge, platform, "https://s.test/v1/decide?experiment=home-hero", headers=headers)
        beacon = json.dumps({"token": _token()}).encode()  # minted for the anonymous id
        body_json(edge, platform, "https://s.test/v1/events", "POST", headers, beacon)
    sent = events(platform)
    assert [e for e in sent if e["type"] == "stitch"] == []
    assert {e["unit"] for e in sent} == {UID}
    _, health, _ = body_json(edge, platform, "https://s.test/v1/health")
    assert health["isolate"]["rejected_identities"] == 2


def test_a_signed_identity_in_the_cookie_counts_too(edge: Edge, platform: FakePlatform) -> None:
    token = sign_identity(IDENTITY_SECRET, "user.with.dots@example.com")
    body_json(
        edge,
        platform,
        "https://s.test/v1/decide?experiment=home-hero",
        headers={"cookie": f"perch_uid={UID}; perch_user={token}"},
    )
    (exposure, stitch) = sorted(events(platform), key=lambda e: e["type"])
    assert exposure["unit"] == "user.with.dots@example.com"
    assert (stitch["anonymous_id"], stitch["user_id"]) == (UID, "user.with.dots@example.com")


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (("https://s.test/v1/decide",), 400, "name at least one experiment"),
        (("https://s.test/v1/decide?experiment=bad key",), 400, "keys are 1-128"),
        (("https://s.test/v1/decide?" + "&".join(f"experiment=e{i}" for i in range(21)),), 400, "at most 20"),
        (("https://s.test/v1/decide?experiment=a&ctx.Bad=1",), 400, "names are 1-64"),
        (("https://s.test/v1/decide", "POST", {}, b"{nope"), 400, "body must be JSON"),
        (("https://s.test/v1/decide", "POST", {}, b"[1]"), 400, "body must be a JSON object"),
        (
            ("https://s.test/v1/decide", "POST", {}, b'{"experiments":["a"],"context":[]}'),
            400,
            '"context" must be',
        ),
        (("https://s.test/v1/decide", "POST", {}, b" " * 70_000), 413, "larger than"),
        (("https://s.test/v1/decide", "PUT"), 405, "use GET or POST"),
        (("https://s.test/v1/events",), 405, "use POST"),
        (("https://s.test/v1/events", "POST", {}, b"{}"), 400, "no outcome in the beacon can be credited"),
    ],
)
def test_bad_input_gets_a_4xx_that_says_what_was_expected(
    edge: Edge,
    platform: FakePlatform,
    args: tuple,
    status: int,
    message: str,  # type: ignore[type-arg]
) -> None:
    got, doc, headers = body_json(edge, platform, *args)
    assert got == status
    assert message in doc["error"]
    assert "server-timing" in dict(headers)


def _token(unit: str | None = UID, decision_id: str = "a" * 32, ts_ms: int = NOW) -> str:
    """A token as the edge mints it (for beacons from a visitor with ``unit``)."""
    return mint_token(
        SECRET, DecisionToken(decision_id, "home-hero", "bold", {}, ts_ms, 7, unit_tag(SECRET, unit))
    )


def test_beacons_are_validated_and_forwarded_signed(edge: Edge, platform: FakePlatform) -> None:
    cookie = {"cookie": f"perch_uid={UID}"}
    url = "https://s.test/v1/decide?experiment=home-hero"
    first, second = (body_json(edge, platform, url, headers=cookie)[1]["decisions"][0] for _ in range(2))
    events(platform)
    platform.posts.clear()
    beacon = {
        "events": [
            {"token": first["token"], "value": 1},
            {"token": second["token"], "value": 19.5, "id": "order-1"},
        ]
    }
    status, doc, _ = body_json(
        edge, platform, "https://s.test/v1/events", "POST", cookie, json.dumps(beacon).encode()
    )
    assert (status, doc) == (202, {"accepted": 2, "rejected": []})
    sent = events(platform)
    assert [(e["type"], e["decision_id"], e["experiment"], e["value"], e["unit"]) for e in sent] == [
        ("outcome", first["decision_id"], "home-hero", 1.0, UID),
        ("outcome", second["decision_id"], "home-hero", 19.5, UID),
    ]
    assert sent[1]["id"] == "order-1"


@pytest.mark.parametrize(
    ("item", "headers", "message"),
    [
        (
            {"decision_id": "a" * 32, "experiment": "home-hero"},
            {"cookie": f"perch_uid={UID}"},
            "token is required",
        ),
        ({"token": _token()}, {"cookie": f"perch_uid={'f' * 32}"}, "minted for another visitor"),
        ({"token": _token()}, {}, "minted for another visitor"),  # no cookie: not the token's visitor
        ({"token": _token()[:-1] + "0"}, {"cookie": f"perch_uid={UID}"}, "signature does not match"),
        (
            {
                "token": mint_token(
                    "another-deployment", DecisionToken("a" * 32, "home-hero", "b", {}, NOW, 7, "")
                )
            },
            {},
            "signature does not match",
        ),
        ({"token": _token(ts_ms=NOW - 8 * 86400_000)}, {"cookie": f"perch_uid={UID}"}, "outside the"),
        ({"token": "t1.x.y"}, {}, "not a Perch decision token"),
        ({"token": ["t1"]}, {}, "must be the decision's token"),
    ],
    ids=[
        "no-token",
        "other-visitor",
        "no-cookie",
        "altered",
        "other-secret",
        "expired",
        "garbage",
        "not-a-string",
    ],
)
def test_m1_an_outcome_is_credited_only_with_a_valid_token_of_this_visitor(
    edge: Edge, platform: FakePlatform, item: dict[str, object], headers: dict[str, str], message: str
) -> None:
    status, doc, _ = body_json(
        edge, platform, "https://s.test/v1/events", "POST", headers, json.dumps({"events": [item]}).encode()
    )
    assert status == 400, doc
    assert message in doc["rejected"][0]["error"]
    assert events(platform) == []
    _, health, _ = body_json(edge, platform, "https://s.test/v1/health")
    assert health["isolate"]["rejected_beacons"] == 1


def test_a_beacon_with_some_bad_items_credits_the_good_ones(edge: Edge, platform: FakePlatform) -> None:
    beacon = {"events": [{"token": _token()}, {"token": "forged"}]}
    status, doc, _ = body_json(
        edge,
        platform,
        "https://s.test/v1/events",
        "POST",
        {"cookie": f"perch_uid={UID}"},
        json.dumps(beacon).encode(),
    )
    assert status == 202 and doc["accepted"] == 1 and doc["rejected"][0]["index"] == 1
    assert [e["decision_id"] for e in events(platform)] == ["a" * 32]


def _post_counts(health: dict[str, Any]) -> dict[str, int]:
    return {k: health["events"][k] for k in ("queued", "delivered", "rejected", "dropped")}


def test_event_delivery_retries_then_gives_up_without_raising(edge: Edge, platform: FakePlatform) -> None:
    platform.post_status = [503, 429, 202]
    body_json(edge, platform, "https://s.test/v1/decide?experiment=home-hero")
    assert len(events(platform)) == 3  # three attempts, same batch
    platform.posts.clear()
    platform.post_status = [400]
    body_json(edge, platform, "https://s.test/v1/decide?experiment=home-hero")
    asyncio.run(platform.drain())
    assert len(platform.posts) == 1  # a refused batch is not resent
    # Lost exposures show in the isolate's health, not only in a log line.
    _, doc, _ = body_json(edge, platform, "https://s.test/v1/health")
    assert _post_counts(doc) == {"queued": 0, "delivered": 1, "rejected": 0, "dropped": 1}
    assert doc["events"]["queues"] == doc["events"]["queue_messages"] == doc["events"]["fallbacks"] == 0


def test_events_the_control_plane_refused_are_not_counted_as_delivered(
    edge: Edge, platform: FakePlatform
) -> None:
    platform.post_answer = b'{"accepted": {"outcome": 1}, "rejected": [{"index": 1, "error": "x"}]}'
    beacon = {"events": [{"token": _token(decision_id=c * 32)} for c in "ab"]}
    cookie = {"cookie": f"perch_uid={UID}"}
    body_json(edge, platform, "https://s.test/v1/events", "POST", cookie, json.dumps(beacon).encode())
    asyncio.run(platform.drain())
    _, doc, _ = body_json(edge, platform, "https://s.test/v1/health")
    assert _post_counts(doc) == {"queued": 0, "delivered": 1, "rejected": 1, "dropped": 0}


def test_health_lists_what_the_isolate_holds(edge: Edge, platform: FakePlatform) -> None:
    body_json(edge, platform, "https://s.test/v1/decide?experiment=home-hero")
    status, doc, _ = body_json(edge, platform, "https://s.test/v1/health")
    assert status == 200
    assert doc["snapshots"]["home-hero"]["version"] == 7
    assert doc["isolate"]["requests"] == 2


def test_kv_failure_serves_fallback_never_5xx(edge: Edge, platform: FakePlatform) -> None:
    platform.kv_error = OSError("KV is down")
    status, doc, _ = body_json(edge, platform, "https://s.test/v1/decide?experiment=home-hero")
    assert status == 200
    assert doc["decisions"][0]["reason"] == "fallback"
    # Generic outward (no infrastructure detail for visitors), the details in the log.
    assert "KV read failed (OSError)" in doc["decisions"][0]["why"]
    assert "KV is down" not in doc["decisions"][0]["why"]


def _page(
    platform: FakePlatform, headers: list[tuple[str, str]] | None = None, chunks: list[bytes] | None = None
) -> None:
    default_headers = [
        ("content-type", "text/html; charset=utf-8"),
        ("cache-control", "public, max-age=600"),
        ("content-length", "123"),
    ]
    platform.pages["https://origin.test/products/1?x=1"] = (
        200,
        headers or default_headers,
        chunks or [PAGE[:30], PAGE[30:]],
    )


def test_page_slots_are_filled_and_the_response_is_private(edge: Edge, platform: FakePlatform) -> None:
    _page(platform)
    platform.put(
        build_snapshot(holdout=0.0, floor=0.0, alpha=[1.0, 500.0, 1.0] * 4, beta=[500.0, 1.0, 500.0] * 4)
    )
    response = serve(
        edge, platform, request("https://s.test/products/1?x=1", headers={"cookie": f"perch_uid={UID}"})
    )
    html = asyncio.run(read_body(response)).decode()
    assert response.status == 200
    match = re.search(
        r'<h1 data-perch-token="(t1\.[^"]+)" data-perch-slot="home-hero"><h1>Go</h1></h1>', html
    )
    assert match, html  # arm 'bold' carries this fragment, and the slot its decision's token
    assert '<p data-perch-slot="unknown-exp">keep me</p>' in html  # no snapshot: origin content stays
    assert header(response, "cache-control") == ["private, no-store"]
    assert header(response, "content-length") == []
    (exposure,) = [e for e in events(platform) if e["type"] == "exposure"]
    assert exposure["arm"] == "bold"
    platform.posts.clear()
    # The token in the page credits that very decision, for this visitor only.
    beacon = json.dumps({"token": match.group(1)}).encode()
    status, doc, _ = body_json(
        edge, platform, "https://s.test/v1/events", "POST", {"cookie": f"perch_uid={UID}"}, beacon
    )
    assert (status, doc["accepted"]) == (202, 1)
    (credited,) = events(platform)
    assert (credited["decision_id"], credited["experiment"]) == (exposure["decision_id"], "home-hero")


def test_page_without_slots_keeps_origin_caching(edge: Edge, platform: FakePlatform) -> None:
    _page(platform, chunks=[b"<html><body>plain</body></html>"])
    response = serve(edge, platform, request("https://s.test/products/1?x=1"))
    assert asyncio.run(read_body(response)) == b"<html><body>plain</body></html>"
    assert header(response, "cache-control") == ["public, max-age=600"]
    assert header(response, "set-cookie") == []


def test_non_html_passes_through(edge: Edge, platform: FakePlatform) -> None:
    _page(platform, headers=[("content-type", "application/json")], chunks=[b'{"data-perch-slot":1}'])
    response = serve(edge, platform, request("https://s.test/products/1?x=1"))
    assert asyncio.run(read_body(response)) == b'{"data-perch-slot":1}'


def test_kv_down_page_still_renders_with_origin_content(edge: Edge, platform: FakePlatform) -> None:
    _page(platform)
    platform.kv_error = OSError("KV is down")
    response = serve(edge, platform, request("https://s.test/products/1?x=1"))
    assert response.status == 200
    assert asyncio.run(read_body(response)) == PAGE


def test_origin_down_is_a_502_with_a_reason(edge: Edge, platform: FakePlatform) -> None:
    platform.origin_error = ConnectionError("refused")
    status, doc, _ = body_json(edge, platform, "https://s.test/anything")
    assert status == 502 and "origin unreachable" in doc["error"]


def test_a_bug_in_the_handler_is_contained(
    edge: Edge, platform: FakePlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge import routing

    def boom(*_: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(routing, "_health", boom)
    status, doc, _ = body_json(edge, platform, "https://s.test/v1/health")
    assert status == 500 and doc == {"error": "internal error in the Perch edge"}


def test_a_bug_on_a_page_serves_the_origin_page_unpersonalized(
    edge: Edge, platform: FakePlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge import pages, routing

    def boom(*_: object) -> None:
        raise RuntimeError("bug in context building")

    _page(platform)
    monkeypatch.setattr(pages, "build_context", boom)
    response = serve(
        edge, platform, request("https://s.test/products/1?x=1", headers={"cookie": f"perch_uid={UID}"})
    )
    assert response.status == 200
    assert asyncio.run(read_body(response)) == PAGE  # the visitor still gets the page
    assert header(response, "cache-control") == ["public, max-age=600"]  # as the origin sent it
    assert len(platform.origin_fetches) == 1  # the response already fetched, not a second request

    # A bug elsewhere on the page path: a GET is asked of the origin again, plainly; a POST never twice.
    async def fetch_then_fail(edge: Edge, platform: FakePlatform, req: EdgeRequest, rng: object) -> None:
        await platform.fetch_origin(req, pages.origin_url_for(edge.config.origin_url or "", req.url))
        raise RuntimeError("bug after the origin was asked")

    monkeypatch.setattr(routing, "page_route", fetch_then_fail)
    platform.origin_fetches.clear()
    assert asyncio.run(read_body(serve(edge, platform, request("https://s.test/products/1?x=1")))) == PAGE
    assert platform.origin_fetches == [("GET", "https://origin.test/products/1?x=1")] * 2
    platform.origin_fetches.clear()
    status, _doc, _ = body_json(edge, platform, "https://s.test/products/1?x=1", method="POST", body=b"a=1")
    assert (status, platform.origin_fetches) == (500, [("POST", "https://origin.test/products/1?x=1")])


def test_events_of_concurrent_requests_share_one_signed_batch(edge: Edge, platform: FakePlatform) -> None:
    for i in range(3):
        body_json(
            edge,
            platform,
            "https://s.test/v1/decide?experiment=home-hero",
            headers={"cookie": f"perch_uid={i:032x}"},
        )
    assert len(platform.background()) == 1  # one drain scheduled, the later requests ride along
    sent = events(platform)
    assert len(platform.posts) == 1 and len(sent) == 3
    body_json(edge, platform, "https://s.test/v1/decide?experiment=home-hero")
    assert len(platform.background()) == 1  # after a drain, the next request schedules a new one


# --- hostile input (security review H1, M3) ---------------------------------------------------------

_DEEP = b'{"experiments":["home-hero"],"context":' + b"[" * 3000 + b"]" * 3000 + b"}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            (
                "https://s.test/v1/decide",
                "POST",
                {},
                b'{"experiments":["home-hero"],"context":{"device":"\\ud800"}}',
            ),
            "not valid UTF-8 text",
        ),
        (
            (
                "https://s.test/v1/decide",
                "POST",
                {},
                b'{"experiments":["home-hero"],"context":{"device":"a\\u0000"}}',
            ),
            "not valid UTF-8 text",
        ),
        (("https://s.test/v1/decide", "POST", {}, _DEEP), "nested deeper"),
        (
            (
                "https://s.test/v1/decide",
                "POST",
                {},
                b'{"experiments":["home-hero"],"n":' + b"9" * 5000 + b"}",
            ),
            "not usable JSON",
        ),
        (("https://s.test/v1/decide?experiment=home-hero&ctx.device=mo%01bile",), "control characters"),
        (("https://s.test/v1/events", "POST", {}, _DEEP), "nested deeper"),
        (
            (
                "https://s.test/v1/events",
                "POST",
                {},
                json.dumps({"token": _token(None), "value": 10**400}).encode(),
            ),
            "no outcome in the beacon can be credited",
        ),
    ],
)
def test_hostile_input_is_a_400_and_logs_nothing(
    edge: Edge,
    platform: FakePlatform,
    args: tuple,
    message: str,  # type: ignore[type-arg]
) -> None:
    got, doc, _ = body_json(edge, platform, *args)
    assert got == 400, doc
    assert message in doc["error"]
    assert events(platform) == []


def test_unusable_cookie_and_cf_values_are_dropped_not_stored(edge: Edge, platform: FakePlatform) -> None:
    platform.put(build_snapshot(context_features=["device", "country", "colo", "pref.lang"]))
    status, _, _ = body_json(
        edge,
        platform,
        "https://s.test/v1/decide?experiment=home-hero",
        headers={"cookie": f"perch_uid={UID}; perch_prefs=lang=d%00e"},
        cf={"country": "\ud800", "colo": "FRA\x00"},
    )
    assert status == 200
    (exposure,) = events(platform)
    assert exposure["context"] == {
        "device": "unknown",
        "country": "unknown",
        "colo": "unknown",
        "pref.lang": "unknown",
    }
    json.dumps(exposure).encode("utf-8")  # what the control plane will store encodes


# --- bounded isolate state (security review M7) ------------------------------------------------------


def test_made_up_experiment_keys_cost_no_kv_read_once_an_index_is_published(
    edge: Edge, platform: FakePlatform
) -> None:
    platform.kv[INDEX_KEY] = encode_index(["home-hero"], NOW)
    body_json(edge, platform, "https://s.test/v1/decide?experiment=home-hero")
    asyncio.run(platform.drain())  # the index arrives in the background
    reads = platform.kv_reads
    for i in range(200):
        _, doc, _ = body_json(edge, platform, f"https://s.test/v1/decide?experiment=made-up-{i}")
        assert (
            doc["decisions"][0]["reason"] == "fallback"
            and "not a live experiment" in doc["decisions"][0]["why"]
        )
    assert platform.kv_reads == reads
    _, health, _ = body_json(edge, platform, "https://s.test/v1/health")
    assert list(health["snapshots"]) == ["home-hero"]


def test_an_archived_experiment_stops_being_personalized(edge: Edge, platform: FakePlatform) -> None:
    platform.kv[INDEX_KEY] = encode_index(["home-hero"], NOW)
    body_json(edge, platform, "https://s.test/v1/decide?experiment=home-hero")
    asyncio.run(platform.drain())
    platform.kv[INDEX_KEY] = encode_index([], NOW + 1)  # archived: the control plane drops it
    platform.clock_ms += 31_000  # past the cache TTL: the index is refreshed in the background
    body_json(edge, platform, "https://s.test/v1/decide?experiment=home-hero")
    asyncio.run(platform.drain())
    _, doc, _ = body_json(edge, platform, "https://s.test/v1/decide?experiment=home-hero")
    assert doc["decisions"][0]["reason"] == "fallback"


def test_without_an_index_the_cache_stays_bounded(edge: Edge, platform: FakePlatform) -> None:
    for i in range(MAX_ENTRIES + 100):
        body_json(edge, platform, f"https://s.test/v1/decide?experiment=made-up-{i}")
    assert len(edge.cache.entries) <= MAX_NEGATIVE + 1
    _, health, _ = body_json(edge, platform, "https://s.test/v1/health")
    assert len(json.dumps(health)) < 20_000


def test_server_derived_features_cannot_be_set_by_the_client(edge: Edge, platform: FakePlatform) -> None:
    platform.put(build_snapshot(context_features=["device", "country"]))
    body_json(
        edge,
        platform,
        "https://s.test/v1/decide?experiment=home-hero&ctx.country=XX&ctx.device=tablet",
        headers={"cookie": f"perch_uid={UID}"},
        cf={"country": "DE"},
    )
    (exposure,) = events(platform)
    assert exposure["context"] == {"device": "tablet", "country": "DE"}  # device is the site's to send


def test_a_decision_made_before_signing_in_converts_after(edge: Edge, platform: FakePlatform) -> None:
    _, doc, _ = body_json(
        edge,
        platform,
        "https://s.test/v1/decide?experiment=home-hero",
        headers={"cookie": f"perch_uid={UID}"},
    )
    token = doc["decisions"][0]["token"]
    signed_in = {"cookie": f"perch_uid={UID}; perch_user={sign_identity(IDENTITY_SECRET, 'user-7')}"}
    beacon = json.dumps({"token": token}).encode()
    status, answer, _ = body_json(edge, platform, "https://s.test/v1/events", "POST", signed_in, beacon)
    assert (status, answer["accepted"]) == (202, 1)
    (credited,) = [e for e in events(platform) if e["type"] == "outcome"]
    assert credited["unit"] == UID  # filed under the unit the decision was made for


@pytest.mark.parametrize(
    "headers",
    [
        {"x-perch-user": "v1." + "\xe9" * 64 + ".bob"},
        {"cookie": f"perch_uid={UID}; perch_user=v1.{'é' * 64}.bob"},
    ],
)
def test_non_ascii_identity_claims_are_ignored_not_a_500(
    edge: Edge, platform: FakePlatform, headers: dict[str, str]
) -> None:
    for url in ("https://s.test/v1/decide?experiment=home-hero", "https://s.test/v1/events"):
        method, body = ("POST", json.dumps({"token": _token()}).encode()) if "events" in url else ("GET", b"")
        status, _, _ = body_json(edge, platform, url, method, headers, body)
        assert status < 500


def test_an_older_index_surfacing_from_kv_does_not_replace_a_newer_one(
    edge: Edge, platform: FakePlatform
) -> None:
    platform.kv[INDEX_KEY] = encode_index([], NOW + 5)  # home-hero archived
    body_json(edge, platform, "https://s.test/v1/decide?experiment=home-hero")
    asyncio.run(platform.drain())
    platform.kv[INDEX_KEY] = encode_index(["home-hero"], NOW)  # an older copy, from before
    platform.clock_ms += 31_000
    body_json(edge, platform, "https://s.test/v1/decide?experiment=home-hero")
    asyncio.run(platform.drain())
    _, doc, _ = body_json(edge, platform, "https://s.test/v1/decide?experiment=home-hero")
    assert (
        doc["decisions"][0]["reason"] == "fallback" and "not a live experiment" in doc["decisions"][0]["why"]
    )


def test_a_batch_the_control_plane_already_stored_counts_as_delivered(
    edge: Edge, platform: FakePlatform
) -> None:
    platform.post_status = [409]  # a resend within the same second: the first one was stored
    body_json(edge, platform, "https://s.test/v1/decide?experiment=home-hero")
    asyncio.run(platform.drain())
    assert len(platform.posts) == 1  # not resent again
    _, doc, _ = body_json(edge, platform, "https://s.test/v1/health")
    assert _post_counts(doc) == {"queued": 0, "delivered": 1, "rejected": 0, "dropped": 0}
