"""Events waiting to go home: one outbox per isolate, drained in the background.

Exposures, outcomes and stitches of an isolate's requests ride in one signed batch per drain
(``X-Perch-Signature``, see :mod:`core.signing`) to the control plane's ``/v1/events``; a failing
network is retried a few times and never delays a page. What became of them is counted for
``/v1/health``: delivered, refused one by one by the control plane, or dropped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from core import SIGNATURE_HEADER, JSONInputError, encode_batch, parse_json, sign
from edge.config import EdgeConfig
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
    a little to gather more (the local runner uses it; on Workers it is 0).
    """

    def __init__(self) -> None:
        self.queue: list[dict[str, Any]] = []
        self.scheduled = False
        # What became of this isolate's events, for /v1/health: a dropped batch is
        # otherwise only a log line, and operators need to see lost exposures.
        self.delivered = 0
        self.dropped = 0
        self.rejected = 0  # stored by nobody: the control plane refused them one by one

    def add(self, platform: Platform, config: EdgeConfig, events: list[dict[str, Any]]) -> None:
        self.queue.extend(events)
        if not self.scheduled:
            self.scheduled = True
            platform.wait_until(self._drain(platform, config))

    async def _drain(self, platform: Platform, config: EdgeConfig) -> None:
        if config.event_linger_ms:
            await asyncio.sleep(config.event_linger_ms / 1000)
        self.scheduled = False
        batch, self.queue = self.queue, []
        for start in range(0, len(batch), MAX_EVENTS_PER_BATCH):
            part = batch[start : start + MAX_EVENTS_PER_BATCH]
            refused = await send_events(platform, config, part)
            if refused is None:
                self.dropped += len(part)
            else:
                self.delivered += len(part) - refused
                self.rejected += refused

    def health(self) -> dict[str, int]:
        return {
            "queued": len(self.queue),
            "delivered": self.delivered,
            "rejected": self.rejected,
            "dropped": self.dropped,
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
        log.warning("dropping %d events: CONTROL_PLANE_URL or PERCH_EDGE_SECRET not set", len(events))
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
