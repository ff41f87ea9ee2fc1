"""Events waiting to go home: one outbox per isolate, drained in the background.

Exposures, outcomes and stitches of an isolate's requests ride in one signed batch per drain
(``X-Perch-Signature``, see :mod:`core.signing`) to the control plane's ``/v1/events``; a failing
network is retried a few times and never delays a page.

With event queues (the platform's ``PERCH_EVENTS_*`` Queues producer bindings), a drain instead
becomes signed text messages (:func:`core.pack_messages`), each queue's in as few ``sendBatch``
calls as the limits allow (:func:`core.send_batches`), for ``perch consume`` at the origin. Events
of a call that Queues refuse take today's signed POST instead, so a Queues outage loses nothing
the control plane can take.

What became of the events is counted for ``/v1/health``: sent to a queue, delivered by POST,
refused one by one by the control plane, or dropped.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from core import (
    SIGNATURE_HEADER,
    JSONInputError,
    encode_batch,
    pack_messages,
    parse_json,
    send_batches,
    sign,
)
from edge.config import EdgeConfig, Var
from edge.platform import Platform

__all__ = ["MAX_EVENTS_PER_BATCH", "SEND_ATTEMPTS", "Outbox", "send_events"]

log = logging.getLogger("perch.edge")

MAX_EVENTS_PER_BATCH = 1000
SEND_ATTEMPTS = 3
_JSON = "application/json"


class Outbox:
    """Events waiting to go home, shared by the requests of one isolate.

    The first request that has events schedules a drain through its
    ``waitUntil``; events of requests that come before the drain runs ride
    along in the same signed batch.  ``event_linger_ms`` holds the drain back
    a little to gather more (by default 0 for the POST, 200 ms with queues).
    """

    def __init__(self) -> None:
        self.queue: list[dict[str, Any]] = []
        self.scheduled = False
        # What became of this isolate's events, for /v1/health: a dropped batch is
        # otherwise only a log line, and operators need to see lost exposures.
        self.delivered = 0
        self.dropped = 0
        self.rejected = 0  # stored by nobody: the control plane refused them one by one
        # The queue path. `delivered` counts POSTs only: a queue's events are stored later,
        # by `perch consume`, which has its own counts.
        self.queues = 0  # event queues the last drain saw
        self.queue_messages = 0
        self.queue_events = 0
        self.queue_errors = 0  # sendBatch calls that failed
        self.fallbacks = 0  # events of those calls, sent by POST instead

    def add(self, platform: Platform, config: EdgeConfig, events: list[dict[str, Any]]) -> None:
        self.queue.extend(events)
        if not self.scheduled:
            self.scheduled = True
            platform.wait_until(self._drain(platform, config))

    async def _drain(self, platform: Platform, config: EdgeConfig) -> None:
        queues = len(platform.queue_names())
        linger_ms = config.linger_ms(queues > 0)
        if linger_ms:
            await asyncio.sleep(linger_ms / 1000)
        self.scheduled = False
        batch, self.queue = self.queue, []
        self.queues = queues
        # Unsigned messages would be refused by the consumer: without the secret the POST path
        # drops them, and says why.
        if queues and config.edge_secret:
            batch = await self._enqueue(platform, config.edge_secret, queues, batch)
            self.fallbacks += len(batch)
        await self._post(platform, config, batch)

    async def _enqueue(
        self, platform: Platform, secret: str, queues: int, batch: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Send ``batch`` to the event queues; returns the events of the calls that failed."""
        per_queue = pack_messages(
            secret,
            batch,
            now_s=platform.now_ms() // 1000,
            batch_id=secrets.token_hex(16),  # names the messages in the consumer's log
            queues=queues,
        )
        failed: list[dict[str, Any]] = []
        carried = 0
        for index, messages in enumerate(per_queue):
            for group in send_batches(messages):
                events = [event for message in group for event in message.events]
                carried += len(events)
                try:
                    await platform.queue_send(index, [message.text for message in group])
                except Exception as exc:  # Queues may fail; the POST below takes over
                    self.queue_errors += 1
                    failed += events
                    log.warning(
                        "event queue %d refused %d messages (%s: %s): sending their %d events by POST",
                        index,
                        len(group),
                        type(exc).__name__,
                        exc,
                        len(events),
                    )
                else:
                    self.queue_messages += len(group)
                    self.queue_events += len(events)
        if carried < len(batch):  # too large for any message (the edge's own events never are)
            log.warning("dropping %d events too large for a queue message", len(batch) - carried)
            self.dropped += len(batch) - carried
        return failed

    async def _post(self, platform: Platform, config: EdgeConfig, batch: list[dict[str, Any]]) -> None:
        for start in range(0, len(batch), MAX_EVENTS_PER_BATCH):
            part = batch[start : start + MAX_EVENTS_PER_BATCH]
            refused = await send_events(platform, config, part)
            if refused is None:
                self.dropped += len(part)
            else:
                self.delivered += len(part) - refused
                self.rejected += refused

    def health(self) -> dict[str, int | float]:
        return {
            "queued": len(self.queue),
            "delivered": self.delivered,
            "rejected": self.rejected,
            "dropped": self.dropped,
            "queues": self.queues,
            "queue_messages": self.queue_messages,
            "queue_events": self.queue_events,
            "events_per_message": round(self.queue_events / self.queue_messages, 2)
            if self.queue_messages
            else 0.0,
            "queue_errors": self.queue_errors,
            "fallbacks": self.fallbacks,
        }


def _refused(answer: bytes) -> int:
    """How many events of an accepted batch the control plane refused one by one."""
    try:
        doc = parse_json(answer)
    except JSONInputError:
        return 0
    rejected = doc.get("rejected") if isinstance(doc, dict) else None
    return len(rejected) if isinstance(rejected, list) else 0


async def send_events(platform: Platform, config: EdgeConfig, events: list[dict[str, Any]]) -> int | None:
    """POST a signed batch to the control plane, retrying; never raises.

    The number of events the control plane refused one by one, or None if the batch was lost.
    """
    if not config.control_plane_url or not config.edge_secret:
        log.warning(
            "dropping %d events: %s or %s not set", len(events), Var.CONTROL_PLANE_URL, Var.EDGE_SECRET
        )
        return None
    body = encode_batch(events)
    url = f"{config.control_plane_url}/v1/events"
    for attempt in range(SEND_ATTEMPTS):
        headers = {
            "content-type": _JSON,
            SIGNATURE_HEADER: sign(config.edge_secret, body, platform.now_ms() // 1000),
        }
        try:
            status, answer = await platform.post(url, body, headers)
        except Exception as exc:  # the network is allowed to fail; the page already went out
            status, reason = 0, f"{type(exc).__name__}: {exc}"
        else:
            reason = f"HTTP {status}"
            if status == 409:  # this very batch was stored already (our acknowledgement got lost)
                return 0
            if status < 300:
                refused = _refused(answer)
                if refused:
                    log.warning("the control plane refused %d of %d events", refused, len(events))
                return refused
            if 400 <= status < 500 and status != 429:
                break  # the batch itself is refused: resending cannot help
        if attempt + 1 < SEND_ATTEMPTS:
            await asyncio.sleep(0.2 * 4**attempt)
    log.warning("dropping %d events after %d attempts: %s", len(events), attempt + 1, reason)
    return None
