"""A per-visitor budget for what browsers send: one cookie cannot flood the profile store.

A token bucket per visitor tag (``capacity`` at once, refilled at ``per_s``), in the isolate: an
isolate sees a fraction of a site's traffic, so this bounds what one browser can push through one
isolate, which is what a script in a loop does. The buckets are bounded (LRU): a visitor forgotten
starts with a full bucket, which costs at most ``capacity`` signals more.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["MAX_BUCKETS", "Budget"]

MAX_BUCKETS = 4096


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at_ms: int


class Budget:
    def __init__(self, capacity: int = 100, per_s: float = 1.0) -> None:
        if capacity < 1 or per_s <= 0:
            raise ValueError(f"capacity={capacity}, per_s={per_s}: must be >= 1 and > 0")
        self.capacity, self.per_s = capacity, per_s
        self.buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.refused = 0

    def take(self, key: str, wanted: int, now_ms: int) -> int:
        """How many of ``wanted`` the visitor ``key`` may send now (taken from their bucket)."""
        bucket = self.buckets.pop(key, None) or _Bucket(float(self.capacity), now_ms)
        elapsed_s = max(0, now_ms - bucket.at_ms) / 1000
        bucket.tokens = min(float(self.capacity), bucket.tokens + elapsed_s * self.per_s)
        bucket.at_ms = now_ms
        granted = min(wanted, int(bucket.tokens))
        bucket.tokens -= granted
        self.refused += wanted - granted
        self.buckets[key] = bucket
        while len(self.buckets) > MAX_BUCKETS:
            self.buckets.popitem(last=False)
        return granted
