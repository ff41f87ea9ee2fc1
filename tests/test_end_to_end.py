"""The whole loop with real processes on loopback:

control plane -> local KV -> edge -> signed events -> control plane -> learner -> KV -> edge.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from cli.main import main
from control_plane.propensity import context_probabilities
from core import LocalKV, decode_snapshot, snapshot_key
from tests.procs import free_port, start_perch, stop, until, wait_http

pytestmark = pytest.mark.process

TOKEN = "e2e-admin-token-0000"
SECRET = "e2e-edge-secret-0000"


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("e2e")
    cp_port, edge_port = free_port(), free_port()
    base_env = {
        "PERCH_DATA_DIR": str(data),
        "PERCH_ADMIN_TOKEN": TOKEN,
        "PERCH_EDGE_SECRET": SECRET,
    }
    cp_log, edge_log = data / "control-plane.log", data / "edge.log"
    cp = start_perch(["serve", "--port", str(cp_port)], {**base_env, "PERCH_PUBLISH_INTERVAL_S": "1"}, cp_log)
    edge = start_perch(
        ["edge", "dev", "--port", str(edge_port)],
        {
            **base_env,
            "CONTROL_PLANE_URL": f"http://127.0.0.1:{cp_port}",
            "ORIGIN_URL": "http://127.0.0.1:9",
            "PERCH_CACHE_TTL_S": "0.2",
        },
        edge_log,
    )
    try:
        wait_http(f"http://127.0.0.1:{cp_port}/healthz", cp, log=cp_log)
        wait_http(f"http://127.0.0.1:{edge_port}/v1/health", edge, log=edge_log)
        yield {
            "data": data,
            "cp": f"http://127.0.0.1:{cp_port}",
            "edge": f"http://127.0.0.1:{edge_port}",
            "env": {"PERCH_URL": f"http://127.0.0.1:{cp_port}", "PERCH_ADMIN_TOKEN": TOKEN},
        }
    finally:
        stop(edge, cp)


def test_cli_manages_experiments_through_the_api(loop: dict[str, Any], tmp_path: Path) -> None:
    spec = tmp_path / "hero.json"
    spec.write_text(
        json.dumps(
            {
                "key": "e2e-hero",
                "default_arm": "plain",
                "features": ["device"],
                "holdout": 0.1,
                "floor": 0.1,
                "arms": [
                    {"key": "plain", "html": "<h1>Hello</h1>"},
                    {"key": "bold", "html": "<h1><b>Hello</b></h1>"},
                ],
            }
        )
    )
    runner = CliRunner(env=loop["env"])
    created = runner.invoke(main, ["experiments", "create", str(spec)])
    assert created.exit_code == 0, created.output
    assert json.loads(created.output)["version"] == 1
    listed = runner.invoke(main, ["experiments", "list"])
    assert listed.output.startswith("e2e-hero\tv1\tarms=plain,bold\tfeatures=device")
    again = runner.invoke(main, ["experiments", "create", str(spec)])
    assert again.exit_code == 1 and "409" in again.output
    published = runner.invoke(main, ["publish", "e2e-hero"])
    assert published.exit_code == 0, published.output
    assert json.loads(published.output)["kv_key"] == snapshot_key("e2e-hero")
    shown = json.loads(runner.invoke(main, ["experiments", "show", "e2e-hero"]).output)
    assert shown["snapshots"][0]["version"] >= 1
    unauthorized = CliRunner(env={**loop["env"], "PERCH_ADMIN_TOKEN": "wrong-token-00000000"})
    assert "401" in unauthorized.invoke(main, ["experiments", "list"]).output


def test_edge_decisions_flow_back_into_the_next_snapshot(loop: dict[str, Any]) -> None:
    kv = LocalKV(loop["data"])
    first = until(lambda: kv.get(snapshot_key("e2e-hero")))
    first_version = decode_snapshot(first).version
    with httpx.Client(base_url=loop["edge"]) as client:
        decisions = []
        for i in range(120):
            r = client.get(
                "/v1/decide",
                params={"experiment": "e2e-hero", "ctx.device": "mobile"},
                headers={"cookie": f"perch_uid={i:032x}"},
            )
            assert r.status_code == 200
            decisions.append(r.json()["decisions"][0])
        assert {d["reason"] for d in decisions} <= {"personalized", "holdout"}
        for i, d in enumerate(decisions):
            if d["arm"] == "bold":  # bold converts, plain never does
                beacon = {"token": d["token"], "value": 1}  # from the visitor the decision was for
                r = client.post("/v1/events", json=beacon, headers={"cookie": f"perch_uid={i:032x}"})
                assert r.status_code == 202, r.text
    headers = {"Authorization": f"Bearer {TOKEN}"}
    conversions = sum(d["arm"] == "bold" for d in decisions)

    def joined() -> dict[str, Any] | None:
        doc: dict[str, Any] = httpx.get(f"{loop['cp']}/v1/experiments/e2e-hero", headers=headers).json()
        return doc if doc["outcomes"].get("joined", 0) == conversions else None

    # The edge sent its events in the background; the control plane joined every conversion...
    until(joined)
    # ... and its schedule has been publishing what arrived, without being asked.
    until(
        lambda: (
            httpx.get(f"{loop['cp']}/v1/experiments/e2e-hero", headers=headers).json()["snapshots"][0][
                "version"
            ]
            > first_version
        )
    )
    published = httpx.post(f"{loop['cp']}/v1/experiments/e2e-hero/publish", headers=headers).json()
    snap = decode_snapshot(kv.get(snapshot_key("e2e-hero")) or b"")
    assert snap.version == published["snapshot_version"]
    # A new experiment with features is contextual: the edge logs no propensity, the control
    # plane computes it; the model learnt that bold converts on mobile.
    assert snap.model is not None and [s.key for s in snap.segments] == ["all"]
    personalized = [d for d in decisions if d["reason"] == "personalized"]
    assert personalized and all(d["propensity"] is None for d in personalized)
    assert context_probabilities(snap, {"device": "mobile"})[snap.arm_index["bold"]] > 0.5

    def edge_caught_up() -> dict[str, Any] | None:
        # Requests drive the edge's background refresh; health then shows what it holds.
        httpx.get(f"{loop['edge']}/v1/decide", params={"experiment": "e2e-hero"})
        doc: dict[str, Any] = httpx.get(f"{loop['edge']}/v1/health").json()
        return doc if doc["snapshots"]["e2e-hero"]["version"] >= snap.version else None

    health = until(edge_caught_up)
    assert health["snapshots"]["e2e-hero"]["error"] is None
    metrics = httpx.get(f"{loop['cp']}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert 'perch_events_accepted_total{type="exposure"}' in metrics
