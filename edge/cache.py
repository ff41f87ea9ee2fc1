"""The isolate's copy of each experiment's snapshot, with stale-while-revalidate.

An isolate serves many requests; reading and decoding a snapshot for each
would cost a KV round trip and a decode per request.  So each isolate keeps
the decoded snapshot and:

* fresh (younger than ``cache_ttl_s``): use it;
* older, with a snapshot: use it, and refresh in the background (once at a
  time per key, through ``waitUntil``);
* no snapshot yet: read KV inline, waiting at most ``kv_timeout_s``; after a
  miss or failure, don't wait on KV again for ``retry_after_s``.

Whatever KV does — missing, erroring, slow, corrupt, or (being eventually
consistent) briefly serving an older version — the last good snapshot stays.
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass
from typing import Any

from core import Snapshot, SnapshotError, decode_snapshot, snapshot_key
from edge.config import EdgeConfig
from edge.platform import Platform

__all__ = ["CacheEntry", "SnapshotCache"]


@dataclass(slots=True)
class CacheEntry:
    snapshot: Snapshot | None = None
    checked_ms: int = 0  # last time KV answered (or failed to)
    raw_crc: int | None = None  # of the bytes behind ``snapshot``: skip re-decoding equal bytes
    error: str | None = None  # the last failure, for /v1/health and the ``why``
    refreshing: bool = False


class SnapshotCache:
    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.entries: dict[str, CacheEntry] = {}

    async def get(self, experiment: str, platform: Platform) -> CacheEntry:
        entry = self.entries.get(experiment)
        if entry is None:
            entry = self.entries[experiment] = CacheEntry()
        age_ms = platform.now_ms() - entry.checked_ms
        if entry.snapshot is not None:
            if age_ms > self.config.cache_ttl_s * 1000 and not entry.refreshing:
                entry.refreshing = True
                platform.wait_until(self._refresh(experiment, entry, platform))
        elif age_ms > self.config.retry_after_s * 1000 and not entry.refreshing:
            entry.refreshing = True
            try:
                await asyncio.wait_for(self._load(experiment, entry, platform), self.config.kv_timeout_s)
            except TimeoutError:
                entry.error = f"KV read slower than {self.config.kv_timeout_s}s"
                entry.checked_ms = platform.now_ms()
            finally:
                entry.refreshing = False
        return entry

    async def _refresh(self, experiment: str, entry: CacheEntry, platform: Platform) -> None:
        try:
            await asyncio.wait_for(
                self._load(experiment, entry, platform), max(1.0, self.config.kv_timeout_s)
            )
        except TimeoutError:
            entry.error = "KV refresh timed out"
            entry.checked_ms = platform.now_ms()
        finally:
            entry.refreshing = False

    async def _load(self, experiment: str, entry: CacheEntry, platform: Platform) -> None:
        try:
            raw = await platform.kv_get(snapshot_key(experiment))
        except Exception as exc:  # any KV failure: keep what we have
            entry.error = f"KV read failed: {type(exc).__name__}: {exc}"[:300]
            entry.checked_ms = platform.now_ms()
            return
        entry.checked_ms = platform.now_ms()
        if raw is None:
            entry.error = "no snapshot in KV" if entry.snapshot is None else "snapshot vanished from KV"
            return
        crc = zlib.crc32(raw)
        if crc == entry.raw_crc:
            entry.error = None
            return
        try:
            snapshot = decode_snapshot(raw)
        except SnapshotError as exc:
            entry.error = f"corrupt snapshot in KV: {exc}"[:300]
            return
        if snapshot.experiment != experiment:
            entry.error = f"KV key of {experiment!r} holds a snapshot of {snapshot.experiment!r}"
            return
        if entry.snapshot is not None and snapshot.version < entry.snapshot.version:
            # KV is eventually consistent: an older copy may surface briefly.
            entry.error = None
            return
        entry.snapshot, entry.raw_crc, entry.error = snapshot, crc, None

    def health(self, now_ms: int) -> dict[str, Any]:
        out = {}
        for experiment, entry in sorted(self.entries.items()):
            snap = entry.snapshot
            out[experiment] = {
                "version": snap.version if snap else None,
                "age_s": round((now_ms - snap.created_at) / 1000, 3) if snap else None,
                "checked_s_ago": round((now_ms - entry.checked_ms) / 1000, 3) if entry.checked_ms else None,
                "error": entry.error,
            }
        return out
