"""What one poller did: plain counters and its lateness, read by metrics, health and benchmarks.

Plain data (no I/O): the southbound poller fills it, northbound surfaces and the daemon read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pswd_gateway.domain.histogram import LatencyHistogram
from pswd_gateway.domain.points import Quality

__all__ = ["RESERVOIR", "Percentiles", "PollStats"]

RESERVOIR = 10_000
"""Lateness samples kept per poller."""


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float
    p99: float
    max: float


@dataclass
class PollStats:
    """Plain counters of one poller; the metrics collector reads them at scrape time."""

    device: str
    interval_s: float
    polls_total: int = 0
    errors_total: int = 0
    timeouts_total: int = 0
    overruns_total: int = 0
    reconnects_total: int = 0
    writes_total: int = 0
    write_errors_total: int = 0
    """Writes refused (device gone), timed out or failed."""
    lateness: LatencyHistogram = field(
        default_factory=lambda: LatencyHistogram(window=RESERVOIR), repr=False
    )
    up: bool = False
    quality: Quality | None = None
    last_success_wall: float | None = None
    last_error: str | None = None
    last_tick: float = 0.0
    """Monotonic time the loop last ran a slot (the watchdog's proof of life)."""

    def observe_lateness(self, lateness_s: float) -> None:
        self.lateness.append(lateness_s)

    def lateness_samples(self) -> list[float]:
        """The most recent lateness samples (at most 10,000), oldest first."""
        return list(self.lateness)

    def lateness_percentiles(self) -> Percentiles:
        samples = sorted(self.lateness)
        if not samples:
            return Percentiles(math.nan, math.nan, math.nan)
        last = len(samples) - 1
        return Percentiles(samples[round(0.5 * last)], samples[round(0.99 * last)], samples[-1])

    def reset(self) -> None:
        """Zero the counters (benchmarks measure after a warm-up)."""
        self.polls_total = self.errors_total = self.timeouts_total = 0
        self.overruns_total = self.reconnects_total = 0
        self.lateness = LatencyHistogram(window=RESERVOIR)
