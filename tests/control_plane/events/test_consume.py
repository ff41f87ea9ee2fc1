"""`perch consume`: queued batches into the store, exactly once whatever the queue and the consumer do."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from control_plane.events.consume import Consumer
from control_plane.events.queues import DirectoryQueue, Message
from control_plane.storage import stats
from control_plane.storage.schema import exposures, outcomes
from control_plane.storage.store import Store
from core import DecisionToken, encode_messages, mint_token
from tests.factories import NOW, UNIT_KEY, spec
from tests.procs import start_perch

SECRET = "edge-secret-0123456789"
CONTEXTS = [{"device": d, "source": s} for d in ("mobile", "desktop") for s in ("ad", "search")]


def traffic(n: int, seed: int, first: int = 1, now: int = NOW) -> list[dict[str, Any]]:
    """Exposures as the edge logs them; a third convert, half of those by a tokened beacon."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for i in range(first, first + n):
        decision_id, arm, ctx = f"{i:032x}", rng.choice("abc"), rng.choice(CONTEXTS)
        reason = "holdout" if rng.random() < 0.1 else "personalized"
        ts = now - rng.randrange(0, 3_600_000)
        events.append(
            {
                "type": "exposure",
                "id": f"x-{decision_id}",
                "ts": ts,
                "decision_id": decision_id,
                "experiment": "hero",
                "arm": arm,
                "unit": f"u-{i}",
                "propensity": 0.5,
                "reason": reason,
                "segment": "all",
                "snapshot_version": 1,
                "context": ctx,
            }
        )
        if rng.random() < 1 / 3:
            outcome = {
                "type": "outcome",
                "id": f"o-{decision_id}",
                "ts": ts + 5_000,
                "decision_id": decision_id,
                "experiment": "hero",
                "value": 1.0,
                "unit": f"u-{i}",
            }
            if rng.random() < 0.5:
                token = DecisionToken(decision_id, "hero", arm, ctx, ts, 1, "", reason)
                outcome["token"] = mint_token(SECRET, token)
            events.append(outcome)
    return events


def enqueue(queue: DirectoryQueue, events: list[dict[str, Any]], *, per_message: int = 40) -> list[str]:
    """As the edge's outbox sends them: signed messages of a few dozen events."""
    sent: list[str] = []
    for start in range(0, len(events), per_message):
        (messages,) = encode_messages(
            SECRET, events[start : start + per_message], now_s=NOW // 1000, batch_id=f"b{start}"
        )
        queue.send_batch(messages)
        sent.extend(messages)
    return sent


def expected_cells(events: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[float, float]]:
    """Raw sums per (path JSON, arm), from the events themselves, each counted once."""
    converted = {e["decision_id"] for e in events if e["type"] == "outcome"}
    out: dict[tuple[str, str], list[float]] = {}
    for e in {e["id"]: e for e in events}.values():
        if e["type"] == "exposure" and e["reason"] == "personalized":
            path = json.dumps([e["context"]["device"], e["context"]["source"]])
            sums = out.setdefault((path, e["arm"]), [0.0, 0.0])
            sums[0] += 1
            sums[1] += e["decision_id"] in converted
    return {key: (n, r) for key, (n, r) in out.items()}


def check_exact(store: Store, events: list[dict[str, Any]]) -> None:
    """Every event stored once; statistics equal both the events and a recomputation from the rows."""
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(exposures)).scalar() == sum(
            e["type"] == "exposure" for e in events
        )
        assert conn.execute(select(func.count()).select_from(outcomes)).scalar() == sum(
            e["type"] == "outcome" for e in events
        )
        kept, recomputed = stats.totals(conn, "hero"), stats.recompute(conn, "hero")
    got = {key: (t.exposures, t.reward) for key, t in kept.items()}
    assert got == expected_cells(events)
    assert got == {key: (t.exposures, t.reward) for key, t in recomputed.items()}
    assert store.outcome_statuses("hero") == {"joined": sum(e["type"] == "outcome" for e in events)}


@pytest.fixture
def hero(store: Store) -> Store:
    store.create_experiment(spec(), NOW)
    return store


def consumer(store: Store, queue: DirectoryQueue, **kwargs: Any) -> Consumer:
    return Consumer(store, queue, SECRET, now_ms=lambda: NOW + 60_000, sleep=lambda s: None, **kwargs)


def test_a_queue_is_stored_exactly_and_acknowledged(hero: Store, tmp_path: Path) -> None:
    queue = DirectoryQueue(tmp_path / "q")
    events = traffic(600, seed=1)
    enqueue(queue, events)
    result = consumer(hero, queue, max_events=250).run(until_empty=True)
    assert result.accepted == len(events) and result.groups >= 3  # groups of about 250 events
    assert queue.depth().total == 0
    check_exact(hero, events)


def test_redelivered_messages_count_nothing_twice(hero: Store, tmp_path: Path) -> None:
    queue = DirectoryQueue(tmp_path / "q")
    events = traffic(800, seed=2)
    sent = enqueue(queue, events)
    rng = random.Random(3)
    again = [m for m in sent if rng.random() < 0.1]  # 10 % delivered twice (at-least-once)
    queue.send_batch(again)
    result = consumer(hero, queue, max_events=300).run(until_empty=True)
    assert result.messages == len(sent) + len(again)
    assert result.accepted == len(events)
    check_exact(hero, events)


def test_messages_that_can_never_be_stored_are_skipped_counted_and_acknowledged(
    hero: Store, tmp_path: Path
) -> None:
    queue = DirectoryQueue(tmp_path / "q")
    events = traffic(50, seed=4)
    good = enqueue(queue, events)
    forged = good[0].replace("v1=", "v1=00", 1)
    unsigned = '{"schema": 1, "events": []}'
    bad_event = encode_messages(SECRET, [{"type": "exposure", "id": "x"}], now_s=0, batch_id="x")[0][0]
    queue.send_batch([forged, unsigned, bad_event])
    result = consumer(hero, queue).run(until_empty=True)
    assert (result.bad_messages, result.rejected_events) == (2, 1)
    assert queue.depth().total == 0  # never retried forever
    check_exact(hero, events)


def test_a_group_the_store_refuses_is_left_for_redelivery(
    hero: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from control_plane.events import consume

    queue = DirectoryQueue(tmp_path / "q")
    events = traffic(100, seed=5)
    enqueue(queue, events)

    def down(store: Store, batches: list[Any]) -> list[Exception]:
        return [RuntimeError("database unavailable") for _ in batches]

    monkeypatch.setattr(consume, "ingest_merged", lambda store, batches: None)  # the group as one fails
    monkeypatch.setattr(consume, "ingest_group", down)  # and each message alone
    first = consumer(hero, queue, visibility_timeout_s=1.0).run(until_empty=True)
    assert first.failed_groups > 0 and first.accepted == 0
    assert queue.depth().leased > 0  # not acknowledged: they come back when the leases end
    monkeypatch.undo()
    time.sleep(1.1)
    consumer(hero, queue).run(until_empty=True)
    check_exact(hero, events)


def test_an_empty_queue_backs_off_up_to_the_limit(hero: Store, tmp_path: Path) -> None:
    pauses: list[float] = []
    polls = iter(range(8))
    c = Consumer(hero, DirectoryQueue(tmp_path / "q"), SECRET, sleep=pauses.append, idle_max_s=0.4)
    c.run(stop=lambda: next(polls, None) is None)
    assert pauses == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4, 0.4, 0.4]


class _Flaky:
    """A source whose first pull fails as Cloudflare does when it is overloaded."""

    def __init__(self, inner: DirectoryQueue) -> None:
        self.inner, self.failed = inner, False

    def pull(self, max_messages: int = 100, visibility_timeout_s: float = 60.0) -> list[Message]:
        from control_plane.events.queues import QueueError

        if not self.failed:
            self.failed = True
            raise QueueError("HTTP 503", status=503, retriable=True)
        return self.inner.pull(max_messages, visibility_timeout_s)

    def ack(self, leases: Any) -> None:
        self.inner.ack(leases)

    def retry(self, leases: Any, delay_s: float = 0.0) -> None:
        self.inner.retry(leases, delay_s)


def test_a_retriable_queue_error_backs_off_and_goes_on(hero: Store, tmp_path: Path) -> None:
    queue = DirectoryQueue(tmp_path / "q")
    events = traffic(40, seed=6)
    enqueue(queue, events)
    pauses: list[float] = []
    c = Consumer(hero, _Flaky(queue), SECRET, sleep=pauses.append)
    polls = iter(range(5))
    c.run(stop=lambda: next(polls, None) is None)
    assert pauses and pauses[0] == 0.05
    check_exact(hero, events)


# --- real processes: several consumers at once, kill -9 mid-group ----------------------------------


def _consume_process(db_url: str, queue_dir: Path, data_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {
        "PERCH_DATABASE_URL": db_url,
        "PERCH_EDGE_SECRET": SECRET,
        "PERCH_ADMIN_TOKEN": "admin-token-0123456789",
        "PERCH_UNIT_SALT": UNIT_KEY,
        "PERCH_DATA_DIR": str(data_dir),
    }
    return start_perch(["consume", "--queue-dir", str(queue_dir), *extra], env, data_dir / "consume.log")


@pytest.mark.process
def test_consumers_killed_mid_group_and_redeliveries_leave_every_event_counted_once(
    hero: Store, db_url: str, tmp_path: Path
) -> None:
    queue = DirectoryQueue(tmp_path / "q")
    events = traffic(6000, seed=7)
    sent = enqueue(queue, events, per_message=20)
    rng = random.Random(8)
    queue.send_batch([m for m in sent if rng.random() < 0.1])  # 10 % redelivered
    args = ("--max-events", "400", "--visibility-timeout", "2")
    # Two consumers at once; one is killed with SIGKILL as soon as groups are being committed,
    # holding leases (and likely a transaction) of its own.
    victim = _consume_process(db_url, queue.path, tmp_path / "a", *args)
    other = _consume_process(db_url, queue.path, tmp_path / "b", *args)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with hero.engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(exposures)).scalar() or 0
        if stored > 300:
            break
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert stored < 6000, "the victim should die with work left"
    while "perch consume:" not in (tmp_path / "b" / "consume.log").read_text():  # its SIGTERM handler is set
        assert other.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    other.send_signal(signal.SIGTERM)  # ends its group properly
    assert other.wait(timeout=60) == 0, (tmp_path / "b" / "consume.log").read_text()
    time.sleep(2.1)  # the victim's leases expire
    last = _consume_process(db_url, queue.path, tmp_path / "c", "--until-empty")
    assert last.wait(timeout=120) == 0, (tmp_path / "c" / "consume.log").read_text()
    assert queue.depth().total == 0
    check_exact(hero, events)


def test_consumers_forget_old_message_signatures(hero: Store, tmp_path: Path) -> None:
    # One row per message would otherwise pile up forever at thousands of messages a second.
    from control_plane.storage.schema import seen_batches

    with hero.engine.begin() as conn:
        conn.execute(seen_batches.insert().values(signature="0" * 64, ts=(NOW - 3_600_000) // 1000))
    queue = DirectoryQueue(tmp_path / "q")
    enqueue(queue, traffic(30, seed=9))
    consumer(hero, queue).run(until_empty=True)
    with hero.engine.connect() as conn:
        kept = set(conn.execute(select(seen_batches.c.signature)).scalars())
    assert "0" * 64 not in kept and len(kept) == 1  # the new message's, for replays within 15 min
