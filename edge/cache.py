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

Clients name the experiments, so what an isolate holds is bounded: the
control plane publishes ``perch:index`` (the live experiment keys), cached
the same way; a key it does not list is answered without a KV read or a cache
entry, and a cached experiment that leaves it (archived) is dropped.  Without
an index (none published yet) lookups still happen, and entries are bounded:
at most ``MAX_ENTRIES`` in LRU order, of which at most ``MAX_NEGATIVE`` hold
no snapshot.  Errors shown to clients (``why``, ``/v1/health``) are generic;
the details go to the log.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from core import (
    INDEX_KEY,
    Snapshot,
    SnapshotError,
    decode_index,
    decode_snapshot,
    snapshot_key,
)
from edge.config import EdgeConfig
from edge.platform import Platform

__all__ = ["MAX_ENTRIES", "MAX_NEGATIVE", "NOT_LIVE", "CacheEntry", "SnapshotCache"]

log = logging.getLogger("perch.edge")

MAX_ENTRIES = 256
MAX_NEGATIVE = 32
NOT_LIVE = "not a live experiment (not in the published index)"


@dataclass(slots=True)
class CacheEntry:
    snapshot: Snapshot | None = None
    checked_ms: int = 0  # last time KV answered (or failed to)
    raw_crc: int | None = None  # of the bytes behind ``snapshot``: skip re-decoding equal bytes
    error: str | None = None  # the last failure, for /v1/health and the ``why``
    refreshing: bool = False


# A cached snapshot "from the future" beyond this is a clock or restore gone wrong: it must not pin us.
FUTURE_SLACK_MS = 3_600_000


def _newer(new: Snapshot, old: Snapshot, now_ms: int) -> bool:
    """Whether ``new`` replaces ``old``: by publish time first, then version.

    Not by version alone: after a database restore the control plane numbers versions
    from an older point, and one huge version number would otherwise pin every isolate.
    """
    if old.created_at > now_ms + FUTURE_SLACK_MS:
        return True
    return (new.created_at, new.version) >= (old.created_at, old.version)


@dataclass(slots=True)
class _Index:
    live: frozenset[str] | None = None  # None: no index published (or readable) yet
    created_ms: int = -1  # when the control plane listed ``live``: an older copy never replaces it
    checked_ms: int = 0
    refreshing: bool = False


class SnapshotCache:
    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self.index = _Index()

    async def get(self, experiment: str, platform: Platform) -> CacheEntry:
        live = await self._live(platform)
        if live is not None and experiment not in live:
            self.entries.pop(experiment, None)  # archived since we cached it
            return CacheEntry(error=NOT_LIVE)
        entry = self.entries.get(experiment)
        if entry is None:
            entry = self.entries[experiment] = CacheEntry()
            self._bound()
        else:
            self.entries.move_to_end(experiment)
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

    def _bound(self) -> None:
        """Evict least recently used entries: no-snapshot ones past MAX_NEGATIVE, any past MAX_ENTRIES."""
        negative = [k for k, e in self.entries.items() if e.snapshot is None and not e.refreshing]
        for key in negative[: max(0, len(negative) - MAX_NEGATIVE)]:
            del self.entries[key]
        while len(self.entries) > MAX_ENTRIES:
            self.entries.popitem(last=False)

    async def _live(self, platform: Platform) -> frozenset[str] | None:
        """The published live keys (stale-while-revalidate, like a snapshot), or None without an index."""
        index = self.index
        age_ms = platform.now_ms() - index.checked_ms
        # Never waited for: until an index arrives, lookups are bounded by the LRU alone.
        wait_s = self.config.cache_ttl_s if index.live is not None else self.config.retry_after_s
        if not index.refreshing and age_ms > wait_s * 1000:
            index.refreshing = True
            platform.wait_until(self._load_index(platform, max(1.0, self.config.kv_timeout_s)))
        return index.live

    async def _load_index(self, platform: Platform, timeout_s: float) -> None:
        index = self.index
        try:
            raw = await asyncio.wait_for(platform.kv_get(INDEX_KEY), timeout_s)
            if raw is not None:
                live, created = decode_index(raw)
                if created >= index.created_ms:  # KV is eventually consistent: an older copy may surface
                    index.live, index.created_ms = live, created
        except Exception as exc:  # a missing, slow or corrupt index: keep the last good one
            log.warning("reading %s failed: %s: %s", INDEX_KEY, type(exc).__name__, exc)
        finally:
            index.checked_ms = platform.now_ms()
            index.refreshing = False

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
            log.warning("KV read of %r failed: %s: %s", experiment, type(exc).__name__, exc)
            entry.error = f"KV read failed ({type(exc).__name__})"
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
            log.warning("corrupt snapshot of %r in KV: %s", experiment, exc)
            entry.error = "corrupt snapshot in KV"
            return
        if snapshot.experiment != experiment:
            entry.error = f"KV key of {experiment!r} holds a snapshot of {snapshot.experiment!r}"
            return
        if entry.snapshot is not None and not _newer(snapshot, entry.snapshot, platform.now_ms()):
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
