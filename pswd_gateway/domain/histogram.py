"""A latency histogram that is also a window of recent samples.

Prometheus gets cumulative buckets, a sum and a count (a real ``histogram``, which
``histogram_quantile`` aggregates across scrapes and instances); benchmarks and status pages get
percentiles of the most recent samples. Seconds throughout.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["LATENCY_BUCKETS_S", "LatencyHistogram"]

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
"""Upper bounds (seconds): half a millisecond to a second, around the 20-100 ms cycles."""


@dataclass
class LatencyHistogram:
    """Observations in buckets since start (never reset by a scrape) and the last ``window``
    of them in order."""

    bounds_s: tuple[float, ...] = LATENCY_BUCKETS_S
    window: int = 4096
    counts: list[int] = field(init=False)
    """Per bucket, not cumulative; observations above the last bound are only in ``count``."""
    sum_s: float = field(default=0.0, init=False)
    count: int = field(default=0, init=False)
    _recent: deque[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.bounds_s)
        self._recent = deque(maxlen=self.window)

    def append(self, seconds: float) -> None:
        """Observe one latency."""
        i = bisect.bisect_left(self.bounds_s, seconds)
        if i < len(self.counts):
            self.counts[i] += 1
        self.sum_s += seconds
        self.count += 1
        self._recent.append(seconds)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or below it)``, ending with ``(inf, count)``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip(self.bounds_s, self.counts, strict=True):
            running += n
            out.append((bound, running))
        out.append((float("inf"), self.count))
        return out

    def clear(self) -> None:
        """Forget the recent window (benchmarks measure after a warm-up); the buckets, sum and
        count stay monotonic, as Prometheus requires of a histogram."""
        self._recent.clear()

    def __iter__(self) -> Iterator[float]:
        return iter(self._recent)

    def __len__(self) -> int:
        return len(self._recent)

    def __bool__(self) -> bool:
        return bool(self._recent)
