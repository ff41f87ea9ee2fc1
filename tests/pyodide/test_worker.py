"""The built Worker bundle in real Pyodide: vectors, contract, failures, isolates."""

from __future__ import annotations

import base64
import json
import random
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from core import (
    DecisionToken,
    Profile,
    Segment,
    decide,
    encode_profile,
    encode_snapshot,
    mint_token,
    profile_key,
    snapshot_key,
    unit_tag,
    verify,
)
from edge.config import KV_BINDING, Var
from tests.factories import build_snapshot
from tests.pyodide.conftest import Harness, node_executable
from tests.vectors import runner

pytestmark = pytest.mark.pyodide

UID = "0123456789abcdef0123456789abcdef"
SECRET = "pyodide-secret"
PAGE = b'<html><body><h1 data-perch-slot="pyo-page">Welcome</h1><p>rest</p></body></html>'


class _Servers:
    """A local origin and a control plane that records what the edge sends."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        servers = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.startswith("/cached") and self.headers.get("if-none-match") == '"v1"':
                    self.send_response(304)
                    self.send_header("etag", '"v1"')
                    self.end_headers()
                    return
                body = PAGE if self.path.startswith("/page") else b"<html>plain</html>"
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("cache-control", "public, max-age=60")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                servers.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for headers, body in self.received:
            verify(
                SECRET,
                headers["x-perch-signature"],
                body,
                now=int(json.loads(body)["events"][0]["ts"]) // 1000,
            )
            out += json.loads(body)["events"]
        self.received.clear()
        return out


@pytest.fixture(scope="module")
def servers() -> Iterator[_Servers]:
    s = _Servers()
    yield s
    s.http.shutdown()
    s.http.server_close()


def _kv(*snapshots: Any, raw: dict[str, bytes] | None = None) -> dict[str, Any]:
    store = {
        snapshot_key(s.experiment): {"b64": base64.b64encode(encode_snapshot(s)).decode()} for s in snapshots
    }
    for key, value in (raw or {}).items():
        store[key] = {"b64": base64.b64encode(value).decode()}
    return {KV_BINDING: store}


def _fetch(
    h: Harness,
    servers: _Servers,
    url: str,
    *,
    headers: list[list[str]] | None = None,
    method: str = "GET",
    body: str | None = None,
    kv: dict[str, Any] | None = None,
    kv_mode: dict[str, str] | None = None,
    cf: dict[str, Any] | None = None,
    cf_null: bool = False,
    extra_vars: dict[str, str] | None = None,
) -> dict[str, Any]:
    job: dict[str, Any] = {
        "op": "fetch",
        "module": "entry",
        "class": "Default",
        "request": {"url": url, "method": method, "headers": headers or [], "cf": cf or {"country": "FR"}},
        "kv": kv or {KV_BINDING: {}},
        "kv_mode": kv_mode or {},
        "vars": {
            Var.ORIGIN_URL: servers.url,
            Var.CONTROL_PLANE_URL: servers.url,
            Var.EDGE_SECRET: SECRET,
            Var.CACHE_TTL_S: "0.001",
            Var.RETRY_AFTER_S: "0.001",
            **(extra_vars or {}),
        },
    }
    if body is not None:
        job["request"]["body"] = body
    if cf_null:
        job["request"]["cf"] = None  # a request whose `cf` is JS null
    result = h(**job)
    assert result["ok"], result
    return result


def test_runtime_is_pyodide_314_with_msgpack_c_extension(pyodide: Harness) -> None:
    info = pyodide(op="call", module="tests.vectors.runner", func="runtime_info")["result"]
    assert info["platform"] == "emscripten" and info["python"].startswith("3.14")
    assert info["msgpack_c_extension"] is True


def test_golden_vectors_pass_in_pyodide(pyodide: Harness) -> None:
    result = pyodide(op="call", module="tests.vectors.runner", func="check_all")
    assert result["ok"], result
    assert result["result"] == {"hashing": [], "decisions": [], "ranked": [], "rejections": []}


def test_decisions_are_identical_to_cpython_on_a_wide_sweep(pyodide: Harness) -> None:
    result = pyodide(op="call", module="tests.vectors.runner", func="sweep", args=[400])
    assert result["ok"], result
    assert result["result"] == runner.sweep(400)


def test_decide_contract_matches_cpython(pyodide: Harness, servers: _Servers) -> None:
    snap = build_snapshot(experiment="pyo-hero", holdout=0.0, created_at=0, max_age_s=1e12)
    r = _fetch(
        pyodide,
        servers,
        "https://shop.test/v1/decide?experiment=pyo-hero&ctx.device=mobile",
        headers=[["cookie", f"perch_uid={UID}"]],
        kv=_kv(snap),
    )
    assert r["status"] == 200
    (decision,) = json.loads(r["body_text"])["decisions"]
    context = {"device": "mobile", "source": "direct", "country": "FR"}
    expected = decide(snap, UID, context, now_ms=10**12, rng=random.Random(0))
    assert (decision["arm"], decision["segment"], decision["propensity"]) == (
        expected.arm,
        expected.segment,
        expected.propensity,
    )
    headers = dict(r["headers"])
    assert headers["cache-control"] == "private, no-store"
    assert headers["server-timing"].startswith("perch;dur=")
    # A returning visitor gets no new id, only their session's (edge.session).
    assert [c.split("=")[0] for c in r["set_cookie"]] == ["perch_session"]
    assert r["wait_until"]["rejected"] == []
    (exposure,) = servers.events()
    assert (exposure["decision_id"], exposure["unit"]) == (decision["decision_id"], UID)


def test_a_request_without_cf_data_is_still_decided(pyodide: Harness, servers: _Servers) -> None:
    snap = build_snapshot(experiment="pyo-nocf", created_at=0, max_age_s=1e12)
    r = _fetch(
        pyodide, servers, "https://shop.test/v1/decide?experiment=pyo-nocf", kv=_kv(snap), cf_null=True
    )
    assert r["status"] == 200
    (decision,) = json.loads(r["body_text"])["decisions"]
    assert decision["reason"] in {"personalized", "holdout"}
    servers.events()


def test_a_misconfigured_worker_still_serves_pages(servers: _Servers, bundle: Any, vectors_dir: Any) -> None:
    node = node_executable()
    assert node is not None
    fresh = Harness(node, bundle.path / "src", bundle.path / "python_modules", vectors_dir)  # a new isolate
    try:
        bad = {Var.CACHE_TTL_S: "soon"}  # an operator's typo: the Worker cannot build its config
        page = _fetch(fresh, servers, "https://shop.test/page?x=1", extra_vars=bad)
        assert (page["status"], page["body_text"]) == (200, PAGE.decode())  # as the origin made it
        api = _fetch(fresh, servers, "https://shop.test/v1/decide?experiment=pyo-hero", extra_vars=bad)
        assert api["status"] == 500 and "internal error" in json.loads(api["body_text"])["error"]
    finally:
        fresh.close()
        servers.events()


def test_consent_withheld_in_pyodide(pyodide: Harness, servers: _Servers) -> None:
    snap = build_snapshot(experiment="pyo-consent")
    r = _fetch(
        pyodide,
        servers,
        "https://shop.test/v1/decide?experiment=pyo-consent",
        headers=[["sec-gpc", "1"], ["cookie", f"perch_uid={UID}"]],
        kv=_kv(snap),
    )
    (decision,) = json.loads(r["body_text"])["decisions"]
    assert (decision["arm"], decision["reason"]) == ("control", "consent")
    assert r["set_cookie"] == []
    assert all(e["unit"] is None for e in servers.events())


def test_kv_failure_serves_the_default_with_a_reason(pyodide: Harness, servers: _Servers) -> None:
    r = _fetch(
        pyodide, servers, "https://shop.test/v1/decide?experiment=pyo-kv-down", kv_mode={KV_BINDING: "error"}
    )
    assert r["status"] == 200
    (decision,) = json.loads(r["body_text"])["decisions"]
    # Generic outward (the JS error text stays in the log), and still says why.
    assert decision["reason"] == "fallback" and "KV read failed (JsException)" in decision["why"]


def test_corrupt_snapshot_keeps_the_last_good_one(pyodide: Harness, servers: _Servers) -> None:
    good = build_snapshot(experiment="pyo-corrupt", version=41)
    url = "https://shop.test/v1/decide?experiment=pyo-corrupt"
    first = _fetch(pyodide, servers, url, kv=_kv(good))
    assert json.loads(first["body_text"])["decisions"][0]["snapshot_version"] == 41
    corrupt = {snapshot_key("pyo-corrupt"): encode_snapshot(build_snapshot(experiment="pyo-corrupt"))[:-20]}
    for _ in range(2):  # the first serves from the isolate and refreshes in the background
        r = _fetch(pyodide, servers, url, kv=_kv(raw=corrupt))
        assert json.loads(r["body_text"])["decisions"][0]["snapshot_version"] == 41
    health = json.loads(_fetch(pyodide, servers, "https://shop.test/v1/health")["body_text"])
    assert health["snapshots"]["pyo-corrupt"]["version"] == 41
    assert "corrupt snapshot" in health["snapshots"]["pyo-corrupt"]["error"]
    servers.events()


def test_page_slots_are_rendered_through_a_stream(pyodide: Harness, servers: _Servers) -> None:
    snap = build_snapshot(
        experiment="pyo-page",
        holdout=0.0,
        floor=0.0,
        created_at=0,
        max_age_s=1e12,
        alpha=[1.0, 500.0, 1.0] * 4,
        beta=[500.0, 1.0, 500.0] * 4,
    )
    r = _fetch(
        pyodide, servers, "https://shop.test/page?x=1", headers=[["cookie", f"perch_uid={UID}"]], kv=_kv(snap)
    )
    assert r["status"] == 200
    token = re.search(r'data-perch-token="(t1\.[A-Za-z0-9_\-]+\.[0-9a-f]{32})" ', r["body_text"])
    assert token, r["body_text"]  # the filled slot carries its decision's token, for the beacon
    assert r["body_text"].replace(token.group(0), "") == PAGE.decode().replace(">Welcome<", "><h1>Go</h1><")
    assert dict(r["headers"])["cache-control"] == "private, no-store"
    assert [e["arm"] for e in servers.events()] == ["bold"]
    plain = _fetch(pyodide, servers, "https://shop.test/plain")
    assert plain["body_text"] == "<html>plain</html>"
    assert dict(plain["headers"])["cache-control"] == "public, max-age=60"


def test_a_not_modified_page_passes_through_without_a_body(pyodide: Harness, servers: _Servers) -> None:
    # A JS Response with status 304 must be built with a null body, or the runtime throws.
    r = _fetch(pyodide, servers, "https://shop.test/cached", headers=[["if-none-match", '"v1"']])
    assert (r["status"], r["body_b64"], dict(r["headers"])["etag"]) == (304, "", '"v1"')
    fresh = _fetch(pyodide, servers, "https://shop.test/cached")
    assert (fresh["status"], fresh["body_text"]) == (200, "<html>plain</html>")


def test_beacons_in_pyodide(pyodide: Harness, servers: _Servers) -> None:
    minted = DecisionToken(
        "c" * 32, "pyo-hero", "bold", {}, int(time.time() * 1000), 3, unit_tag(SECRET, UID)
    )
    beacon = json.dumps({"token": mint_token(SECRET, minted), "value": 1})
    r = _fetch(
        pyodide,
        servers,
        "https://shop.test/v1/events",
        method="POST",
        body=beacon,
        headers=[["cookie", f"perch_uid={UID}"], ["content-type", "application/json"]],
    )
    assert (r["status"], json.loads(r["body_text"])) == (202, {"accepted": 1, "rejected": []})
    assert [(e["type"], e["decision_id"], e["unit"]) for e in servers.events()] == [
        ("outcome", "c" * 32, UID)
    ]
    bad = _fetch(pyodide, servers, "https://shop.test/v1/events", method="POST", body=beacon)  # no cookie
    assert bad["status"] == 400 and "another visitor" in json.loads(bad["body_text"])["rejected"][0]["error"]


def test_fresh_isolates_hand_out_different_ids_and_draws(
    pyodide: Harness, servers: _Servers, bundle: Any, vectors_dir: Any
) -> None:
    node = node_executable()
    assert node is not None
    other = Harness(node, bundle.path / "src", bundle.path / "python_modules", vectors_dir)
    try:
        snap = build_snapshot(experiment="pyo-iso", holdout=0.0)
        url = "https://shop.test/v1/decide?experiment=pyo-iso"
        seen = []
        for h in (pyodide, other, pyodide, other):
            r = _fetch(h, servers, url, kv=_kv(snap))
            (cookie,) = [c for c in r["set_cookie"] if c.startswith("perch_uid=")]
            seen.append((cookie.split(";")[0], json.loads(r["body_text"])["decisions"][0]["decision_id"]))
        assert len({uid for uid, _ in seen}) == 4
        assert len({did for _, did in seen}) == 4
    finally:
        other.close()
        servers.events()


def test_randomness_at_import_would_be_caught(pyodide: Harness) -> None:
    # The harness forbids entropy while modules import, as workerd does; the
    # Worker's entry imported fine above, and a module that draws is refused.
    r = pyodide(op="call", module="draws_at_import", func="__repr__")
    assert not r["ok"] and "forbids randomness" in r["error"]


def _profiled_snapshot() -> Any:
    """Segments on the profile's interest: the decision's segment shows whether the profile was read."""
    return build_snapshot(
        experiment="pyo-profile",
        created_at=int(time.time() * 1000) - 1_000,
        holdout=0.0,
        segments=[Segment("all"), Segment("runner", {"profile.interest": "running"}, 0)],
        alpha=[2.0, 30.0, 5.0] * 2,
        beta=[50.0, 40.0, 60.0] * 2,
        allocation=[0.1, 0.8, 0.1] * 2,
    )


def _runner_profile(uid: str) -> dict[str, bytes]:
    runner = Profile(features={"interest": "running"}, because={"interest": "you viewed running shoes"})
    return {profile_key(unit_tag(SECRET, uid)): encode_profile(runner)}


@pytest.fixture(scope="module")
def profiled(bundle: Any, vectors_dir: Any) -> Iterator[Harness]:
    """An isolate of its own (its config comes from its first request) whose profile reads may take
    300 ms: the deadline is what is tested, not the machine's speed under load."""
    node = node_executable()
    assert node is not None
    fresh = Harness(node, bundle.path / "src", bundle.path / "python_modules", vectors_dir)
    yield fresh
    fresh.close()


PROFILED_VARS = {Var.PROFILE_TIMEOUT_S: "0.3"}


def test_a_visitors_profile_is_read_within_the_deadline(profiled: Harness, servers: _Servers) -> None:
    r = _fetch(
        profiled,
        servers,
        "https://shop.test/v1/decide?experiment=pyo-profile",
        headers=[["cookie", f"perch_uid={'2' * 32}"]],
        kv=_kv(_profiled_snapshot(), raw=_runner_profile("2" * 32)),
        extra_vars=PROFILED_VARS,
    )
    (decision,) = json.loads(r["body_text"])["decisions"]
    assert (decision["reason"], decision["segment"]) == ("personalized", "runner")
    assert "not read in time" not in decision["why"]
    servers.received.clear()


def test_a_slow_profile_read_gives_up_at_the_deadline(profiled: Harness, servers: _Servers) -> None:
    # Profiles take 2 s to read: the request goes on without one after 300 ms, and the read
    # finishes in the background (waitUntil).
    r = _fetch(
        profiled,
        servers,
        "https://shop.test/v1/decide?experiment=pyo-profile",
        headers=[["cookie", f"perch_uid={'1' * 32}"]],
        kv=_kv(_profiled_snapshot(), raw=_runner_profile("1" * 32)),
        kv_mode={KV_BINDING: "slow_profiles"},
        extra_vars=PROFILED_VARS,
    )
    (decision,) = json.loads(r["body_text"])["decisions"]
    assert (decision["reason"], decision["segment"]) == ("personalized", "all")
    assert "profile not read in time" in decision["why"]
    assert r["ms"] < 1_500, r["ms"]  # answered without waiting for the 2 s read
    # The read went on in the background (the harness drains waitUntil) and filled the isolate's
    # cache: the visitor's next request is decided with the profile, with no KV read of it.
    again = _fetch(
        profiled,
        servers,
        "https://shop.test/v1/decide?experiment=pyo-profile",
        headers=[["cookie", f"perch_uid={'1' * 32}"]],
        kv=_kv(_profiled_snapshot()),  # this KV has no profile: only the cache can answer
        extra_vars=PROFILED_VARS,
    )
    (decision,) = json.loads(again["body_text"])["decisions"]
    assert decision["segment"] == "runner" and "not read in time" not in decision["why"]
    servers.received.clear()
