"""The profile layer end to end, in process: a visitor's signals at the edge reach the control
plane, become their profile, are published to KV, and the edge's next decision for them uses it;
the exposure it logs teaches the learner under the profile feature."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

from control_plane.events.ingest import ingest
from control_plane.profiles.builder import ProfileSettings, build_cycle, publish_profiles
from control_plane.storage.store import Store
from core import parse_batch, verify
from edge.routing import handle
from edge.visit import Edge
from tests.edge.conftest import CONFIG, SECRET, FakePlatform, read_body, request
from tests.factories import NOW, spec

UID = "0123456789abcdef0123456789abcdef"
COOKIE = {"cookie": f"perch_uid={UID}"}


class PlatformKV:
    """The control plane's KV publisher writing into the edge's (fake) KV."""

    def __init__(self, platform: FakePlatform) -> None:
        self.platform = platform

    def put_many(self, items: Mapping[str, bytes]) -> None:
        self.platform.kv.update(items)

    def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.platform.kv.pop(key, None)


def call(edge: Edge, platform: FakePlatform, *args: Any, **kwargs: Any) -> Any:
    response = asyncio.run(handle(edge, platform, request(*args, **kwargs), random.Random(1)))
    asyncio.run(platform.drain())
    return response.status, json.loads(asyncio.run(read_body(response)))


def deliver(platform: FakePlatform, store: Store, now: int) -> None:
    """What the edge sent home, verified and stored as POST /v1/events would."""
    for _, body, headers in platform.posts:
        verify(SECRET, headers["X-Perch-Signature"], body, now=now // 1000)
        valid, rejected = parse_batch(body)
        assert rejected == []
        ingest(store, valid, None, now)
    platform.posts.clear()


def test_signals_become_a_profile_the_edge_decides_with_and_the_learner_learns_from(store: Store) -> None:
    from control_plane.learning.learner import learn
    from control_plane.storage.stats import CellStats
    from core import encode_snapshot, snapshot_key

    hero = spec(model="contextual", features=["profile.interest"], holdout=0.0, floor=0.0)
    store.create_experiment(hero, NOW)
    platform, edge = FakePlatform(), Edge(CONFIG)
    # A snapshot that has learnt runners prefer b (as the publish cycle would make it).
    cells = {
        (i,): {a: CellStats(400.0, 300.0 if (a == "b") == (i == "running-shoes") else 40.0) for a in "abc"}
        for i in ("running-shoes", "cooking", "unknown")
    }
    platform.kv[snapshot_key("hero")] = encode_snapshot(learn(hero, cells, version=1, now_ms=NOW, seed=1))

    # Three pages viewed (three ids: the same signal twice in one millisecond would be one event).
    beacon = {
        "schema": 1,
        "signals": [{"kind": "page_view", "category": "running-shoes", "id": f"p{i}"} for i in range(3)],
    }
    status, body = call(
        edge, platform, "https://s.test/v1/signals", "POST", COOKIE, json.dumps(beacon).encode()
    )
    assert (status, body["accepted"]) == (202, 3)
    deliver(platform, store, NOW)
    assert build_cycle(store, ProfileSettings(), NOW).built == 1
    assert publish_profiles(store, PlatformKV(platform)) == 1

    status, body = call(edge, platform, "https://s.test/v1/decide?experiment=hero", headers=COOKIE)
    (decision,) = body["decisions"]
    assert decision["arm"] == "b" and "you viewed running shoes" in decision["why"]
    deliver(platform, store, NOW)
    learnt = store.cells(hero, NOW)
    assert learnt[("running-shoes",)]["b"].exposures == 1.0
