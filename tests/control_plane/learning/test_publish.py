from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from control_plane.distribution.kv_publishers import LocalKVPublisher
from control_plane.learning.publish import publish_all, publish_experiment
from control_plane.metrics import Metrics
from control_plane.storage.store import Store, publish_lock_key
from core import INDEX_KEY, LocalKV, decode_snapshot, snapshot_key
from tests.control_plane.conftest import empty_postgres
from tests.control_plane.event_stores import put
from tests.factories import NOW, UNIT_KEY, exposure, spec


class Clock:
    def __init__(self) -> None:
        self.ms = NOW
        self.slept: list[float] = []

    def __call__(self) -> int:
        return self.ms

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.ms += int(seconds * 1000)


@pytest.fixture
def setup(store: Store, tmp_path: Path) -> tuple[Store, LocalKV, Clock]:
    store.create_experiment(spec(max_age_s=3600), NOW)
    return store, LocalKV(tmp_path), Clock()


@pytest.fixture
def any_setup(any_store: Store, tmp_path: Path) -> tuple[Store, LocalKV, Clock]:
    """The same, on every event store (tests/control_plane/event_stores.py)."""
    any_store.create_experiment(spec(max_age_s=3600), NOW)
    return any_store, LocalKV(tmp_path), Clock()


def _publish(store: Store, kv: LocalKV, clock: Clock, force: bool = False):  # type: ignore[no-untyped-def]
    record = store.get_experiment("hero")
    assert record is not None
    return publish_experiment(
        store,
        LocalKVPublisher(kv),
        record,
        Metrics(),
        now_ms=clock,
        force=force,
        draws=10_000,
        sleep=clock.sleep,
    )


def test_publishes_only_when_something_changed(any_setup: tuple[Store, LocalKV, Clock]) -> None:
    store, kv, clock = any_setup
    first = _publish(store, kv, clock)
    assert first.published and first.snapshot_version == 1
    clock.ms += 10_000
    assert _publish(store, kv, clock).reason == "unchanged"
    put(store, [exposure(1)], clock.ms)
    second = _publish(store, kv, clock)
    assert second.published and second.snapshot_version == 2
    clock.ms += 10_000
    store.update_experiment("hero", {"floor": 0.2}, clock.ms)
    third = _publish(store, kv, clock)
    assert third.published and decode_snapshot(kv.get(snapshot_key("hero")) or b"").floor == pytest.approx(
        0.2
    )


def test_only_a_publish_that_learns_reads_the_bytes_of_the_snapshot_in_force(
    setup: tuple[Store, LocalKV, Clock],
) -> None:
    # Most scheduled cycles find nothing changed: they must not load megabytes to learn that.
    from tests.control_plane.storage.test_snapshots import bulky_columns_read, statements

    store, kv, clock = setup
    _publish(store, kv, clock)
    clock.ms += 10_000
    with statements(store.engine) as seen:
        assert _publish(store, kv, clock).reason == "unchanged"
    assert bulky_columns_read(seen) == []
    put(store, [exposure(1)], clock.ms)
    with statements(store.engine) as seen:
        assert _publish(store, kv, clock).published
    (read,) = bulky_columns_read([s for s in seen if s.lstrip().startswith("SELECT")])
    assert "snapshots.data" in read and "snapshots.summary" not in read


def test_republishes_before_the_edge_would_call_it_stale(setup: tuple[Store, LocalKV, Clock]) -> None:
    store, kv, clock = setup
    _publish(store, kv, clock)
    clock.ms += 1_799_000
    assert not _publish(store, kv, clock).published
    clock.ms += 2_000  # past half of max_age_s = 3600 s
    assert _publish(store, kv, clock).published


def test_never_writes_a_kv_key_twice_within_a_second(setup: tuple[Store, LocalKV, Clock]) -> None:
    store, kv, clock = setup
    _publish(store, kv, clock, force=True)
    clock.ms += 300
    _publish(store, kv, clock, force=True)
    assert clock.slept == [pytest.approx(0.7)]
    history = store.snapshot_history("hero")
    assert history[0]["created_ms"] - history[1]["created_ms"] >= 1000


def test_one_failing_experiment_does_not_stop_the_cycle(setup: tuple[Store, LocalKV, Clock]) -> None:
    store, kv, clock = setup
    store.create_experiment(spec(key="second"), NOW)

    class Flaky(LocalKVPublisher):
        def put_many(self, items):  # type: ignore[no-untyped-def]
            if snapshot_key("hero") in items:
                raise OSError("KV down")
            super().put_many(items)

    metrics = Metrics()
    results = publish_all(store, Flaky(kv), metrics, now_ms=clock, draws=10_000)
    assert [r.experiment for r in results] == ["second"]
    assert kv.get(snapshot_key("second")) is not None
    assert 'perch_publish_failures_total{experiment="hero"} 1.0' in metrics.render().decode()


def test_each_experiment_is_published_by_the_holder_of_its_own_lock(tmp_path: Path, pg_url: str) -> None:
    # PostgreSQL only: SQLite is one process's database, with no other publishers to coordinate.
    empty_postgres(pg_url)
    store = Store.from_url(pg_url, UNIT_KEY)
    store.create_experiment(spec(), NOW)
    store.create_experiment(spec(key="second"), NOW)
    kv, clock = LocalKV(tmp_path), Clock()
    other = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    lock, unlock = text("SELECT pg_try_advisory_lock(:k)"), text("SELECT pg_advisory_unlock(:k)")
    try:
        with other.connect() as conn:
            # Another publisher is busy with "hero" and with the index.
            assert conn.execute(lock, {"k": publish_lock_key("hero")}).scalar()
            assert conn.execute(lock, {"k": publish_lock_key("")}).scalar()
            published = publish_all(store, LocalKVPublisher(kv), Metrics(), now_ms=clock, draws=10_000)
            assert [r.experiment for r in published] == ["second"]
            assert kv.get(snapshot_key("hero")) is None and kv.get(INDEX_KEY) is None
            conn.execute(unlock, {"k": publish_lock_key("hero")})
            conn.execute(unlock, {"k": publish_lock_key("")})
            conn.commit()
        clock.ms += 2_000
        published = publish_all(store, LocalKVPublisher(kv), Metrics(), now_ms=clock, draws=10_000)
        assert [r.experiment for r in published if r.published] == ["hero"]  # "second" is unchanged
        assert kv.get(snapshot_key("hero")) is not None and kv.get(INDEX_KEY) is not None
    finally:
        other.dispose()
        store.engine.dispose()


def _logged(store: Store, n: int, clock: Clock, first: int = 1000) -> None:
    """Logged personalized exposures where arm 'b' converts at 30% and 'c' at 5%."""
    import random

    rng = random.Random(3)
    events = []
    for i in range(n):
        arm = "b" if i % 2 else "c"
        events.append({**exposure(first + i, arm=arm, ts=clock.ms - 3_600_000), "propensity": 0.5})
        if rng.random() < (0.30 if arm == "b" else 0.05):
            events.append(
                {
                    "type": "outcome",
                    "id": f"o-{i}",
                    "ts": clock.ms - 3_500_000,
                    "decision_id": f"{first + i:032x}",
                    "experiment": "hero",
                    "value": 1,
                    "unit": "u",
                }
            )
    put(store, events, clock.ms)


def _contrarian(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
    """A learner gone wrong: it puts nearly all traffic on 'c', the worse arm."""
    from control_plane.learning.learner import learn

    snap = learn(*args, **kwargs)  # type: ignore[arg-type]
    n = len(snap.arms)
    allocation = [0.9 if snap.arms[i % n].key == "c" else 0.1 / (n - 1) for i in range(len(snap.allocation))]
    return dataclasses.replace(snap, allocation=allocation)


def _publish_contrarian(
    store: Store, kv: LocalKV, clock: Clock, monkeypatch: pytest.MonkeyPatch, metrics: Metrics
):  # type: ignore[no-untyped-def]
    from control_plane.learning import publish as module
    from control_plane.learning.publish import Gate

    _logged(store, 1200, clock)
    assert _publish(store, kv, clock).published  # learnt from the data: prefers 'b'
    monkeypatch.setattr(module, "learn", _contrarian)
    clock.ms += 10_000
    record = store.get_experiment("hero")
    assert record is not None
    return publish_experiment(
        store,
        LocalKVPublisher(kv),
        record,
        metrics,
        now_ms=clock,
        force=True,
        draws=10_000,
        sleep=clock.sleep,
        gate=Gate(tolerance=0.01, min_exposures=500),
    )


def test_the_promotion_gate_holds_back_a_worse_snapshot(
    any_setup: tuple[Store, LocalKV, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, kv, clock = any_setup
    metrics = Metrics()
    result = _publish_contrarian(store, kv, clock, monkeypatch, metrics)
    assert not result.published and result.reason == "held back by the promotion gate"
    assert decode_snapshot(kv.get(snapshot_key("hero")) or b"").version == 1  # the previous snapshot stays
    (alert,) = store.alerts("hero")
    assert alert["kind"] == "promotion_blocked" and "held back" in alert["message"]
    details = alert["details"]
    assert details["candidate"]["snips"] < details["current"]["snips"] - 0.01
    # Worse beyond the tolerance by more than two standard errors of the paired difference.
    assert details["difference"] + 2 * details["difference_se"] < -0.01
    assert details["difference"] == pytest.approx(details["candidate"]["snips"] - details["current"]["snips"])
    assert 'perch_promotion_blocked_total{experiment="hero"} 1.0' in metrics.render().decode()


def test_a_miscalibrated_snapshot_in_force_cannot_hold_back_its_successor(
    setup: tuple[Store, LocalKV, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calibration check says the world changed: the gate's older logs no longer judge."""
    from control_plane.learning import publish as module
    from control_plane.learning.calibration import Miscalibration

    drift = [Miscalibration("b", "", 10.0, 40.0, -5.0)]
    monkeypatch.setattr(module, "_check_calibration", lambda *args: drift)
    store, kv, clock = setup
    result = _publish_contrarian(store, kv, clock, monkeypatch, Metrics())
    assert result.published and result.snapshot_version == 2
    gate = store.snapshot_history("hero")[0]["summary"]["gate"]
    assert gate["passed"] is False and gate["overridden"] == "calibration"
    assert store.alerts("hero") == []


def test_the_gate_lets_an_equal_or_better_snapshot_through(any_setup: tuple[Store, LocalKV, Clock]) -> None:
    store, kv, clock = any_setup
    _logged(store, 1200, clock)
    _publish(store, kv, clock)
    clock.ms += 10_000
    _logged(store, 10, clock, first=9000)
    result = _publish(store, kv, clock)
    assert result.published
    summary = store.snapshot_history("hero")[0]["summary"]
    assert summary["gate"]["passed"] is True and summary["gate"]["exposures"] >= 500
