"""Per-client token buckets (rate limits) and concurrent-request counts."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """`per_minute` requests per client, in bursts of up to `burst`; 0 turns it off."""

    per_minute: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def take(self, client: str) -> float:
        """0 if the request may go now, else the seconds until it may (Retry-After)."""
        if self.per_minute <= 0:
            return 0.0
        rate = self.per_minute / 60
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        if len(self._buckets) > 10_000:  # forget clients whose buckets are full again
            full = [
                k
                for k, b in self._buckets.items()
                if b.tokens + (now - b.updated) * rate >= self.burst
            ]
            for key in full:
                del self._buckets[key]
        return (1 - bucket.tokens) / rate


@dataclass
class ConcurrencyLimiter:
    """At most `limit` requests in flight per client; 0 turns it off."""

    limit: int
    _running: Counter[str] = field(default_factory=Counter)

    def enter(self, client: str) -> bool:
        if self.limit and self._running[client] >= self.limit:
            return False
        self._running[client] += 1
        return True

    def leave(self, client: str) -> None:
        self._running[client] -= 1
        if self._running[client] <= 0:
            del self._running[client]


def retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))
