"""The directory queue of `perch consume` and `perch edge dev`, within one process and across several."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from control_plane.events.queues import (
    DirectoryQueue,
    Message,
    MessageSource,
    QueueDepth,
)
from core.queue import MAX_MESSAGE_BYTES

# ---------------------------------------------------------------------------------------------
# DirectoryQueue, in one process


class Clock:
    """Wall-clock stand-in for the lease expiry, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_780_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(tmp_path: Path, clock: Clock) -> DirectoryQueue:
    return DirectoryQueue(tmp_path / "q", clock=clock)


def bodies(messages: list[Message]) -> list[str]:
    return [m.body.decode("utf-8") for m in messages]


def test_send_pull_ack_round_trip(queue: DirectoryQueue) -> None:
    sent = ["t=1,v1=ab\n{}", "zweite Nachricht \N{SNOWMAN}"]
    queue.send_batch(sent)
    assert queue.depth() == QueueDepth(ready=2, leased=0)
    got = queue.pull()
    assert bodies(got) == sent
    assert [m.attempts for m in got] == [1, 1]
    assert len({m.id for m in got}) == 2 and len({m.lease for m in got}) == 2
    assert queue.depth() == QueueDepth(ready=0, leased=2)
    queue.ack([m.lease for m in got])
    assert queue.depth().total == 0
    assert queue.pull() == []
    assert os.listdir(queue.tmp) == []


def test_directory_queue_is_a_message_source(queue: DirectoryQueue) -> None:
    assert isinstance(queue, MessageSource)


def test_oldest_first_and_at_most_max_messages(queue: DirectoryQueue) -> None:
    for i in range(4):
        queue.send_batch([f"m{i}a", f"m{i}b"])
    assert bodies(queue.pull(max_messages=3)) == ["m0a", "m0b", "m1a"]
    assert bodies(queue.pull(max_messages=1)) == ["m1b"]
    assert bodies(queue.pull(max_messages=100)) == ["m2a", "m2b", "m3a", "m3b"]


def test_a_leased_message_is_not_delivered_again_while_the_lease_holds(
    queue: DirectoryQueue, clock: Clock
) -> None:
    queue.send_batch(["one", "two"])
    first = queue.pull(max_messages=1, visibility_timeout_s=30)
    assert bodies(first) == ["one"]
    clock.now += 29.9
    assert bodies(queue.pull(visibility_timeout_s=30)) == ["two"]
    assert queue.pull() == []
    assert queue.depth() == QueueDepth(ready=0, leased=2)


def test_an_expired_lease_is_delivered_again_with_attempts_2(queue: DirectoryQueue, clock: Clock) -> None:
    queue.send_batch(["crashy"])
    (first,) = queue.pull(visibility_timeout_s=30)
    clock.now += 30.0
    (again,) = queue.pull(visibility_timeout_s=30)
    assert (again.id, again.body, again.attempts) == (first.id, b"crashy", 2)
    assert again.lease != first.lease
    clock.now += 31.0
    (third,) = queue.pull()
    assert third.attempts == 3


def test_ack_of_a_stale_lease_is_a_no_op_and_the_message_still_delivered(
    queue: DirectoryQueue, clock: Clock
) -> None:
    queue.send_batch(["slow"])
    (old,) = queue.pull(visibility_timeout_s=10)
    clock.now += 11
    (new,) = queue.pull(visibility_timeout_s=10)  # another consumer's, after the old lease ended
    queue.ack([old.lease])
    queue.retry([old.lease])
    assert queue.depth() == QueueDepth(ready=0, leased=1)
    clock.now += 11
    (redelivered,) = queue.pull()
    assert (redelivered.id, redelivered.body, redelivered.attempts) == (new.id, b"slow", 3)
    queue.ack([redelivered.lease])
    assert queue.depth().total == 0


def test_ack_twice_is_harmless(queue: DirectoryQueue) -> None:
    queue.send_batch(["x", "y"])
    got = queue.pull(max_messages=1)
    queue.ack([got[0].lease])
    queue.ack([got[0].lease])
    assert bodies(queue.pull()) == ["y"]


def test_retry_puts_the_message_back_at_once(queue: DirectoryQueue) -> None:
    queue.send_batch(["a", "b"])
    got = queue.pull()
    queue.retry([got[0].lease])
    (back,) = queue.pull()
    assert (back.id, back.body, back.attempts) == (got[0].id, b"a", 2)
    queue.ack([got[0].lease])  # the retried lease is gone: this acks nothing
    assert queue.depth() == QueueDepth(ready=0, leased=2)


def test_retry_with_a_delay_waits_that_long(queue: DirectoryQueue, clock: Clock) -> None:
    queue.send_batch(["later"])
    (got,) = queue.pull(visibility_timeout_s=5)
    queue.retry([got.lease], delay_s=60)
    clock.now += 59
    assert queue.pull() == []
    clock.now += 1
    (back,) = queue.pull()
    assert (back.id, back.attempts) == (got.id, 2)


def test_a_retried_message_keeps_its_place_before_newer_ones(queue: DirectoryQueue) -> None:
    queue.send_batch(["old"])
    (got,) = queue.pull()
    queue.send_batch(["new"])
    queue.retry([got.lease])
    assert bodies(queue.pull()) == ["old", "new"]


def test_leases_that_are_not_ours_are_refused_before_anything_is_done(queue: DirectoryQueue) -> None:
    queue.send_batch(["keep"])
    (got,) = queue.pull()
    ready_name = os.listdir(queue.leased)[0]
    for bad in ["../ready/x.0.msg", "", "lease-id-from-cloudflare", f"../leased/{ready_name}"]:
        with pytest.raises(ValueError, match="not a directory-queue lease"):
            queue.ack([got.lease, bad])
    assert queue.depth() == QueueDepth(ready=0, leased=1)
    with pytest.raises(ValueError):
        queue.retry([got.lease, "nope"])
    assert queue.depth() == QueueDepth(ready=0, leased=1)


def test_bad_arguments(queue: DirectoryQueue) -> None:
    with pytest.raises(ValueError, match="max_messages"):
        queue.pull(max_messages=0)
    with pytest.raises(ValueError, match="visibility"):
        queue.pull(visibility_timeout_s=0)
    with pytest.raises(ValueError, match="delay_s"):
        queue.retry([], delay_s=-1)


def test_an_oversize_message_is_refused_before_anything_is_written(queue: DirectoryQueue) -> None:
    with pytest.raises(ValueError, match="message 1 is"):
        queue.send_batch(["fine", "x" * (MAX_MESSAGE_BYTES + 1)])
    assert queue.depth().total == 0
    queue.send_batch(["x" * MAX_MESSAGE_BYTES])
    assert queue.depth().ready == 1


def test_files_foreign_to_the_queue_are_ignored(queue: DirectoryQueue) -> None:
    (queue.ready / "notes.txt").write_text("hi")
    (queue.leased / "junk.lease").write_text("hi")
    queue.send_batch(["real"])
    assert queue.depth() == QueueDepth(ready=1, leased=0)
    assert bodies(queue.pull()) == ["real"]


def test_asend_batch_enqueues_like_send_batch(queue: DirectoryQueue) -> None:
    asyncio.run(queue.asend_batch(["from", "async"]))
    assert bodies(queue.pull()) == ["from", "async"]


def test_a_second_handle_on_the_directory_sees_the_same_queue(tmp_path: Path, clock: Clock) -> None:
    producer = DirectoryQueue(tmp_path / "shared", clock=clock)
    consumer = DirectoryQueue(tmp_path / "shared", clock=clock)
    producer.send_batch(["hello"])
    (got,) = consumer.pull()
    producer.ack([got.lease])
    assert consumer.depth().total == 0


# ---------------------------------------------------------------------------------------------
# DirectoryQueue, across processes


def _drain(path: str, out: str, done: Any, start: Any) -> None:
    """A consumer process: pull, record, ack, until the producer is done and the queue empty."""
    queue = DirectoryQueue(path)
    start.wait()
    with open(out, "w", encoding="utf-8") as f:
        while True:
            got = queue.pull(max_messages=25, visibility_timeout_s=120)
            if not got:
                if done.is_set() and queue.depth().total == 0:
                    return
                time.sleep(0.001)
                continue
            for m in got:
                f.write(f"{m.id} {m.attempts} {m.body.decode('utf-8')}\n")
            f.flush()
            queue.ack([m.lease for m in got])


@pytest.mark.process
def test_three_processes_drain_2000_messages_exactly_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    path = tmp_path / "q"
    queue = DirectoryQueue(path)
    done, start = ctx.Event(), ctx.Event()
    outs = [tmp_path / f"consumer-{i}.txt" for i in range(3)]
    procs = [ctx.Process(target=_drain, args=(str(path), str(o), done, start)) for o in outs]
    for p in procs:
        p.start()
    sent = [f"message {i}" for i in range(2_000)]
    queue.send_batch(sent[:200])
    start.set()
    for i in range(200, 2_000, 100):  # the rest while the consumers drain
        queue.send_batch(sent[i : i + 100])
    done.set()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    lines = [line.split(" ", 2) for o in outs for line in o.read_text(encoding="utf-8").splitlines()]
    assert sorted(body for _, _, body in lines) == sorted(sent)  # none lost, none twice
    assert len({mid for mid, _, _ in lines}) == 2_000
    assert {attempts for _, attempts, _ in lines} == {"1"}
    assert all(o.read_text(encoding="utf-8") for o in outs), "every consumer took a share"
    assert queue.depth().total == 0


def _pull_and_hang(path: str, out: str) -> None:
    queue = DirectoryQueue(path)
    got = queue.pull(max_messages=2, visibility_timeout_s=0.5)
    Path(out).write_text(" ".join(m.id for m in got), encoding="utf-8")
    time.sleep(600)


@pytest.mark.process
def test_a_consumer_killed_before_its_ack_has_its_messages_redelivered(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = DirectoryQueue(tmp_path / "q")
    queue.send_batch(["a", "b", "c"])
    marker = tmp_path / "pulled.txt"
    proc = ctx.Process(target=_pull_and_hang, args=(str(queue.path), str(marker)))
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text(encoding="utf-8")) and time.monotonic() < deadline:
            time.sleep(0.01)
        taken = marker.read_text(encoding="utf-8").split()
        assert len(taken) == 2
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL
    assert bodies(queue.pull()) == ["c"]  # the dead consumer's leases still hold
    time.sleep(0.6)
    again = queue.pull()
    assert [m.id for m in again] == taken
    assert bodies(again) == ["a", "b"]
    assert [m.attempts for m in again] == [2, 2]
