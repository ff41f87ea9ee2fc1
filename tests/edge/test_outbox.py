"""The outbox's queue sink: signed messages per queue within Cloudflare's limits, POST on failure."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from core import LocalKV, parse_batch, parse_message, route, verify
from core.queue import MAX_MESSAGE_BYTES, MAX_SEND_BATCH_BYTES, MAX_SEND_BATCH_MESSAGES
from edge.config import QUEUE_LINGER_MS, ConfigError, EdgeConfig, event_queue_names
from edge.local import LocalPlatform
from edge.outbox import Outbox
from edge.visit import Edge
from tests.edge.conftest import CONFIG, SECRET, FakePlatform, read_body, request, serve
from tests.factories import NOW

UID = "0123456789abcdef0123456789abcdef"
NOW_CONFIG = replace(CONFIG, event_linger_ms=0)  # the tests that do not look at lingering


def _exposure(i: int, wide: bool = False) -> dict[str, Any]:
    # `wide`: the largest context an exposure may carry, ~3 KB, so a few hundred fill several calls.
    context = {f"f{k:02d}-" + "k" * 60: "v" * 128 for k in range(16)} if wide else {"device": "mobile"}
    return {
        "type": "exposure",
        "id": f"x-{i:032x}",
        "ts": NOW,
        "decision_id": f"{i:032x}",
        "experiment": "home-hero",
        "arm": "bold",
        "unit": UID,
        "propensity": 0.5,
        "reason": "personalized",
        "segment": "all",
        "snapshot_version": 7,
        "context": context,
    }


def _outcome(i: int) -> dict[str, Any]:
    return {
        "type": "outcome",
        "id": f"o-{i:024x}",
        "ts": NOW + 1,
        "decision_id": f"{i:032x}",
        "experiment": "home-hero",
        "value": 1.0,
        "unit": UID,
    }


def _stitch(i: int) -> dict[str, Any]:
    return {"type": "stitch", "id": f"s-{i:024x}", "ts": NOW, "anonymous_id": UID, "user_id": f"u{i}"}


def _send(platform: FakePlatform, events: list[dict[str, Any]], config: EdgeConfig = NOW_CONFIG) -> Outbox:
    outbox = Outbox()
    outbox.add(platform, config, events)
    asyncio.run(platform.drain())
    return outbox


def _received(calls: list[tuple[int, list[str]]]) -> list[tuple[int, dict[str, Any]]]:
    """(queue, event) for every event of every message, each message checked as the consumer would."""
    out = []
    for index, messages in calls:
        for message in messages:
            _, body = parse_message(SECRET, message)
            valid, rejected = parse_batch(body)
            assert rejected == []
            out += [(index, event) for event in valid]
    return out


def _posted(platform: FakePlatform) -> list[dict[str, Any]]:
    out = []
    for url, body, headers in platform.posts:
        assert url == "https://cp.test/v1/events"
        verify(SECRET, headers["X-Perch-Signature"], body, now=NOW // 1000)
        out += json.loads(body)["events"]
    return out


@pytest.fixture
def queued(platform: FakePlatform) -> Iterator[FakePlatform]:
    platform.queue_count = 3
    yield platform


def test_without_queues_events_go_by_post_as_before(platform: FakePlatform) -> None:
    events = [_exposure(1), _outcome(1)]
    outbox = _send(platform, events, CONFIG)  # the default linger: none without queues
    assert _posted(platform) == events and platform.queue_calls == []
    assert outbox.health() == {
        "queued": 0,
        "delivered": 2,
        "rejected": 0,
        "dropped": 0,
        "queues": 0,
        "queue_messages": 0,
        "queue_events": 0,
        "events_per_message": 0.0,
        "queue_errors": 0,
        "fallbacks": 0,
    }


def test_every_event_arrives_once_in_its_decision_queue_within_the_limits(queued: FakePlatform) -> None:
    events = [_exposure(i, wide=True) for i in range(400)] + [_outcome(i) for i in range(0, 400, 3)]
    events += [_stitch(i) for i in range(5)]
    outbox = _send(queued, events)
    assert queued.posts == []
    calls = queued.queue_calls
    assert {index for index, _ in calls} == {0, 1, 2}
    assert len(calls) > 3  # ~400 KB a queue: more than one sendBatch each
    for _, messages in calls:
        assert 1 <= len(messages) <= MAX_SEND_BATCH_MESSAGES
        assert sum(len(m.encode()) for m in messages) <= MAX_SEND_BATCH_BYTES
        assert all(len(m.encode()) <= MAX_MESSAGE_BYTES for m in messages)
    received = _received(calls)
    assert Counter(e["id"] for _, e in received) == Counter(e["id"] for e in events)
    assert sorted((e for _, e in received), key=lambda e: e["id"]) == sorted(events, key=lambda e: e["id"])
    for index, event in received:
        assert index == route(event.get("decision_id") or event["id"], 3)
    messages = sum(len(m) for _, m in calls)
    health = outbox.health()
    assert health["queues"] == 3 and health["queue_messages"] == messages
    assert health["queue_events"] == len(events) and health["delivered"] == 0
    assert health["events_per_message"] == round(len(events) / messages, 2)
    assert (health["queue_errors"], health["fallbacks"], health["dropped"]) == (0, 0, 0)


def test_an_exposure_and_its_later_outcome_meet_in_one_queue(queued: FakePlatform) -> None:
    # Separate drains, as on Workers: the beacon comes minutes after the page.
    edge = Edge(NOW_CONFIG)
    cookie = {"cookie": f"perch_uid={UID}"}
    decisions = []
    for seed in range(12):
        decide = request("https://s.test/v1/decide?experiment=home-hero", headers=cookie)
        decisions += json.loads(asyncio.run(read_body(serve(edge, queued, decide, seed))))["decisions"]
    asyncio.run(queued.drain())
    assert len({d["decision_id"] for d in decisions}) == 12
    beacon = {"events": [{"token": d["token"], "value": 1} for d in decisions]}
    serve(edge, queued, request("https://s.test/v1/events", "POST", cookie, json.dumps(beacon).encode()))
    asyncio.run(queued.drain())
    queues: dict[str, set[int]] = {}
    kinds: Counter[str] = Counter()
    for index, event in _received(queued.queue_calls):
        queues.setdefault(event["decision_id"], set()).add(index)
        kinds[event["type"]] += 1
    assert kinds == {"exposure": 12, "outcome": 12}
    assert all(len(seen) == 1 for seen in queues.values())
    assert len({next(iter(seen)) for seen in queues.values()}) > 1  # 12 decisions spread over 3 queues
    assert queued.posts == []


def test_a_failed_call_sends_exactly_its_events_by_post(queued: FakePlatform) -> None:
    queued.queue_error[1] = RuntimeError("Queue send failed: internal error (injected)")
    events = [_exposure(i, wide=True) for i in range(300)] + [_outcome(i) for i in range(300)]
    outbox = _send(queued, events)
    failed = [(i, m) for i, m in queued.queue_calls if i == 1]
    assert len(failed) >= 2  # each of queue 1's calls was tried, and each failed
    lost = [e for _, e in _received(failed)]
    assert _posted(queued) == lost  # the POST carries exactly the failed calls' events
    delivered = [e for _, e in _received([(i, m) for i, m in queued.queue_calls if i != 1])]
    assert sorted(e["id"] for e in lost + delivered) == sorted(e["id"] for e in events)
    health = outbox.health()
    assert health["queue_errors"] == len(failed)
    assert health["fallbacks"] == health["delivered"] == len(lost) > 0
    assert health["queue_events"] == len(delivered) == len(events) - len(lost)
    assert health["queue_messages"] == sum(len(m) for i, m in queued.queue_calls if i != 1)


def test_only_the_failed_call_of_a_queue_falls_back(
    queued: FakePlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    queued.queue_count = 1
    calls = 0
    original = queued.queue_send

    async def second_call_fails(index: int, messages: list[str]) -> None:
        nonlocal calls
        calls += 1
        await original(index, messages)
        if calls == 2:
            raise ConnectionError("injected")

    monkeypatch.setattr(queued, "queue_send", second_call_fails)
    events = [_exposure(i, wide=True) for i in range(300)]
    outbox = _send(queued, events)
    assert len(queued.queue_calls) >= 3
    assert _posted(queued) == [e for _, e in _received(queued.queue_calls[1:2])]
    assert outbox.health()["queue_errors"] == 1
    assert outbox.health()["fallbacks"] + outbox.health()["queue_events"] == len(events)


def test_a_failed_fallback_counts_as_dropped(queued: FakePlatform, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edge.outbox.SEND_ATTEMPTS", 1)
    queued.queue_error = {i: RuntimeError("down") for i in range(3)}
    queued.post_status = [503]
    outbox = _send(queued, [_exposure(1), _outcome(1)])
    health = outbox.health()
    assert (health["queue_errors"], health["fallbacks"]) == (1, 2)  # one call: both events in one queue
    assert (health["dropped"], health["delivered"]) == (2, 0)


def test_without_the_secret_nothing_unsigned_is_sent(queued: FakePlatform) -> None:
    outbox = _send(queued, [_exposure(1)], replace(NOW_CONFIG, edge_secret=None))
    assert queued.queue_calls == [] and queued.posts == []
    assert outbox.health()["dropped"] == 1


def test_an_event_too_large_for_any_message_is_counted_as_dropped(queued: FakePlatform) -> None:
    huge = _exposure(2) | {"segment": "s" * MAX_MESSAGE_BYTES}  # not an event the edge makes
    outbox = _send(queued, [_exposure(1), huge])
    assert [e["id"] for _, e in _received(queued.queue_calls)] == [_exposure(1)["id"]]
    assert (outbox.health()["dropped"], outbox.health()["queue_events"]) == (1, 1)


def test_queues_linger_200_ms_by_default_and_the_setting_overrides_it(
    queued: FakePlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    _send(queued, [_exposure(1)], CONFIG)
    _send(queued, [_exposure(2)], replace(CONFIG, event_linger_ms=0))
    _send(queued, [_exposure(3)], replace(CONFIG, event_linger_ms=50))
    queued.queue_count = 0
    _send(queued, [_exposure(4)], CONFIG)
    assert slept == [QUEUE_LINGER_MS / 1000, 0.05]


def test_events_of_requests_during_the_linger_share_the_messages(queued: FakePlatform) -> None:
    async def scenario() -> Outbox:
        outbox = Outbox()
        config = replace(CONFIG, event_linger_ms=20)
        outbox.add(queued, config, [_exposure(1)])
        drain = asyncio.ensure_future(queued.tasks.pop())
        await asyncio.sleep(0)
        for i in range(2, 30):
            outbox.add(queued, config, [_exposure(i)])
        assert queued.tasks == []  # one drain for all of them
        await drain
        return outbox

    outbox = asyncio.run(scenario())
    assert outbox.health()["queue_events"] == 29
    assert outbox.health()["queue_messages"] == len(queued.queue_calls) == 3  # one message per queue
    assert outbox.health()["events_per_message"] == round(29 / 3, 2)


def test_health_reports_the_queue_counts(queued: FakePlatform) -> None:
    edge = Edge(NOW_CONFIG)
    serve(edge, queued, request("https://s.test/v1/decide?experiment=home-hero"))
    asyncio.run(queued.drain())
    doc = json.loads(asyncio.run(read_body(serve(edge, queued, request("https://s.test/v1/health")))))
    assert doc["events"]["queues"] == 3
    assert doc["events"]["queue_messages"] == doc["events"]["queue_events"] == 1
    assert doc["events"]["events_per_message"] == 1.0


def test_linger_setting_rules() -> None:
    assert (CONFIG.linger_ms(False), CONFIG.linger_ms(True)) == (0, QUEUE_LINGER_MS)
    fixed = EdgeConfig(event_linger_ms=0)
    assert (fixed.linger_ms(False), fixed.linger_ms(True)) == (0, 0)
    assert EdgeConfig.from_vars({}).event_linger_ms is None
    assert EdgeConfig.from_vars({"PERCH_EVENT_LINGER_MS": "250"}).event_linger_ms == 250
    for bad in ("-1", "10001", "soon", "2.5"):
        with pytest.raises(ConfigError, match=r"LINGER_MS|linger_ms") as info:
            EdgeConfig.from_vars({"PERCH_EVENT_LINGER_MS": bad})
        assert "must be" in str(info.value)
    with pytest.raises(ConfigError, match=r"event_linger_ms=True, must be an integer in \[0, 10000\]"):
        EdgeConfig(event_linger_ms=True)


def test_queue_bindings_are_ordered_by_name() -> None:
    names = ["PERCH_KV", "PERCH_EVENTS_1", "PERCH_EVENTS_", "PERCH_EVENTS_0", "ORIGIN_URL", "PERCH_EVENTS_10"]
    assert event_queue_names(names) == ("PERCH_EVENTS_0", "PERCH_EVENTS_1", "PERCH_EVENTS_10")
    assert event_queue_names(reversed(names)) == event_queue_names(names)
    assert event_queue_names(["PERCH_KV"]) == ()


class _Producer:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail

    def send_batch(self, messages: list[str]) -> None:
        if self.fail:
            raise OSError("disk full (injected)")
        self.batches.append(messages)


class _AsyncProducer(_Producer):
    async def send_batch(self, messages: list[str]) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        super().send_batch(messages)


def test_the_local_platform_sends_to_the_producers_it_was_given(tmp_path: Path) -> None:
    sync, asynchronous, broken = _Producer(), _AsyncProducer(), _Producer(fail=True)

    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            assert LocalPlatform(LocalKV(tmp_path), client).queue_names() == ()
            local = LocalPlatform(LocalKV(tmp_path), client, [sync, asynchronous, broken])
            assert local.queue_names() == ("PERCH_EVENTS_0", "PERCH_EVENTS_1", "PERCH_EVENTS_2")
            await local.queue_send(0, ["a"])
            await local.queue_send(1, ["b", "c"])
            with pytest.raises(OSError, match="disk full"):
                await local.queue_send(2, ["d"])

    asyncio.run(scenario())
    assert (sync.batches, asynchronous.batches) == ([["a"]], [["b", "c"]])
