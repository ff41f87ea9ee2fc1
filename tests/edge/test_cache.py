from __future__ import annotations

import asyncio

import pytest

from core import encode_snapshot, snapshot_key
from edge.cache import SnapshotCache
from edge.config import EdgeConfig
from tests.edge.conftest import FakePlatform
from tests.factories import NOW, build_snapshot

CONFIG = EdgeConfig(cache_ttl_s=30, retry_after_s=5, kv_timeout_s=0.05)
KEY = snapshot_key("home-hero")


def get(cache: SnapshotCache, platform: FakePlatform, experiment: str = "home-hero"):  # type: ignore[no-untyped-def]
    return asyncio.run(cache.get(experiment, platform))


@pytest.fixture
def cache() -> SnapshotCache:
    return SnapshotCache(CONFIG)


def test_reads_once_then_serves_from_the_isolate(cache: SnapshotCache, platform: FakePlatform) -> None:
    assert get(cache, platform).snapshot == build_snapshot()
    for _ in range(10):
        get(cache, platform)
    assert platform.kv_reads == 1


def test_stale_entry_is_served_while_refreshed_in_the_background(
    cache: SnapshotCache, platform: FakePlatform
) -> None:
    get(cache, platform)
    platform.put(build_snapshot(version=8))
    platform.clock_ms += 31_000
    assert get(cache, platform).snapshot.version == 7  # type: ignore[union-attr]
    assert get(cache, platform).snapshot.version == 7  # type: ignore[union-attr]
    assert len(platform.background()) == 1  # one refresh at a time
    asyncio.run(platform.drain())
    assert get(cache, platform).snapshot.version == 8  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "breakage",
    ["error", "corrupt", "missing", "older", "foreign"],
)
def test_last_good_snapshot_survives_kv_trouble(
    cache: SnapshotCache, platform: FakePlatform, breakage: str
) -> None:
    get(cache, platform)
    if breakage == "error":
        platform.kv_error = OSError("KV 500")
    elif breakage == "corrupt":
        platform.kv[KEY] = platform.kv[KEY][:-9]
    elif breakage == "missing":
        del platform.kv[KEY]
    elif breakage == "older":
        platform.put(build_snapshot(version=3))
    else:
        platform.kv[KEY] = encode_snapshot(build_snapshot(experiment="other"))
    platform.clock_ms += 31_000
    get(cache, platform)
    asyncio.run(platform.drain())
    entry = get(cache, platform)
    assert entry.snapshot == build_snapshot()
    if breakage != "older":
        assert entry.error


def test_missing_snapshot_is_not_asked_for_on_every_request(
    cache: SnapshotCache, platform: FakePlatform
) -> None:
    entry = get(cache, platform, "unknown")
    assert entry.snapshot is None and entry.error == "no snapshot in KV"
    get(cache, platform, "unknown")
    assert platform.kv_reads == 1
    platform.clock_ms += 5_001
    get(cache, platform, "unknown")
    assert platform.kv_reads == 2


def test_slow_kv_costs_a_request_at_most_the_timeout(cache: SnapshotCache, platform: FakePlatform) -> None:
    platform.kv_delay_s = 1.0
    entry = get(cache, platform)
    assert entry.snapshot is None
    assert entry.error == "KV read slower than 0.05s"
    # Within retry_after_s nobody waits on KV again.
    get(cache, platform)
    assert platform.kv_reads == 1


def test_identical_bytes_are_not_decoded_again(cache: SnapshotCache, platform: FakePlatform) -> None:
    first = get(cache, platform).snapshot
    platform.clock_ms += 31_000
    get(cache, platform)
    asyncio.run(platform.drain())
    assert get(cache, platform).snapshot is first
    assert platform.kv_reads == 2


def test_health_reports_versions_ages_and_errors(cache: SnapshotCache, platform: FakePlatform) -> None:
    get(cache, platform)
    get(cache, platform, "unknown")
    report = cache.health(platform.clock_ms + 1000)
    assert report["home-hero"] == {"version": 7, "age_s": 61.0, "checked_s_ago": 1.0, "error": None}
    assert report["unknown"]["version"] is None and report["unknown"]["error"] == "no snapshot in KV"


@pytest.mark.parametrize(
    ("cached", "published"),
    [
        ({"version": 10**15}, {"version": 3, "created_at": NOW}),  # a restore numbers versions anew
        ({"version": 9, "created_at": NOW + 10 * 3_600_000}, {"version": 10, "created_at": NOW}),
    ],
    ids=["huge-version", "from-the-future"],
)
def test_a_later_publish_replaces_a_snapshot_whatever_its_version(
    cache: SnapshotCache, platform: FakePlatform, cached: dict[str, int], published: dict[str, int]
) -> None:
    platform.put(build_snapshot(**cached))
    get(cache, platform)
    platform.put(build_snapshot(**published))
    platform.clock_ms += 31_000
    get(cache, platform)
    asyncio.run(platform.drain())
    assert get(cache, platform).snapshot == build_snapshot(**published)
