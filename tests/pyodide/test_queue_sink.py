"""The built Worker with Queues producer bindings, in real Pyodide: what a consumer would pull."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from core import parse_batch, parse_message, route
from deploy.bundle import Bundle
from edge.config import EVENT_QUEUE_PREFIX, Var
from tests.factories import build_snapshot
from tests.pyodide.conftest import Harness, node_executable
from tests.pyodide.test_worker import SECRET, UID, _kv, _Servers

pytestmark = pytest.mark.pyodide

QUEUES = (f"{EVENT_QUEUE_PREFIX}0", f"{EVENT_QUEUE_PREFIX}1")
COOKIE = ["cookie", f"perch_uid={UID}"]


@pytest.fixture(scope="module")
def servers() -> Iterator[_Servers]:
    s = _Servers()
    yield s
    s.http.shutdown()
    s.http.server_close()


@pytest.fixture(scope="module")
def isolate(node: str, bundle: Bundle, servers: _Servers) -> Iterator[Harness]:
    # Its own isolate: the Worker keeps the first request's settings, and these point at `servers`.
    del node  # the fixture fails (in CI) or skips without Node tooling
    path = node_executable()
    assert path is not None
    harness = Harness(path, bundle.path / "src", bundle.path / "python_modules")
    yield harness
    harness.close()


def _fetch(h: Harness, servers: _Servers, url: str, queues: dict[str, str], **request: Any) -> dict[str, Any]:
    snap = build_snapshot(experiment="q-hero", holdout=0.0, created_at=0, max_age_s=1e12)
    result = h(
        op="fetch",
        module="entry",
        request={"url": url, "headers": [COOKIE], "cf": {"country": "FR"}, **request},
        kv=_kv(snap),
        queues=queues,
        # A var that merely looks like a queue is not one: the Worker logs it and carries on.
        vars={
            Var.ORIGIN_URL: servers.url,
            Var.CONTROL_PLANE_URL: servers.url,
            Var.EDGE_SECRET: SECRET,
            f"{EVENT_QUEUE_PREFIX}NOTE": "not a binding",
        },
    )
    assert result["ok"], result
    assert result["wait_until"]["rejected"] == [], result
    return result


def _messages(result: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(queue index, event) of every message sent, each checked as `perch consume` checks it."""
    out = []
    for name, calls in result["queues"].items():
        for call in calls:
            for message in call:
                assert (message["kind"], message["contentType"]) == ("[object Object]", "text")
                _, body = parse_message(SECRET, message["body"])
                valid, rejected = parse_batch(body)
                assert rejected == []
                out += [(QUEUES.index(name), event) for event in valid]
    return out


def _health(h: Harness, servers: _Servers) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_fetch(h, servers, "https://shop.test/v1/health", {})["body_text"])
    return doc["events"]


def _decide(h: Harness, servers: _Servers) -> tuple[dict[str, Any], list[tuple[int, dict[str, Any]]]]:
    result = _fetch(h, servers, "https://shop.test/v1/decide?experiment=q-hero", dict.fromkeys(QUEUES, "ok"))
    (decision,) = json.loads(result["body_text"])["decisions"]
    return decision, _messages(result)


def test_exposures_and_outcomes_go_to_the_queue_of_their_decision(
    isolate: Harness, servers: _Servers
) -> None:
    before = _health(isolate, servers)
    decisions = []
    # Decision ids are random: decide until both queues have had one (8 at least; 8 alone all went
    # to one queue once in 128 runs).
    while len(decisions) < 8 or len({index for index, _ in decisions}) < 2:
        assert len(decisions) < 64, "every decision went to one queue"
        decision, sent = _decide(isolate, servers)
        ((index, exposure),) = sent  # exactly once, in one message
        assert exposure["type"] == "exposure" and exposure["decision_id"] == decision["decision_id"]
        assert index == route(decision["decision_id"], len(QUEUES))
        decisions.append((index, decision))
    beacon = {"events": [{"token": d["token"], "value": 1} for _, d in decisions]}
    result = _fetch(
        isolate,
        servers,
        "https://shop.test/v1/events",
        dict.fromkeys(QUEUES, "ok"),
        method="POST",
        body=json.dumps(beacon),
    )
    assert json.loads(result["body_text"])["accepted"] == len(decisions)
    outcomes = _messages(result)
    assert sorted((i, e["decision_id"]) for i, e in outcomes) == sorted(
        (i, d["decision_id"]) for i, d in decisions
    )
    assert {e["type"] for _, e in outcomes} == {"outcome"}
    assert sum(len(calls) for calls in result["queues"].values()) == 2  # one sendBatch per queue
    assert servers.received == []  # nothing by POST
    after = _health(isolate, servers)
    assert after["queues"] == 2  # as the last drain saw them
    assert after["queue_events"] - before["queue_events"] == 2 * len(decisions)
    assert (
        after["queue_messages"] - before["queue_messages"] == len(decisions) + 2
    )  # one per exposure, one per queue
    assert after["queue_errors"] == before["queue_errors"] and after["fallbacks"] == before["fallbacks"]


def test_a_failing_queue_falls_back_to_the_signed_post(isolate: Harness, servers: _Servers) -> None:
    before = _health(isolate, servers)
    started = time.monotonic()
    result = _fetch(isolate, servers, "https://shop.test/v1/decide?experiment=q-hero", {QUEUES[0]: "error"})
    assert time.monotonic() - started >= 0.2  # lingered (200 ms with queues) before sending
    (decision,) = json.loads(result["body_text"])["decisions"]
    ((call,),) = result["queues"].values()  # the one call that was tried
    assert [e["decision_id"] for e in json.loads(call[0]["body"].partition("\n")[2])["events"]] == [
        decision["decision_id"]
    ]
    (posted,) = servers.events()  # signed, as today
    assert posted["decision_id"] == decision["decision_id"]
    after = _health(isolate, servers)
    changed = {k: after[k] - before[k] for k in ("queue_errors", "fallbacks", "delivered", "queue_events")}
    assert changed == {"queue_errors": 1, "fallbacks": 1, "delivered": 1, "queue_events": 0}
