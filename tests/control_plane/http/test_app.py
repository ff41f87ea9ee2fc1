from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from control_plane.distribution.kv_publishers import LocalKVPublisher
from control_plane.http.app import create_app
from control_plane.settings import Settings
from control_plane.storage.store import Store
from core import LocalKV, decode_snapshot, encode_batch, sign, snapshot_key
from tests.factories import NOW, exposure, outcome

TOKEN = "admin-token-0123456789"
SECRET = "edge-secret-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HERO = {
    "key": "hero",
    "arms": [{"key": "a", "html": "<b>A</b>"}, {"key": "b"}],
    "default_arm": "a",
    "features": ["device"],
    "model": "segments",  # these tests read segments; contextual ones are in test_contextual_app.py
    "floor": 0.1,
}


class Clock:
    def __init__(self) -> None:
        self.ms = NOW

    def __call__(self) -> int:
        return self.ms


class ApiClient:
    """A synchronous client over httpx's ASGI transport (no server, no lifespan)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://control-plane") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(go())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def kv(tmp_path: Path) -> LocalKV:
    return LocalKV(tmp_path)


@pytest.fixture
def client(store: Store, kv: LocalKV, tmp_path: Path, clock: Clock) -> Iterator[ApiClient]:
    settings = Settings(admin_token=TOKEN, edge_secret=SECRET, data_dir=tmp_path)
    yield ApiClient(create_app(settings, store, LocalKVPublisher(kv), now_ms=clock, schedule=False))


def signed(events: list[dict[str, Any]], ts: int = NOW // 1000, secret: str = SECRET) -> dict[str, Any]:
    body = encode_batch(events)
    return {
        "content": body,
        "headers": {"X-Perch-Signature": sign(secret, body, ts), "content-type": "application/json"},
    }


def test_admin_endpoints_need_the_token(client: ApiClient) -> None:
    for method, path in [
        ("GET", "/v1/experiments"),
        ("POST", "/v1/experiments"),
        ("GET", "/v1/experiments/x"),
        ("PATCH", "/v1/experiments/x"),
        ("DELETE", "/v1/experiments/x"),
        ("POST", "/v1/experiments/x/publish"),
        ("GET", "/metrics"),
    ]:
        r = client.request(method, path, headers={"Authorization": "Bearer wrong-token-000000"})
        assert r.status_code == 401, (method, path)
        assert "Bearer" in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/experiments").status_code == 401


def test_experiment_crud(client: ApiClient) -> None:
    r = client.post("/v1/experiments", json=HERO, headers=AUTH)
    assert r.status_code == 201 and r.json()["version"] == 1
    assert client.post("/v1/experiments", json=HERO, headers=AUTH).status_code == 409
    assert [e["key"] for e in client.get("/v1/experiments", headers=AUTH).json()["experiments"]] == ["hero"]
    r = client.patch("/v1/experiments/hero", json={"floor": 0.2}, headers={**AUTH, "If-Match": "1"})
    assert (r.status_code, r.json()["version"], r.json()["floor"]) == (200, 2, 0.2)
    assert (
        client.patch(
            "/v1/experiments/hero", json={"floor": 0.3}, headers={**AUTH, "If-Match": "1"}
        ).status_code
        == 409
    )
    shown = client.get("/v1/experiments/hero", headers=AUTH).json()
    assert [h["action"] for h in shown["history"]] == ["create", "update"]
    assert client.delete("/v1/experiments/hero", headers=AUTH).json()["archived"] is True
    assert client.get("/v1/experiments/hero", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "message"),
    [
        ("POST", "/v1/experiments", {"content": b"{nope"}, 400, "body must be JSON"),
        (
            "POST",
            "/v1/experiments",
            {"json": {**HERO, "default_arm": "z"}},
            422,
            "default_arm 'z' is not one of",
        ),
        ("POST", "/v1/experiments", {"json": {**HERO, "arms": [{"key": "a"}]}}, 422, "between 2 and 100"),
        ("POST", "/v1/experiments", {"json": [1]}, 422, "must be a JSON object"),
        ("POST", "/v1/experiments", {"content": b"x" * 300_000}, 413, "larger than"),
        ("PATCH", "/v1/experiments/hero", {"json": [1]}, 400, "JSON object of the fields"),
        (
            "PATCH",
            "/v1/experiments/hero",
            {"json": {}, "headers": {"If-Match": "abc"}},
            400,
            "If-Match must be",
        ),
        ("PATCH", "/v1/experiments/nope", {"json": {}}, 404, "no experiment 'nope'"),
    ],
)
def test_bad_input_is_a_4xx_with_a_message(
    client: ApiClient, method: str, path: str, kwargs: dict[str, Any], status: int, message: str
) -> None:
    client.post("/v1/experiments", json=HERO, headers=AUTH)
    kwargs = dict(kwargs)  # the parameters are shared by the sqlite and postgresql runs
    headers = {**AUTH, **kwargs.pop("headers", {})}
    r = client.request(method, path, headers=headers, **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_events_are_verified_stored_and_counted(client: ApiClient, store: Store) -> None:
    client.post("/v1/experiments", json=HERO, headers=AUTH)
    batch = signed([exposure(1, context={"device": "mobile"}), outcome(1)])
    r = client.post("/v1/events", **batch)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == {"exposure": 1, "outcome": 1, "stitch": 0} and r.json()["joined"] == 1
    replay = client.post("/v1/events", **batch)
    assert replay.status_code == 409 and "replayed" in replay.json()["error"]
    metrics = client.get("/metrics", headers=AUTH).text
    assert 'perch_events_accepted_total{type="exposure"} 1.0' in metrics
    assert 'perch_events_rejected_total{reason="replay"} 1.0' in metrics


@pytest.mark.parametrize(
    ("batch", "status", "message"),
    [
        (lambda: {"content": encode_batch([]), "headers": {}}, 401, "missing X-Perch-Signature"),
        (lambda: signed([exposure(1)], secret="another-secret-000000"), 401, "does not match"),
        (lambda: signed([exposure(1)], ts=NOW // 1000 - 301), 401, "more than 300s from now"),
        (lambda: signed([{"type": "nope"}]), 400, "no valid event"),
        (lambda: {**signed([]), "content": b"[]"}, 401, "does not match"),
    ],
)
def test_bad_batches_are_refused_with_a_reason(
    client: ApiClient, batch: Any, status: int, message: str
) -> None:
    r = client.post("/v1/events", **batch())
    assert r.status_code == status
    assert message in r.json()["error"]


def test_one_bad_event_does_not_cost_the_others(client: ApiClient) -> None:
    bad = {**exposure(2), "propensity": 7}
    r = client.post("/v1/events", **signed([exposure(1), bad]))
    assert r.status_code == 200
    assert r.json()["accepted"]["exposure"] == 1
    assert r.json()["rejected"][0]["index"] == 1 and "propensity" in r.json()["rejected"][0]["error"]


def test_publish_learns_and_writes_kv(client: ApiClient, kv: LocalKV, clock: Clock) -> None:
    client.post("/v1/experiments", json=HERO, headers=AUTH)
    client.post(
        "/v1/events",
        **signed(
            [exposure(i, arm="b", context={"device": "mobile"}) for i in range(20)]
            + [outcome(i) for i in range(15)]
        ),
    )
    r = client.post("/v1/experiments/hero/publish", headers=AUTH)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["kv_key"] == snapshot_key("hero") and doc["snapshot_version"] == 1
    raw = kv.get(snapshot_key("hero"))
    assert raw is not None and len(raw) == doc["bytes"]
    snap = decode_snapshot(raw)
    assert snap.experiment == "hero" and snap.context_features == ("device",)
    assert [s.key for s in snap.segments][:2] == ["all", "device:mobile"]
    clock.ms += 5000
    assert client.post("/v1/experiments/hero/publish", headers=AUTH).json()["snapshot_version"] == 2
    shown = client.get("/v1/experiments/hero", headers=AUTH).json()
    assert [s["version"] for s in shown["snapshots"]] == [2, 1]
    clock.ms += 2000
    metrics = client.get("/metrics", headers=AUTH).text
    assert 'perch_snapshot_version{experiment="hero"} 2.0' in metrics
    assert 'perch_snapshot_age_seconds{experiment="hero"} 2.0' in metrics


def test_health_and_openapi(client: ApiClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    spec = client.get("/openapi.json").json()
    assert {"/v1/experiments", "/v1/experiments/{key}", "/v1/events", "/v1/experiments/{key}/publish"} <= set(
        spec["paths"]
    )
    json.dumps(spec)


def test_user_export_and_erasure_are_admin_only(client: ApiClient) -> None:
    client.post("/v1/experiments", json=HERO, headers=AUTH)
    client.post("/v1/events", **signed([exposure(1, unit="visitor-9", context={"device": "mobile"})]))
    assert client.get("/v1/users/visitor-9/export").status_code == 401
    assert client.delete("/v1/users/visitor-9").status_code == 401
    exported = client.get("/v1/users/visitor-9/export", headers=AUTH).json()
    assert [e["arm"] for e in exported["exposures"]] == ["b"]
    assert "visitor-9" not in json.dumps(exported)
    assert client.delete("/v1/users/visitor-9", headers=AUTH).json() == {
        "deleted": {"exposures": 1, "outcomes": 0, "stitches": 0, "signals": 0, "attributes": 0}
    }
    assert client.get("/v1/users/visitor-9/export", headers=AUTH).json()["exposures"] == []
