"""The composition root: what `perch serve` builds from the environment."""

from __future__ import annotations

from pathlib import Path

from control_plane.main import app_from_env
from tests.control_plane.http.test_app import ApiClient
from tests.factories import spec

ENV = {"PERCH_ADMIN_TOKEN": "admin-token-0123456789", "PERCH_EDGE_SECRET": "edge-secret-0123456789"}


def test_with_events_in_chdb_serve_refuses_to_learn_what_it_cannot_read(tmp_path: Path) -> None:
    """chDB serves one process per data path and `perch consume` holds it: serve must not publish a
    snapshot learnt from nothing; it says where learning happens instead."""
    app = app_from_env({**ENV, "PERCH_DATA_DIR": str(tmp_path), "PERCH_EVENTS_URL": f"chdb://{tmp_path}/ch"})
    auth = {"Authorization": f"Bearer {ENV['PERCH_ADMIN_TOKEN']}"}
    client = ApiClient(app)  # no lifespan: the schedule is not what is tested here
    assert client.post("/v1/experiments", json=spec().to_dict(), headers=auth).status_code == 201
    refused = client.post("/v1/experiments/hero/publish", headers=auth)
    assert refused.status_code == 409
    assert "perch consume" in refused.json()["error"] and "--publish" in refused.json()["error"]
    assert client.get("/healthz").status_code == 200


def test_without_clickhouse_serve_learns_from_its_database(tmp_path: Path) -> None:
    app = app_from_env({**ENV, "PERCH_DATA_DIR": str(tmp_path)})
    auth = {"Authorization": f"Bearer {ENV['PERCH_ADMIN_TOKEN']}"}
    client = ApiClient(app)
    client.post("/v1/experiments", json=spec().to_dict(), headers=auth)
    assert client.post("/v1/experiments/hero/publish", headers=auth).status_code == 200


def test_with_events_in_chdb_serve_refuses_events_and_reports_without_accepting_them(tmp_path: Path) -> None:
    """The edge falls back to POST /v1/events when Queues refuse: serve must not take into SQL what
    nothing would learn from. 503: not accepted, so the edge keeps the batch and sends it again."""
    from core import encode_batch, sign
    from tests.factories import NOW, exposure

    env = {**ENV, "PERCH_DATA_DIR": str(tmp_path), "PERCH_EVENTS_URL": f"chdb://{tmp_path}/ch"}
    client = ApiClient(app_from_env(env))
    auth = {"Authorization": f"Bearer {ENV['PERCH_ADMIN_TOKEN']}"}
    client.post("/v1/experiments", json=spec().to_dict(), headers=auth)
    body = encode_batch([exposure(1, ts=NOW)])
    import time

    now_s = int(time.time())
    headers = {
        "X-Perch-Signature": sign(ENV["PERCH_EDGE_SECRET"], body, now_s),
        "content-type": "application/json",
    }
    refused = client.post("/v1/events", content=body, headers=headers)
    assert refused.status_code == 503 and "perch consume" in refused.json()["error"]
    report = client.get("/v1/experiments/hero/report", headers=auth)
    assert report.status_code == 409 and "perch consume" in report.json()["error"]
