"""``perch consume``: event batches from a queue into the store, one transaction per group.

The edge's queue sink (edge.outbox) sends signed batches as queue messages (core.queue); a
consumer pulls them from a :class:`~control_plane.events.queues.MessageSource` (Cloudflare's HTTP pull
API, or a local directory queue), stores a group of up to ``max_events`` events in one
transaction (control_plane.events.group_commit), and acknowledges the messages only after that
transaction commits. So:

* a consumer that crashes (or is killed) before its ack loses nothing: the leases expire, the
  messages come back, and every event is idempotent by its id, so nothing counts twice;
* a message that can never be used (forged, not a batch) is acknowledged and counted, never
  retried forever, and never stops the others;
* several consumers may run at once, on one queue or on several.

Outcomes are routed by decision id (core.queue.route), so with one consumer per queue each
decision's outcomes are credited by exactly one consumer, in order.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from control_plane.events.group_commit import Batch, ReplayedBatch, ingest_group, ingest_merged
from control_plane.events.ingest import IngestResult, verified_tokens
from control_plane.events.queues import Message, MessageSource, QueueError
from control_plane.storage.store import Store
from core import EventError, MessageError, parse_batch, parse_message

__all__ = ["ConsumeStats", "Consumer"]

log = logging.getLogger("perch.consume")


@dataclass
class ConsumeStats:
    """What a consumer did, for its log line and for tests."""

    messages: int = 0
    groups: int = 0
    events: Counter[str] = field(default_factory=Counter)  # accepted per type
    duplicates: int = 0
    replayed_messages: int = 0  # whole messages already stored (a redelivery after the commit)
    bad_messages: int = 0  # not a signed batch: acknowledged, counted, never stored
    rejected_events: int = 0  # refused one by one by the schema
    failed_groups: int = 0  # the store refused a group: its messages come back after the lease

    @property
    def accepted(self) -> int:
        return sum(self.events.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "groups": self.groups,
            "accepted": dict(self.events),
            "duplicates": self.duplicates,
            "replayed_messages": self.replayed_messages,
            "bad_messages": self.bad_messages,
            "rejected_events": self.rejected_events,
            "failed_groups": self.failed_groups,
        }


@dataclass
class Consumer:
    store: Store
    source: MessageSource
    secret: str
    max_events: int = 5_000
    visibility_timeout_s: float = 120.0
    # Backoff while the queue is empty: from ``idle_min_s`` doubling to ``idle_max_s``.
    idle_min_s: float = 0.05
    idle_max_s: float = 2.0
    now_ms: Callable[[], int] = field(default=lambda: int(time.time() * 1000))
    sleep: Callable[[float], None] = time.sleep
    stats: ConsumeStats = field(default_factory=ConsumeStats)
    report_every_s: float = 60.0
    # Learnt from the messages pulled; an edge message holds a few hundred events when busy.
    events_per_message: float = 100.0
    # Where a group goes instead of the store's own tables (control_plane.events.clickhouse_sink);
    # None: the store's database, one transaction per group.
    sink: Callable[[list[Batch]], tuple[IngestResult, list[Batch]] | None] | None = None
    # Called between groups (``perch consume --publish``: learn and publish from this process, which
    # chDB needs, since it serves one process per data path).
    between: Callable[[bool], None] | None = None  # its argument: the consumer is about to stop

    def _gather(self) -> tuple[list[Message], list[Batch], list[str]]:
        """Pull until the group holds ``max_events`` events or the queue has no more right now."""
        messages: list[Message] = []
        batches: list[Batch] = []
        useless: list[str] = []
        events = 0
        while events < self.max_events:
            # As many messages as should fill the group, by the events per message seen so far:
            # leases taken beyond it would wait for the next group's commit.
            per_message = events / len(messages) if messages else self.events_per_message
            wanted = min(100, max(1, math.ceil((self.max_events - events) / max(per_message, 1.0))))
            pulled = self.source.pull(wanted, self.visibility_timeout_s)
            if not pulled:
                break
            messages.extend(pulled)
            for message in pulled:
                batch = self._batch(message)
                if batch is None:
                    useless.append(message.lease)
                else:
                    batches.append(batch)
                    events += len(batch.events)
        if messages:
            self.events_per_message = max(events / len(messages), 1.0)
        return messages, batches, useless

    def _batch(self, message: Message) -> Batch | None:
        try:
            key, body = parse_message(self.secret, message.body)
            valid, rejected = parse_batch(body)
        except (MessageError, EventError) as exc:
            self.stats.bad_messages += 1
            log.warning("message %s skipped: %s", message.id, exc)
            return None
        self.stats.rejected_events += len(rejected)
        tokens = verified_tokens(self.secret, valid)
        return Batch(valid, key, self.now_ms(), lease=message.lease, tokens=tokens)

    def step(self) -> int:
        """Pull, store and acknowledge one group; the number of messages handled (0: queue empty)."""
        messages, batches, useless = self._gather()
        if not messages:
            return 0
        self.stats.messages += len(messages)
        done = list(useless)
        if batches:
            self.stats.groups += 1
            merged = ingest_merged(self.store, batches) if self.sink is None else self.sink(batches)
            if merged is not None:
                result, replayed = merged
                self.stats.events.update(result.accepted)
                self.stats.duplicates += result.duplicates
                self.stats.replayed_messages += len(replayed)
                done.extend(b.lease for b in batches if b.lease is not None)
            elif self.sink is None:
                done.extend(self._one_by_one(batches))
            else:
                self.stats.failed_groups += 1  # not acknowledged: the messages come back after the lease
        if done:
            self.source.ack(done)
        return len(messages)

    def _one_by_one(self, batches: list[Batch]) -> list[str]:
        """The leases of the batches stored (or already stored) when the group as one failed."""
        done = []
        for batch, outcome in zip(batches, ingest_group(self.store, batches), strict=True):
            if isinstance(outcome, ReplayedBatch):
                self.stats.replayed_messages += 1
            elif isinstance(outcome, Exception):
                # Not acknowledged: it comes back when its lease expires (the store may be
                # down; a batch it can never take is retried until the queue's own limit).
                self.stats.failed_groups += 1
                log.error("message could not be stored, left for redelivery: %s", outcome)
                continue
            else:
                self.stats.events.update(outcome.accepted)
                self.stats.duplicates += outcome.duplicates
            if batch.lease is not None:
                done.append(batch.lease)
        return done

    def run(self, *, until_empty: bool = False, stop: Callable[[], bool] = lambda: False) -> ConsumeStats:
        """Consume until ``stop()`` (or, with ``until_empty``, until a pull comes back empty)."""
        idle = self.idle_min_s
        reported = time.monotonic()
        while not stop():
            if self.between is not None:
                self.between(False)
            if time.monotonic() - reported >= self.report_every_s:
                # A long-running consumer's progress, for its log (the final counts go to stdout).
                log.info("consumed so far: %s", self.stats.to_dict())
                reported = time.monotonic()
            try:
                handled = self.step()
            except QueueError as exc:
                if not exc.retriable:
                    raise
                log.warning("queue unavailable, backing off %.1fs: %s", idle, exc)
                handled = 0
            if handled:
                idle = self.idle_min_s
                continue
            if until_empty:
                if self.between is not None:
                    self.between(True)
                break
            self.sleep(idle)
            idle = min(idle * 2, self.idle_max_s)
        return self.stats
