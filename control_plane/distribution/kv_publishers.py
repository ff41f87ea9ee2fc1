"""Where published snapshots go: Workers KV over Cloudflare's REST API, or the local KV store.

Both publishers take a mapping of keys to values and write all of it or raise
:class:`PublishError`.  :class:`CloudflareKVPublisher` uses the bulk write
endpoint (``PUT .../storage/kv/namespaces/<id>/bulk``): batches of at most
10,000 pairs and 100 MB of request body, keys of at most 512 bytes and values
of at most 25 MiB (checked before anything is sent).  Rate limits (429) and
server errors (5xx) are retried with exponential backoff, honouring
``Retry-After``; keys Cloudflare reports as ``unsuccessful_keys`` are sent
again; any other 4xx is final.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import httpx

from core import LocalKV, PerchError
from core.kv import KV_KEY_MAX_BYTES

__all__ = [
    "cloudflare_errors",
    "retry_after",
    "KV_BATCH_MAX_BYTES",
    "KV_BATCH_MAX_KEYS",
    "KV_VALUE_MAX_BYTES",
    "CloudflareKVPublisher",
    "KVPublisher",
    "LocalKVPublisher",
    "PublishError",
]

log = logging.getLogger("perch.kv")

KV_VALUE_MAX_BYTES = 25 * 1024 * 1024
KV_BATCH_MAX_KEYS = 10_000
KV_BATCH_MAX_BYTES = 100_000_000  # "100 megabytes" of request body; decimal, to stay on the safe side


class PublishError(PerchError):
    """Values could not be written to KV; the message says which and why."""


class KVPublisher(Protocol):
    def put_many(self, items: Mapping[str, bytes]) -> None:
        """Write every item, or raise :class:`PublishError`."""

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete every key (a missing one is fine), or raise :class:`PublishError`."""


def check_item(key: str, value: bytes) -> None:
    """Workers KV's limits on one pair, so local development fails where production would."""
    size = len(key.encode("utf-8"))
    if size == 0 or size > KV_KEY_MAX_BYTES or key in (".", ".."):
        raise PublishError(f"KV key {key!r}: must be 1-{KV_KEY_MAX_BYTES} bytes and not '.' or '..'")
    if not isinstance(value, bytes | bytearray):
        raise PublishError(f"KV key {key!r}: value must be bytes, not {type(value).__name__}")
    if len(value) > KV_VALUE_MAX_BYTES:
        raise PublishError(
            f"KV key {key!r}: value is {len(value)} bytes, over Workers KV's limit of {KV_VALUE_MAX_BYTES}"
        )


class LocalKVPublisher:
    """Writes to the on-disk KV store that ``perch edge dev`` reads."""

    def __init__(self, kv: LocalKV) -> None:
        self.kv = kv

    def put_many(self, items: Mapping[str, bytes]) -> None:
        for key, value in items.items():
            check_item(key, value)
        for key, value in items.items():
            try:
                self.kv.put(key, bytes(value))
            except OSError as exc:
                raise PublishError(f"writing KV key {key!r} under {self.kv.root}: {exc}") from exc

    def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            check_item(key, b"")
            try:
                self.kv.delete(key)
            except OSError as exc:
                raise PublishError(f"deleting KV key {key!r} under {self.kv.root}: {exc}") from exc


def cloudflare_errors(response: httpx.Response) -> str:
    """Cloudflare's own words for a refused API call (its ``errors``), for our error messages."""
    try:
        doc = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not errors:
        return json.dumps(doc)[:500]
    return "; ".join(
        f"{e.get('code')}: {e.get('message')}" if isinstance(e, dict) else str(e) for e in errors
    )


def retry_after(response: httpx.Response) -> float | None:
    """The seconds a 429 or 503 asks us to wait, if it says."""
    raw = response.headers.get("Retry-After")
    try:
        seconds = float(raw) if raw is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None
    return seconds if seconds is not None and seconds >= 0 else None


class CloudflareKVPublisher:
    """Workers KV through Cloudflare's REST API (an API token with Workers KV Storage: Edit)."""

    def __init__(
        self,
        account_id: str,
        namespace_id: str,
        api_token: str,
        *,
        client: httpx.Client,
        base_url: str = "https://api.cloudflare.com/client/v4",
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        batch_max_keys: int = KV_BATCH_MAX_KEYS,
        batch_max_bytes: int = KV_BATCH_MAX_BYTES,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.url = f"{base_url.rstrip('/')}/accounts/{account_id}/storage/kv/namespaces/{namespace_id}/bulk"
        self._headers = {"Authorization": f"Bearer {api_token}", "Content-Type": "application/json"}
        self._client = client
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self._sleep = sleep
        self.batch_max_keys = batch_max_keys
        self.batch_max_bytes = batch_max_bytes

    def put_many(self, items: Mapping[str, bytes]) -> None:
        encoded: dict[str, bytes] = {}
        for key, value in items.items():
            check_item(key, value)
            pair = {"key": key, "value": base64.b64encode(value).decode("ascii"), "base64": True}
            encoded[key] = json.dumps(pair, separators=(",", ":")).encode("utf-8")
        for batch in self._batches(encoded):
            self._put_batch(batch)

    def delete_many(self, keys: Sequence[str]) -> None:
        """Cloudflare's bulk delete (``POST .../bulk/delete``, at most 10,000 keys a request)."""
        encoded: dict[str, bytes] = {}
        for key in keys:
            check_item(key, b"")
            encoded[key] = json.dumps(key).encode("utf-8")
        for batch in self._batches(encoded):
            self._put_batch(batch, method="POST", url=f"{self.url}/delete", what="delete")

    def _batches(self, encoded: dict[str, bytes]) -> list[dict[str, bytes]]:
        """Split into request bodies of at most batch_max_keys pairs and batch_max_bytes bytes."""
        batches: list[dict[str, bytes]] = []
        current: dict[str, bytes] = {}
        size = 2  # "[" and "]"
        for key, pair in encoded.items():
            if 2 + len(pair) > self.batch_max_bytes:
                raise PublishError(f"KV key {key!r}: {len(pair)} bytes encoded, over one request's limit")
            grow = len(pair) + (1 if current else 0)  # the separating comma
            if current and (len(current) >= self.batch_max_keys or size + grow > self.batch_max_bytes):
                batches.append(current)
                current, size, grow = {}, 2, len(pair)
            current[key] = pair
            size += grow
        if current:
            batches.append(current)
        return batches

    def _delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        asked = retry_after(response) if response is not None else None
        return asked if asked is not None else self.backoff_s * 2 ** (attempt - 1)

    def _put_batch(
        self, batch: dict[str, bytes], *, method: str = "PUT", url: str | None = None, what: str = "write"
    ) -> None:
        pending = batch
        problem = ""
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                log.warning("KV bulk %s: %s; attempt %d of %d", what, problem, attempt, self.max_attempts)
            body = b"[" + b",".join(pending.values()) + b"]"
            try:
                response = self._client.request(method, url or self.url, content=body, headers=self._headers)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                self._pause(attempt, self._delay(attempt))
                continue
            if response.status_code == 429 or response.status_code >= 500:
                problem = f"HTTP {response.status_code}: {cloudflare_errors(response)}"
                self._pause(attempt, self._delay(attempt, response))
                continue
            if response.status_code >= 400:
                raise PublishError(
                    f"Workers KV bulk {what} refused ({response.status_code}): {cloudflare_errors(response)}"
                )
            doc = self._result(response)
            if doc is None:
                problem = f"HTTP {response.status_code} with an unreadable body: {response.text[:200]!r}"
                self._pause(attempt, self._delay(attempt))
                continue
            if doc.get("success") is not True:
                raise PublishError(f"Workers KV bulk {what} failed: {cloudflare_errors(response)}")
            result = doc.get("result")
            reported = result.get("unsuccessful_keys") if isinstance(result, dict) else None
            failed = [k for k in reported or [] if isinstance(k, str) and k in pending]
            if not failed:
                return
            pending = {k: pending[k] for k in failed}
            problem = f"{len(failed)} keys not written ({_preview(failed)})"
            self._pause(attempt, self._delay(attempt))
        raise PublishError(f"Workers KV bulk {what} gave up after {self.max_attempts} attempts: {problem}")

    def _pause(self, attempt: int, delay: float) -> None:
        if attempt < self.max_attempts:
            self._sleep(delay)

    @staticmethod
    def _result(response: httpx.Response) -> dict[str, Any] | None:
        try:
            doc = response.json()
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None


def _preview(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
