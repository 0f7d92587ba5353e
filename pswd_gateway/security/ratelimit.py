"""A token bucket per key (a token's name, a client's address): the request limits of the HTTP
listeners."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["RateLimiter", "retry_after"]

MAX_KEYS: Final = 10_000
"""Buckets kept; beyond, the full ones (keys that have not asked for a second) are forgotten, so
a scan from many addresses cannot grow the table without bound."""


def retry_after(wait_s: float) -> str:
    """A ``Retry-After`` header's value for a wait from :meth:`RateLimiter.allow`: whole
    seconds, at least one."""
    return str(max(1, round(wait_s + 0.5)))


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class RateLimiter:
    """A token bucket per key: ``rate_per_s`` sustained, one second's worth of burst."""

    rate_per_s: float
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def allow(self, key: str) -> float:
        """0 when allowed, else the seconds to wait."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_KEYS:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(self.rate_per_s, now)
        bucket.tokens = min(self.rate_per_s, bucket.tokens + (now - bucket.stamp) * self.rate_per_s)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s

    def _forget_full(self, now: float) -> None:
        rate = self.rate_per_s
        self._buckets = {
            k: b for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * rate < rate
        }
