"""The profile endpoints, and a visitor's rights over their signals, attributes and profile."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from control_plane.distribution.kv_publishers import LocalKVPublisher
from control_plane.http.app import create_app
from control_plane.profiles.builder import ProfileSettings, profile_cycle
from control_plane.settings import Settings, SettingsError
from control_plane.storage.store import Store
from core import LocalKV, decode_profile, profile_key, sign, signal_event, unit_tag
from tests.control_plane.http.test_app import AUTH, SECRET, TOKEN, ApiClient, Clock, clock, kv, signed
from tests.factories import NOW

TAG = unit_tag(SECRET, "ann@example")
__all__ = ["clock", "kv"]  # fixtures shared with test_app


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        admin_token=TOKEN, edge_secret=SECRET, data_dir=tmp_path, profile_attributes=frozenset({"plan"})
    )


@pytest.fixture
def client(store: Store, kv: LocalKV, settings: Settings, clock: Clock) -> Iterator[ApiClient]:
    yield ApiClient(create_app(settings, store, LocalKVPublisher(kv), now_ms=clock, schedule=False))


def visits(unit: str, category: str, n: int) -> list[dict[str, object]]:
    return [
        signal_event(unit, unit_tag(SECRET, unit), "page_view", NOW - 1000 + i, category=category)
        for i in range(n)
    ]


def test_attributes_and_signals_reach_the_visitors_profile_in_kv(
    client: ApiClient, store: Store, kv: LocalKV, settings: Settings
) -> None:
    put = client.request(
        "PUT", "/v1/users/ann@example/attributes", json={"attributes": {"plan": "pro"}}, headers=AUTH
    )
    assert put.status_code == 200 and put.json() == {"attributes": {"plan": "pro"}}
    stored = client.post("/v1/events", **signed(visits("ann@example", "running-shoes", 3)))
    assert stored.status_code == 200 and stored.json()["accepted"]["signal"] == 3
    assert client.get("/v1/users/ann@example/profile", headers=AUTH).status_code == 404  # not built yet
    profile_cycle(store, LocalKVPublisher(kv), ProfileSettings(attributes=settings.profile_attributes), NOW)
    profile = decode_profile(kv.get(profile_key(TAG)) or b"")
    assert profile.features["plan"] == "pro" and profile.features["interest"] == "running-shoes"
    shown = client.get("/v1/users/ann@example/profile", headers=AUTH).json()
    assert shown["published"] is True and shown["because"]["interest"] == "you viewed running shoes"


def test_a_visitor_can_ask_not_to_be_personalized(
    client: ApiClient, store: Store, kv: LocalKV, settings: Settings
) -> None:
    client.request("PUT", "/v1/users/ann@example/attributes", json={"do_not_personalize": True}, headers=AUTH)
    profile_cycle(store, LocalKVPublisher(kv), ProfileSettings(attributes=settings.profile_attributes), NOW)
    assert decode_profile(kv.get(profile_key(TAG)) or b"").dnp is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"attributes": {"household_income": "high"}}, "sensitive category"),
        ({"attributes": {"Plan": "pro"}}, "names are 1-32 of a-z"),
        ({"attributes": {"plan": ""}}, "1-64 characters of text"),
        ({"attributes": {"plan": 3}}, "1-64 characters of text"),
        ({"do_not_personalize": "yes"}, "expected true or false"),
        ({"other": 1}, 'body must be {"attributes"'),
        ({}, 'body must be {"attributes"'),
    ],
)
def test_bad_attributes_are_a_422_that_names_the_rule(client: ApiClient, body: object, message: str) -> None:
    response = client.request("PUT", "/v1/users/ann@example/attributes", json=body, headers=AUTH)
    assert response.status_code == 422 and message in response.json()["error"]


def test_the_profile_endpoints_are_admin_only(client: ApiClient) -> None:
    assert client.request("PUT", "/v1/users/ann/attributes", json={"attributes": {}}).status_code == 401
    assert client.get("/v1/users/ann/profile").status_code == 401


def test_export_holds_the_profile_layer_and_erasure_removes_it_and_its_kv_value(
    client: ApiClient, store: Store, kv: LocalKV, settings: Settings
) -> None:
    client.request(
        "PUT", "/v1/users/ann@example/attributes", json={"attributes": {"plan": "pro"}}, headers=AUTH
    )
    client.post("/v1/events", **signed(visits("ann@example", "books", 2) + visits("bob", "travel", 2)))
    profile_cycle(store, LocalKVPublisher(kv), ProfileSettings(attributes=settings.profile_attributes), NOW)
    exported = client.get("/v1/users/ann@example/export", headers=AUTH).json()
    assert [s["category"] for s in exported["signals"]] == ["books", "books"]
    assert [(a["name"], a["value"]) for a in exported["attributes"]] == [("plan", "pro")]
    assert exported["profiles"][0]["features"]["interest"] == "books"
    assert "ann@example" not in json.dumps(exported)
    deleted = client.delete("/v1/users/ann@example", headers=AUTH).json()["deleted"]
    assert (deleted["signals"], deleted["attributes"]) == (2, 1)
    assert kv.get(profile_key(TAG)) is None
    assert kv.get(profile_key(unit_tag(SECRET, "bob"))) is not None  # nobody else's
    again = client.get("/v1/users/ann@example/export", headers=AUTH).json()
    assert again["signals"] == again["attributes"] == again["profiles"] == []


def test_a_sensitive_attribute_cannot_be_configured_as_a_feature(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="'health_status', a sensitive category"):
        Settings(admin_token=TOKEN, edge_secret=SECRET, profile_attributes=frozenset({"health_status"}))
    env = {
        "PERCH_ADMIN_TOKEN": TOKEN,
        "PERCH_EDGE_SECRET": SECRET,
        "PERCH_PROFILE_ATTRIBUTES": "plan, industry",
    }
    assert Settings.from_env(env).profile_attributes == {"plan", "industry"}


SITE_SECRET = "site-secret-0123456789abcdef"


@pytest.fixture
def site_client(store: Store, kv: LocalKV, tmp_path: Path, clock: Clock) -> Iterator[ApiClient]:
    settings = Settings(admin_token=TOKEN, edge_secret=SECRET, data_dir=tmp_path, site_secret=SITE_SECRET)
    yield ApiClient(create_app(settings, store, LocalKVPublisher(kv), now_ms=clock, schedule=False))


def _signed_put(
    client: ApiClient, path: str, doc: object, *, secret: str = SITE_SECRET, ts: int = NOW // 1000
) -> httpx.Response:
    body = json.dumps(doc).encode()
    headers = {"X-Perch-Signature": sign(secret, body, ts), "content-type": "application/json"}
    return client.request("PUT", path, content=body, headers=headers)


ANN = "/v1/users/ann@example/attributes"


def test_a_site_backend_signs_attribute_updates_without_the_admin_token(site_client: ApiClient) -> None:
    ok = _signed_put(site_client, ANN, {"unit": "ann@example", "attributes": {"plan": "pro"}})
    assert ok.status_code == 200 and ok.json() == {"attributes": {"plan": "pro"}}
    change = {"unit": "ann@example", "attributes": {"plan": "x"}}
    for doc, how, message in [
        ({"unit": "bob", "attributes": {"plan": "x"}}, {}, '"unit" must equal the id in the path'),
        (change, {"secret": "wrong-secret-0123456789"}, "site signature refused"),
        (change, {"ts": NOW // 1000 - 3600}, "site signature refused"),
    ]:
        refused = _signed_put(site_client, ANN, doc, **how)  # type: ignore[arg-type]
        assert refused.status_code == 401 and message in refused.json()["error"], message
    sensitive = _signed_put(site_client, ANN, {"unit": "ann@example", "attributes": {"religion": "x"}})
    assert sensitive.status_code == 422
    assert site_client.get("/v1/users/ann@example/profile").status_code == 401  # still admin only


def test_without_a_site_secret_a_signature_is_no_substitute_for_the_admin_token(client: ApiClient) -> None:
    refused = _signed_put(client, ANN, {"unit": "ann@example", "attributes": {"plan": "pro"}})
    assert refused.status_code == 401 and "PERCH_ADMIN_TOKEN" in refused.json()["error"]
