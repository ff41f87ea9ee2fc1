"""Profile hydration: a visitor's profile from KV, within the identity budget, cached in the isolate.

One KV read per known visitor (``perch:profile:<tag>``, core.profile), bounded by
``profile_timeout_s`` (20 ms by default, inside the ~50 ms a request may spend on identity). A
read that misses the deadline goes on in the background (``waitUntil``) and fills the cache for the
visitor's next request; this request goes on without profile features and its ``why`` says so.
Misses are cached too (most visitors have no profile yet), for at most a minute.

Whatever KV does (slow, failing, missing or corrupt values) a decision is still served: a profile
only ever adds context. The cache holds at most ``MAX_PROFILES`` visitors, least recently used
out first, so an isolate's memory stays bounded however many visitors it sees.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from core import Profile, ProfileError, decode_profile, profile_key
from edge.config import EdgeConfig
from edge.platform import Platform

__all__ = ["MAX_PROFILES", "Hydration", "ProfileCache"]

log = logging.getLogger("perch.edge")

MAX_PROFILES = 4096
_LATENCIES = 1024  # the most recent KV read times kept for /v1/health's percentiles
_MISS_TTL_S = 60.0


@dataclass(frozen=True, slots=True)
class Hydration:
    profile: Profile | None
    status: str  # hit | cached | miss | cached_miss | timeout | error | corrupt

    def note(self) -> str | None:
        """What ``why`` says when the request went on without a profile (None: nothing to say)."""
        return _NOTES.get(self.status)


# Made once: a note is looked up for every decision.
_NOTES = {
    "timeout": "profile not read in time: decided without it",
    "error": "profile store unavailable: decided without it",
    "corrupt": "profile unreadable: decided without it",
}


@dataclass(slots=True)
class _Entry:
    profile: Profile | None
    expires_ms: int


class ProfileCache:
    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.entries: OrderedDict[str, _Entry] = OrderedDict()
        self.pending: set[str] = set()  # tags whose read outlived its request
        self.counts: dict[str, int] = {}
        self.latencies_ms: deque[float] = deque(maxlen=_LATENCIES)

    def _count(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1

    async def hydrate(self, tag: str, platform: Platform) -> Hydration:
        """The profile of the visitor tagged ``tag`` (core.unit_tag), as fast as the budget allows."""
        now = platform.now_ms()
        entry = self.entries.get(tag)
        if entry is not None and entry.expires_ms > now:
            self.entries.move_to_end(tag)
            status = "cached" if entry.profile is not None else "cached_miss"
            self._count(status)
            return Hydration(entry.profile, status)
        if tag in self.pending:  # a read for this visitor is still under way: don't stack another
            self._count("timeout")
            return Hydration(None, "timeout")
        started = platform.perf_s()
        try:
            # asyncio.timeout, not wait_for: no task wrapped around the read (measured in Pyodide,
            # where each task and future costs JS round trips).
            async with asyncio.timeout(self.config.profile_timeout_s):
                profile, status = await self._read(tag, platform)
        except TimeoutError:
            # Read again in the background, so the visitor's next request finds it cached.
            self.pending.add(tag)
            platform.wait_until(self._fill(tag, platform))
            status, profile = "timeout", None
        self.latencies_ms.append((platform.perf_s() - started) * 1000)
        self._count(status)
        return Hydration(profile, status)

    async def _fill(self, tag: str, platform: Platform) -> None:
        try:
            await self._read(tag, platform)
        finally:
            self.pending.discard(tag)

    async def _read(self, tag: str, platform: Platform) -> tuple[Profile | None, str]:
        """Read and cache; (profile, status). Failures are cached briefly, so a KV outage costs one
        read per visitor per ``retry_after_s``, not one per request."""
        try:
            raw = await platform.kv_get(profile_key(tag))
        except Exception as exc:
            log.warning("profile read failed: %s: %s", type(exc).__name__, exc)
            self._store(tag, None, platform.now_ms() + int(self.config.retry_after_s * 1000))
            return None, "error"
        now = platform.now_ms()
        if raw is None:
            # Not longer than a profile is kept: a short PERCH_PROFILE_TTL_S also notices new ones sooner.
            self._store(tag, None, now + int(min(_MISS_TTL_S, self.config.profile_ttl_s) * 1000))
            return None, "miss"
        try:
            profile = decode_profile(raw)
        except ProfileError as exc:
            log.warning("corrupt profile in KV: %s", exc)
            self._store(tag, None, now + int(self.config.retry_after_s * 1000))
            return None, "corrupt"
        self._store(tag, profile, now + int(self.config.profile_ttl_s * 1000))
        return profile, "hit"

    def _store(self, tag: str, profile: Profile | None, expires_ms: int) -> None:
        self.entries[tag] = _Entry(profile, expires_ms)
        self.entries.move_to_end(tag)
        while len(self.entries) > MAX_PROFILES:
            self.entries.popitem(last=False)

    def health(self) -> dict[str, Any]:
        looked = sum(self.counts.values())
        found = self.counts.get("hit", 0) + self.counts.get("cached", 0)
        ordered = sorted(self.latencies_ms)

        def pct(q: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

        return {
            "lookups": looked,
            "by_status": dict(sorted(self.counts.items())),
            "hit_rate": round(found / looked, 4) if looked else None,
            "cached": len(self.entries),
            "kv_read_ms": {"p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99)},
        }
