"""Every control-plane endpoint against arbitrary input: never a 5xx, and publishing never breaks.

Specs and event batches are valid ones with a field swapped for something hostile (lone
surrogates, NUL, control characters, huge or deep values, wrong types), or arbitrary JSON and
bytes, on SQLite and PostgreSQL. After every example the experiment must still publish.
``PERCH_FUZZ_EXAMPLES`` raises the budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_plane.distribution.kv_publishers import LocalKVPublisher
from control_plane.http.app import create_app
from control_plane.settings import Settings
from control_plane.storage.store import Store
from core import LocalKV, decode_snapshot, encode_batch, sign, snapshot_key
from tests.control_plane.http.test_app import AUTH, HERO, SECRET, TOKEN, ApiClient, Clock
from tests.factories import exposure, outcome
from tests.hostile import HOSTILE_TEXT, JSON_DOCS, dumps

SPEC_FIELDS = [*HERO, "holdout", "reward", "prior", "half_life_s", "max_age_s", "max_segments", "salt"]
EVENT_FIELDS = [
    "type",
    "id",
    "ts",
    "decision_id",
    "experiment",
    "arm",
    "unit",
    "propensity",
    "reason",
    "segment",
]
EVENT_FIELDS += ["snapshot_version", "context", "value", "anonymous_id", "user_id"]


def _mutated(base: dict[str, Any], fields: list[str]) -> Any:
    return st.tuples(st.sampled_from(fields), JSON_DOCS).map(lambda fv: {**base, fv[0]: fv[1]})


SPECS = (_mutated({**HERO, "key": "other"}, SPEC_FIELDS) | JSON_DOCS).map(dumps) | st.sampled_from(
    [b"[" * 3000 + b"]" * 3000, b"\xff", b'{"key": ' + b"9" * 5000 + b"}"]
)
EVENTS = st.lists(
    st.sampled_from([exposure(1, context={"device": "mobile"}), outcome(1), exposure(2, arm="zzz")]).flatmap(
        lambda base: _mutated(base, EVENT_FIELDS) | st.just(base)
    ),
    min_size=1,
    max_size=4,
)
BATCHES = EVENTS.map(encode_batch) | JSON_DOCS.map(dumps) | st.binary(max_size=100)
REQUESTS = st.one_of(
    st.tuples(st.just("POST"), st.just("/v1/experiments"), SPECS, st.none()),
    st.tuples(st.just("PATCH"), st.just("/v1/experiments/hero"), SPECS, st.none() | HOSTILE_TEXT),
    st.tuples(
        st.sampled_from(["GET", "DELETE"]),
        HOSTILE_TEXT.map(lambda k: f"/v1/experiments/{quote(k, safe='', errors='surrogatepass')}-x"),
        st.just(b""),
        st.none(),
    ),
    st.tuples(
        st.sampled_from(["GET", "POST"]),
        HOSTILE_TEXT.map(lambda k: f"/v1/experiments/{quote(k, safe='', errors='surrogatepass')}/report"),
        st.just(b""),
        st.none(),
    ),
    st.tuples(
        st.sampled_from(["GET", "DELETE"]),
        HOSTILE_TEXT.map(lambda u: f"/v1/users/{quote(u, safe='/', errors='surrogatepass')}/export"),
        st.just(b""),
        st.none(),
    ),
    st.tuples(st.just("POST"), st.just("/v1/events"), BATCHES, st.none() | HOSTILE_TEXT),
    st.tuples(
        st.just("GET"),
        HOSTILE_TEXT.map(lambda k: f"/experiments/{quote(k, safe='', errors='surrogatepass')}"),
        st.just(b""),
        st.none(),
    ),
    st.tuples(st.just("POST"), st.just("/login"), st.binary(max_size=100), st.none()),
)


@pytest.fixture
def api(store: Store, tmp_path: Path) -> tuple[ApiClient, LocalKV, Clock]:
    settings = Settings(admin_token=TOKEN, edge_secret=SECRET, data_dir=tmp_path, learner_draws=10_000)
    kv = LocalKV(tmp_path)
    clock = Clock()
    client = ApiClient(create_app(settings, store, LocalKVPublisher(kv), now_ms=clock, schedule=False))
    created = client.post("/v1/experiments", json={**HERO, "min_segment_units": 1}, headers=AUTH)
    assert created.status_code == 201, created.text
    return client, kv, clock


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)
@given(requests=st.lists(REQUESTS, min_size=1, max_size=3))
def test_no_input_gets_a_5xx_and_the_experiment_still_publishes(
    api: tuple[ApiClient, LocalKV, Clock], requests: list[tuple[str, str, bytes, str | None]]
) -> None:
    client, kv, clock = api
    for method, path, body, odd_header in requests:
        headers = {**AUTH, "content-type": "application/json"}
        # The request's odd header: If-Match on a PATCH; on /v1/events, the signature's v1 value
        # (else the batch is signed properly, to reach the parser).
        raw = None if odd_header is None else odd_header.encode("utf-8", "surrogatepass")
        if path == "/v1/events":
            signature = sign(SECRET, body, clock.ms // 1000).encode()
            headers["X-Perch-Signature"] = (
                signature if raw is None else b"t=%d,v1=%s" % (clock.ms // 1000, raw)
            )  # type: ignore[assignment]
        elif raw is not None:
            headers["If-Match"] = raw  # type: ignore[assignment]
        if path == "/login":
            headers = {"content-type": "application/x-www-form-urlencoded"}
        r = client.request(method, path, content=body, headers=headers)
        assert r.status_code < 500, (method, path, r.status_code, r.text[:300])
    clock.ms += 1001  # past KV's one write per key per second, which publishing would wait out
    published = client.post("/v1/experiments/hero/publish", headers=AUTH)
    assert published.status_code == 200, published.text[:500]
    decode_snapshot(kv.get(snapshot_key("hero")) or b"")
