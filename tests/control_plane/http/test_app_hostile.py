"""Hostile input at the control plane: each case was a 500 or a stuck experiment before.

(The security review's H1, M3, M4, M5 and its low findings on the API.)
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import insert

from control_plane.storage.schema import stats
from control_plane.storage.store import Store
from core import INDEX_KEY, LocalKV, decode_index, decode_snapshot, sign, snapshot_key
from tests.control_plane.http.test_app import AUTH, HERO, SECRET, ApiClient, client, clock, kv, signed
from tests.factories import NOW, exposure, outcome

__all__ = ["client", "clock", "kv"]  # fixtures, shared with test_app

SUPERSCRIPT_TWO = "²".encode("latin-1")  # str.isdigit() says yes, int() says no
DEEP = b"[" * 5000 + b"]" * 5000
HUGE_INT = b'{"key": ' + b"9" * 5000 + b"}"


def _publish(client: ApiClient) -> dict[str, Any]:
    r = client.post("/v1/experiments/hero/publish", headers=AUTH)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def test_h1_a_lone_surrogate_in_context_is_refused_and_never_stops_publishing(
    client: ApiClient, kv: LocalKV
) -> None:
    client.post("/v1/experiments", json=HERO, headers=AUTH)
    events = [
        exposure(1, context={"device": "\ud800"}),
        exposure(2, context={"device": "mo\x00bile"}),
        exposure(3, context={"device": "mobile"}),
    ]
    r = client.post("/v1/events", **signed(events))
    assert r.status_code == 200, r.text
    assert r.json()["accepted"]["exposure"] == 1
    assert [x["index"] for x in r.json()["rejected"]] == [0, 1]
    assert "UTF-8 text without NUL" in r.json()["rejected"][0]["error"]
    _publish(client)
    raw = kv.get(snapshot_key("hero"))
    assert raw is not None and decode_snapshot(raw).experiment == "hero"


def test_h1_m4_cells_the_learner_cannot_use_are_skipped_and_counted(
    client: ApiClient, store: Store, kv: LocalKV
) -> None:
    """Bad cells already in the store (from older code or a bug) no longer break every publish."""
    client.post("/v1/experiments", json={**HERO, "min_segment_units": 1}, headers=AUTH)
    client.post("/v1/events", **signed([exposure(1, context={"device": "mobile"}), outcome(1)]))
    # An exposure whose arm is not in the spec is stored as it came (M4).
    r = client.post("/v1/events", **signed([exposure(2, arm="zzz", context={"device": "mobile"})]))
    assert r.json()["accepted"]["exposure"] == 1
    with store.write() as conn:  # what the lone surrogate of H1 left behind before the fix
        conn.execute(
            insert(stats).values(
                experiment="hero",
                path=json.dumps(["\ud800"]),
                arm="a",
                exposures=3.0,
                reward=1.0,
                decayed_exposures=3.0,
                decayed_reward=1.0,
                ref_ms=NOW,
            )
        )
    _publish(client)
    snap = decode_snapshot(kv.get(snapshot_key("hero")) or b"")
    assert "device:mobile" in [s.key for s in snap.segments]
    metrics = client.get("/metrics", headers=AUTH).text
    assert 'perch_learner_skipped_cells{experiment="hero",reason="bad_path"} 1.0' in metrics
    assert 'perch_learner_skipped_cells{experiment="hero",reason="unknown_arm"} 1.0' in metrics
    shown = client.get("/v1/experiments/hero", headers=AUTH).json()
    assert shown["snapshots"][0]["version"] == 1


@pytest.mark.parametrize(
    "body", [DEEP, HUGE_INT, b'{"a": "\\ud800"', b"\xff\xfe"], ids=["deep", "huge", "cut", "bytes"]
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/experiments"), ("PATCH", "/v1/experiments/hero"), ("POST", "/v1/events")],
)
def test_m3_deep_huge_or_broken_json_is_a_400(client: ApiClient, method: str, path: str, body: bytes) -> None:
    client.post("/v1/experiments", json=HERO, headers=AUTH)
    headers = {**AUTH, "content-type": "application/json"}
    if path == "/v1/events":
        headers["X-Perch-Signature"] = sign(SECRET, body, NOW // 1000)
    r = client.request(method, path, content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert "JSON" in r.json()["error"]


@pytest.mark.parametrize(
    ("arm", "field"),
    [
        ({"key": "b", "html": "<b>\ud800</b>"}, "html"),
        ({"key": "b", "payload": {"title": "\udfff"}}, "payload"),
        ({"key": "b", "payload": {"\ud800": 1}}, "payload"),
    ],
)
def test_m5_a_lone_surrogate_in_an_arm_is_a_422_and_nothing_is_stored(
    client: ApiClient, arm: dict[str, Any], field: str
) -> None:
    doc = {**HERO, "arms": [HERO["arms"][0], arm]}  # type: ignore[index]
    r = client.post(
        "/v1/experiments", content=json.dumps(doc), headers={**AUTH, "content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert field in r.json()["error"] and "UTF-8" in r.json()["error"]
    assert client.get("/v1/experiments", headers=AUTH).json()["experiments"] == []
    # and a PATCH cannot sneak it in either
    client.post("/v1/experiments", json=HERO, headers=AUTH)
    r = client.patch("/v1/experiments/hero", content=json.dumps({"arms": doc["arms"]}), headers=AUTH)
    assert r.status_code == 422, r.text
    assert client.get("/v1/experiments/hero", headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "message"),
    [
        ("PATCH", "/v1/experiments/hero", {"json": {"arms": 3}}, 422, "arms must be a list"),
        ("PATCH", "/v1/experiments/hero", {"json": {"arms": "ab"}}, 422, "arms must be a list"),
        (
            "PATCH",
            "/v1/experiments/hero",
            {"json": {}, "headers": {"If-Match": SUPERSCRIPT_TWO}},
            400,
            "If-Match",
        ),
        ("PATCH", "/v1/experiments/hero", {"json": {}, "headers": {"If-Match": "9" * 5000}}, 400, "If-Match"),
        ("POST", "/v1/experiments", {"json": {**HERO, "key": "h2", "salt": 7}}, 422, "salt"),
        (
            "POST",
            "/v1/experiments",
            {"json": {**HERO, "key": "h2", "features": "dev"}},
            422,
            "list of feature",
        ),
        ("POST", "/v1/experiments", {"json": {**HERO, "key": "h2", "holdout": 10**400}}, 422, "holdout"),
        ("GET", "/v1/experiments/he%00ro", {}, 404, "no experiment"),
        ("DELETE", "/v1/experiments/he%00ro", {}, 404, "no experiment"),
        ("POST", "/v1/experiments/he%00ro/publish", {}, 404, "no experiment"),
        ("GET", "/v1/experiments/he%00ro/report", {}, 404, "no experiment"),
        ("GET", "/v1/users/a%00b/export", {}, 400, "unit ids"),
    ],
)
def test_low_findings_are_4xx_with_a_message(
    client: ApiClient, method: str, path: str, kwargs: dict[str, Any], status: int, message: str
) -> None:
    client.post("/v1/experiments", json=HERO, headers=AUTH)
    kwargs = dict(kwargs)
    headers = {**AUTH, **kwargs.pop("headers", {})}
    r = client.request(method, path, headers=headers, **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_a_user_id_with_a_slash_can_be_exported_and_erased(client: ApiClient) -> None:
    client.post("/v1/experiments", json=HERO, headers=AUTH)
    unit = "org/42/user@example.com"
    ev = {**exposure(1, context={"device": "mobile"}), "unit": unit}
    assert client.post("/v1/events", **signed([ev])).json()["accepted"]["exposure"] == 1
    exported = client.get(f"/v1/users/{unit}/export", headers=AUTH)
    assert exported.status_code == 200, exported.text
    assert len(exported.json()["exposures"]) == 1
    erased = client.delete(f"/v1/users/{unit}", headers=AUTH)
    assert erased.status_code == 200, erased.text
    assert erased.json()["deleted"]["exposures"] == 1


def test_a_bug_is_one_clean_500_not_a_reraise(
    client: ApiClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(store, "list_experiments", broken)
    # httpx's ASGI transport raises whatever the app lets escape, as uvicorn would log it twice.
    r = client.get("/v1/experiments", headers=AUTH)
    assert r.status_code == 500
    assert r.json() == {"error": "internal error; see the control plane's log"}
    assert "a bug of ours" not in r.text


def test_archiving_takes_the_experiment_out_of_the_edge_index(client: ApiClient, kv: LocalKV) -> None:
    client.post("/v1/experiments", json=HERO, headers=AUTH)
    client.post("/v1/experiments", json={**HERO, "key": "other"}, headers=AUTH)
    _publish(client)
    assert decode_index(kv.get(INDEX_KEY) or b"")[0] == {"hero", "other"}
    assert kv.get(snapshot_key("hero")) is not None
    assert client.delete("/v1/experiments/hero", headers=AUTH).status_code == 200
    assert decode_index(kv.get(INDEX_KEY) or b"")[0] == {"other"}
    assert kv.get(snapshot_key("hero")) is None  # and its snapshot is gone from KV


def test_a_replay_is_caught_whatever_v1_values_ride_along(client: ApiClient) -> None:
    client.post("/v1/experiments", json=HERO, headers=AUTH)
    batch = signed([exposure(1, context={"device": "mobile"})])
    assert client.post("/v1/events", **batch).status_code == 200
    real = batch["headers"]["X-Perch-Signature"]
    t, v1 = real.split(",")
    for header in (f"{t},v1={'0' * 64},{v1}", f"{t},{v1},v1=junk", f"{t}, {v1}"):
        again = client.post(
            "/v1/events", content=batch["content"], headers={**batch["headers"], "X-Perch-Signature": header}
        )
        assert again.status_code == 409 and "replayed" in again.json()["error"], header


def test_an_expired_signature_is_refused_before_the_body_is_read(client: ApiClient) -> None:
    read: list[int] = []

    async def body() -> Any:
        for _ in range(64):
            read.append(1)
            yield b"x" * 65536

    header = sign(SECRET, b"whatever", NOW // 1000 - 3600)
    r = client.post("/v1/events", content=body(), headers={"X-Perch-Signature": header})
    assert r.status_code == 401 and "from now" in r.json()["error"]
    assert read == []


def test_m1_a_segment_is_published_only_once_enough_distinct_visitors_are_in_it(
    client: ApiClient, kv: LocalKV
) -> None:
    """One cookie inventing 200 device values no longer grows the snapshot by 200 segments."""
    client.post("/v1/experiments", json=HERO, headers=AUTH)  # min_segment_units: 5 by default
    junk = [exposure(i, unit="attacker", context={"device": f"junk-{i}"}) for i in range(200)]
    real = [exposure(1000 + i, context={"device": "mobile"}) for i in range(5)]
    few = [exposure(2000 + i, context={"device": "tablet"}) for i in range(4)]
    assert client.post("/v1/events", **signed(junk + real + few)).status_code == 200
    _publish(client)
    snap = decode_snapshot(kv.get(snapshot_key("hero")) or b"")
    assert [s.key for s in snap.segments] == ["all", "device:mobile"]


@pytest.mark.parametrize("v1", ["\xe9", "\xe9" * 64, "", "v1"])
def test_a_non_ascii_signature_is_a_401_not_a_500(client: ApiClient, v1: str) -> None:
    header = f"t={NOW // 1000},v1={v1}".encode("latin-1")
    r = client.post("/v1/events", content=b'{"schema":1,"events":[]}', headers={"X-Perch-Signature": header})
    assert r.status_code == 401 and "does not match" in r.json()["error"]


def test_an_archived_key_can_be_created_again_and_publishes(client: ApiClient, kv: LocalKV) -> None:
    client.post("/v1/experiments", json={**HERO, "min_segment_units": 1}, headers=AUTH)
    client.post(
        "/v1/events", **signed([exposure(i, arm="b", context={"device": "mobile"}) for i in range(5)])
    )
    _publish(client)
    assert client.delete("/v1/experiments/hero", headers=AUTH).status_code == 200
    again = {**HERO, "arms": [{"key": "a"}, {"key": "c"}], "min_segment_units": 1}  # arm b is gone
    r = client.post("/v1/experiments", json=again, headers=AUTH)
    assert r.status_code == 201, r.text
    record = r.json()
    assert not record["archived"] and record["version"] > 1
    assert client.post("/v1/experiments", json=again, headers=AUTH).status_code == 409  # live again
    published = _publish(client)
    snap = decode_snapshot(kv.get(snapshot_key("hero")) or b"")
    assert [a.key for a in snap.arms] == ["a", "c"] and published["snapshot_version"] == 2
    assert decode_index(kv.get(INDEX_KEY) or b"")[0] == {"hero"}
    metrics = client.get("/metrics", headers=AUTH).text
    assert 'perch_learner_skipped_cells{experiment="hero",reason="unknown_arm"} 1.0' in metrics
    history = client.get("/v1/experiments/hero", headers=AUTH).json()["history"]
    assert "recreate" in [h["action"] for h in history]
