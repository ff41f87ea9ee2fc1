"""Group commit for event ingestion: batches that arrive together share one transaction.

Every acknowledged batch must be on disk, so each transaction ends in an fsync
(SQLite ``synchronous=FULL``; PostgreSQL's WAL flush). When every edge request
posts its own small batch, that fsync, not the SQL, bounds how many events per
second one control plane takes. :class:`IngestWriter` lets the batches that
arrive while a commit is in flight queue up, then stores them all in the next
transaction and answers each only after that transaction commits: the same
guarantee as one transaction per batch, with one fsync for many batches.

A group must never let one batch fail another. Replayed signatures, the one
failure a well-formed batch can meet, are found before writing; if the group's
transaction fails anyway, every batch in it is retried in a transaction of its
own, so only the batch at fault gets the error.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select
from starlette.concurrency import run_in_threadpool

from control_plane.events.ingest import Cells, IngestResult, ingest, ingest_into, remember_batches
from control_plane.storage.schema import seen_batches
from control_plane.storage.store import Store
from core import DecisionToken, PerchError

__all__ = ["IngestWriter", "ReplayedBatch", "ingest_group", "ingest_merged"]

log = logging.getLogger("perch.ingest")


class ReplayedBatch(PerchError):
    """A batch whose signature was already accepted."""


@dataclass(frozen=True, slots=True)
class Batch:
    events: list[dict[str, Any]]
    signature: str | None
    now_ms: int
    lease: str | None = None  # the queue message it came in (control_plane.events.consume)
    tokens: Mapping[str, DecisionToken] | None = None  # ingest.verified_tokens of its outcomes


Outcome = IngestResult | Exception


def ingest_group(store: Store, batches: list[Batch]) -> list[Outcome]:
    """Store ``batches`` in one transaction; per batch, its result or the error that refused it."""
    if len(batches) == 1:
        return [_alone(store, batches[0])]
    try:
        with store.ingest_write() as conn:
            replayed = _replayed(conn, batches)
            out: list[Outcome] = []
            # One set of cell deltas for the group, appended last, and each counter row bumped
            # once, in sorted order, whatever the batches touched.
            cells = Cells()
            for batch, again in zip(batches, replayed, strict=True):
                if again:
                    out.append(ReplayedBatch("this batch was already accepted (replayed signature)"))
                    continue
                out.append(
                    ingest_into(
                        store,
                        conn,
                        batch.events,
                        batch.signature,
                        batch.now_ms,
                        cells=cells,
                        tokens=batch.tokens,
                    )
                )
            cells.flush(store, conn)
        return out
    except Exception:
        # Nothing of the group was committed: each batch again, alone, so only a faulty one fails.
        return [_alone(store, batch) for batch in batches]


def _replayed(conn: Connection, batches: list[Batch]) -> list[bool]:
    """Per batch: was it stored already (its signature seen before, or earlier in this group)?"""
    keys = [b.signature for b in batches if b.signature is not None]
    taken = set(
        conn.execute(select(seen_batches.c.signature).where(seen_batches.c.signature.in_(keys))).scalars()
    )
    out = []
    for batch in batches:
        out.append(batch.signature is not None and batch.signature in taken)
        if batch.signature is not None:
            taken.add(batch.signature)
    return out


def ingest_merged(store: Store, batches: list[Batch]) -> tuple[IngestResult, list[Batch]] | None:
    """Store ``batches`` as one: one transaction, one set of statements for all their events.

    For the queue consumer, which answers nobody per batch: a few statements per group rather
    than per message. Returns the result and the batches skipped as replays (already stored
    whole), or None if the transaction failed (then :func:`ingest_group` finds the batch at fault).
    """
    try:
        with store.ingest_write() as conn:
            again = _replayed(conn, batches)
            fresh = [b for b, r in zip(batches, again, strict=True) if not r]
            replayed = [b for b, r in zip(batches, again, strict=True) if r]
            now = max((b.now_ms for b in fresh), default=0)
            seen = sorted({b.signature for b in fresh if b.signature is not None})
            if seen:
                remember_batches(store, conn, seen, now)
            events = [e for b in fresh for e in b.events]
            tokens = {i: t for b in fresh for i, t in (b.tokens or {}).items()}
            result = ingest_into(store, conn, events, None, now, tokens=tokens)
        return result, replayed
    except Exception:
        log.warning("a merged group failed; storing its batches one by one", exc_info=True)
        return None


def _alone(store: Store, batch: Batch) -> Outcome:
    try:
        return ingest(store, batch.events, batch.signature, batch.now_ms, tokens=batch.tokens)
    except Exception as exc:
        return exc


class IngestWriter:
    """Queues batches from concurrent requests and commits them in groups, in order of arrival.

    Lives in one event loop (the app's, under uvicorn): ``submit`` is awaited
    by request handlers, and one drain task at a time hands groups to a worker
    thread.  Should the loop change (a test client run after another), the
    queue starts afresh in the new one.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_events: int = 5_000,
        on_commit: Callable[[int, int], None] | None = None,
    ) -> None:
        self.store = store
        self.max_events = max_events
        self.on_commit = on_commit  # (batches, events) of each group, for metrics
        self._queue: deque[tuple[Batch, asyncio.Future[IngestResult]]] = deque()
        self._drain_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(
        self,
        events: list[dict[str, Any]],
        signature: str | None,
        now_ms: int,
        tokens: Mapping[str, DecisionToken] | None = None,
    ) -> IngestResult:
        """Store one batch; returns once it is committed, or raises what refused it."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._queue, self._drain_task = loop, deque(), None
        future: asyncio.Future[IngestResult] = loop.create_future()
        self._queue.append((Batch(events, signature, now_ms, tokens=tokens), future))
        if self._drain_task is None or self._drain_task.done():
            self._drain_task = asyncio.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[Batch, asyncio.Future[IngestResult]]]:
        group: list[tuple[Batch, asyncio.Future[IngestResult]]] = []
        size = 0
        while self._queue and (not group or size + len(self._queue[0][0].events) <= self.max_events):
            item = self._queue.popleft()
            group.append(item)
            size += len(item[0].events)
        return group

    async def _drain(self) -> None:
        while self._queue:
            group = self._take()
            outcomes: list[Outcome] = []
            try:
                outcomes = await run_in_threadpool(ingest_group, self.store, [b for b, _ in group])
            finally:
                # Every waiter gets an answer, whatever happened here; without an outcome (the
                # thread call itself failed or was cancelled) nothing is acknowledged.
                failed = RuntimeError("the batch could not be stored; resend it")
                for i, (_, future) in enumerate(group):
                    if future.done():  # the client went away; a stored batch stays stored
                        continue
                    outcome = outcomes[i] if i < len(outcomes) else failed
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
            if self.on_commit is not None:
                try:
                    self.on_commit(len(group), sum(len(b.events) for b, _ in group))
                except Exception:  # metrics must never stop ingestion
                    log.exception("group commit metrics failed")
