"""Cloudflare Queues as a source of ``perch consume``: the HTTP pull consumer API over httpx.

:class:`CloudflareQueue` is Cloudflare Queues' HTTP pull consumer, as documented in
developers.cloudflare.com/queues/configuration/pull-consumers/ (cloudflare-docs
``src/content/docs/queues/configuration/pull-consumers.mdx``), the REST API schema
(``MessagePullParams``/``MessageAckParams`` in the generated cloudflare-typescript SDK) and
/queues/platform/limits/:

- ``POST /accounts/{account_id}/queues/{queue_id}/messages/pull``, JSON
  ``{"batch_size": ..., "visibility_timeout_ms": ...}``. ``batch_size`` defaults to 5, at most
  100; the visibility timeout defaults to 30 s, at most 12 hours. (The guide's prose and curl
  examples say ``visibility_timeout``, the API schema ``visibility_timeout_ms``; we send the
  schema's name.) Short polling: an empty queue answers at once with no messages.
- The answer's ``result.messages[]`` carry ``id``, ``body``, ``timestamp_ms``, ``attempts``
  (deliveries, passed on as is: 1 on the first, as for Workers consumers; the pull page does not
  say), ``lease_id`` and ``metadata`` with ``CF-Content-Type``. Bodies of ``text`` messages
  arrive as plain UTF-8 strings; ``json`` and ``bytes`` bodies are base64 (RFC 4648), though the
  page's own example shows a plain ``json`` body, so a body that is not base64 is kept as it came;
  ``v8`` cannot be decoded outside Workers. The edge must send ``contentType: "text"``.
- ``POST .../messages/ack`` with ``{"acks": [{"lease_id"}], "retries": [{"lease_id",
  "delay_seconds"}]}``; retry delays are at most 24 hours. An unacked lease expires with the
  visibility timeout, and the message is delivered again.
- Authentication: ``Authorization: Bearer <token>``, a token with Queues read and write.
- Errors come as ``{"success": false, "errors": [{"code", "message"}]}``.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import httpx

from control_plane.distribution.kv_publishers import cloudflare_errors, retry_after
from control_plane.events.queues import Message, QueueError, check_pull

__all__ = [
    "CLOUDFLARE_MAX_BATCH",
    "CLOUDFLARE_MAX_RETRY_DELAY_S",
    "CLOUDFLARE_MAX_VISIBILITY_S",
    "CloudflareQueue",
]

log = logging.getLogger("perch.queues")

CLOUDFLARE_MAX_BATCH = 100
CLOUDFLARE_MAX_VISIBILITY_S = 12 * 3600
CLOUDFLARE_MAX_RETRY_DELAY_S = 24 * 3600


class CloudflareQueue:
    """A Cloudflare Queue through its HTTP pull consumer API (a token with Queues read + write).

    Requests are not retried here: a :class:`QueueError` says whether it is ``retriable``, and
    ``perch consume`` owns the backoff. Leases ``ack`` and ``retry`` send go in requests of at most
    100 (our choice, matching a pull; the docs state no limit).
    """

    def __init__(
        self,
        account_id: str,
        queue_id: str,
        api_token: str,
        *,
        client: httpx.Client | None = None,
        base_url: str = "https://api.cloudflare.com/client/v4",
        timeout_s: float = 30.0,
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/accounts/{account_id}/queues/{queue_id}/messages"
        self._headers = {"Authorization": f"Bearer {api_token}", "Content-Type": "application/json"}
        # Sent with every request, so a client passed in gets explicit timeouts too.
        self._timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=self._timeout)

    def __repr__(self) -> str:
        return f"CloudflareQueue({self.url!r})"

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> CloudflareQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pull(self, max_messages: int = 100, visibility_timeout_s: float = 60.0) -> list[Message]:
        """Lease at most ``min(max_messages, 100)`` messages; none when the queue is empty."""
        check_pull(max_messages, visibility_timeout_s)
        if visibility_timeout_s > CLOUDFLARE_MAX_VISIBILITY_S:
            raise ValueError(f"visibility_timeout_s={visibility_timeout_s}, Cloudflare allows at most 12 h")
        body = {
            "batch_size": min(max_messages, CLOUDFLARE_MAX_BATCH),
            "visibility_timeout_ms": max(1, math.ceil(visibility_timeout_s * 1000)),
        }
        result = self._post("pull", body)
        raw = result.get("messages") if isinstance(result, dict) else None
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise QueueError(
                f"Cloudflare Queues pull: result.messages is {type(raw).__name__}, not a list",
                status=200,
                retriable=False,
            )
        out: list[Message] = []
        for item in raw:
            message = _cloudflare_message(item)
            if message is not None:
                out.append(message)
        return out

    def ack(self, leases: Sequence[str]) -> None:
        for chunk in _chunks(leases):
            self._post("ack", {"acks": [{"lease_id": lease} for lease in chunk], "retries": []})

    def retry(self, leases: Sequence[str], delay_s: float = 0.0) -> None:
        if not 0 <= delay_s <= CLOUDFLARE_MAX_RETRY_DELAY_S:
            raise ValueError(f"delay_s={delay_s}, must be 0 to {CLOUDFLARE_MAX_RETRY_DELAY_S}")
        # Whole seconds (the API's unit), rounded up so a retry never comes back early.
        delay = math.ceil(delay_s)
        for chunk in _chunks(leases):
            retries = [{"lease_id": lease, "delay_seconds": delay} for lease in chunk]
            self._post("ack", {"acks": [], "retries": retries})

    def _post(self, action: str, body: dict[str, Any]) -> Any:
        what = f"Cloudflare Queues {action}"
        try:
            response = self._client.post(
                f"{self.url}/{action}", json=body, headers=self._headers, timeout=self._timeout
            )
        except httpx.TransportError as exc:
            raise QueueError(f"{what}: {type(exc).__name__}: {exc}", status=None, retriable=True) from exc
        status = response.status_code
        if status >= 400:
            retriable = status == 429 or status >= 500
            raise QueueError(
                f"{what} failed (HTTP {status}): {cloudflare_errors(response)}",
                status=status,
                retriable=retriable,
                retry_after_s=retry_after(response) if retriable else None,
            )
        try:
            doc = response.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise QueueError(
                f"{what}: HTTP {status} with an unreadable body: {response.text[:200]!r}",
                status=status,
                retriable=False,
            )
        if doc.get("success") is not True:
            raise QueueError(f"{what} failed: {cloudflare_errors(response)}", status=status, retriable=False)
        return doc.get("result")


def _chunks(leases: Sequence[str]) -> list[Sequence[str]]:
    return [leases[i : i + CLOUDFLARE_MAX_BATCH] for i in range(0, len(leases), CLOUDFLARE_MAX_BATCH)]


def _cloudflare_message(item: object) -> Message | None:
    """One pulled message; None (logged) for one we could never ack, which has no lease id."""
    if not isinstance(item, dict):
        log.warning("Cloudflare Queues pull: skipping a message that is not an object: %r", item)
        return None
    lease, mid, attempts, body = item.get("lease_id"), item.get("id"), item.get("attempts"), item.get("body")
    if not isinstance(lease, str) or not lease:
        log.warning("Cloudflare Queues pull: skipping message %r without a lease_id", mid)
        return None
    metadata = item.get("metadata")
    content_type = metadata.get("CF-Content-Type") if isinstance(metadata, dict) else None
    return Message(
        lease=lease,
        body=_decode_body(body, content_type),
        attempts=attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 1,
        id=str(mid) if mid is not None else "",
    )


def _decode_body(body: object, content_type: object) -> bytes:
    """The message bytes: ``text`` as sent, ``json``/``bytes`` base64-decoded (per the docs).

    Anything else, or base64 that does not decode, is passed on as its UTF-8 text: the
    consumer's parser then rejects it as not a Perch message, and the consumer decides its fate.
    """
    if not isinstance(body, str):
        return json.dumps(body).encode("utf-8")
    if content_type in ("json", "bytes"):
        try:
            return base64.b64decode(body, validate=True)
        except ValueError:
            pass
    return body.encode("utf-8")
