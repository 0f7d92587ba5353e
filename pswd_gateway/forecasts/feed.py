"""Keeps the latest carbon forecast: refreshes it from its provider, never blocks a reader."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pswd_gateway.errors import ForecastError
from pswd_gateway.forecasts.providers import ForecastProvider
from pswd_gateway.logging import get_logger
from pswd_gateway.scheduling.model import CarbonForecast

__all__ = ["FLAT_G_PER_KWH", "ForecastFeed"]

log = get_logger("forecast")

FLAT_G_PER_KWH = 300.0
"""What the planner assumes while no forecast has ever been read (every start costs the same)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ForecastFeed:
    """``current()`` answers at once; ``run()`` refreshes every ``refresh_s`` in the background.

    Until the first successful fetch the forecast is flat (source ``unavailable``), so placement
    falls back to the earliest start; after a failed refresh the last good forecast is kept
    until it is ``max_age_s`` old, or until it no longer covers the present: then it is
    **stale** and the flat forecast stands in again (source ``stale``), so that placement does
    not chase yesterday's low-carbon hours. :meth:`age_s` is the feed's age (a metric).
    """

    provider: ForecastProvider
    horizon: timedelta
    slot_s: int
    refresh_s: float
    max_age_s: float = 3600.0
    on_update: Callable[[], None] = lambda: None
    clock: Callable[[], datetime] = _utcnow
    failures_total: int = field(default=0, init=False)
    updates_total: int = field(default=0, init=False)
    last_error: str | None = field(default=None, init=False)
    last_update: datetime | None = field(default=None, init=False)
    """When the forecast was last replaced (``None``: never)."""
    _current: CarbonForecast | None = field(default=None, init=False)
    _stale_logged: bool = field(default=False, init=False)

    def age_s(self, now: datetime | None = None) -> float | None:
        """Seconds since the forecast was last replaced (``None``: never)."""
        if self.last_update is None:
            return None
        return ((now or self.clock()) - self.last_update).total_seconds()

    def stale(self, now: datetime | None = None) -> bool:
        """Whether the last good forecast is too old, or no longer covers ``now``."""
        now = now or self.clock()
        forecast = self._current
        if forecast is None:
            return False
        age = self.age_s(now)
        ends = forecast.start + timedelta(seconds=forecast.slot_s * len(forecast.carbon_g_per_kwh))
        return (age is not None and age > self.max_age_s) or now >= ends

    def current(self) -> CarbonForecast:
        now = self.clock()
        if self._current is not None:
            if not self.stale(now):
                self._stale_logged = False
                return self._current
            if not self._stale_logged:
                self._stale_logged = True
                log.error(
                    "forecast_stale",
                    source=self._current.source,
                    age_s=self.age_s(now),
                    max_age_s=self.max_age_s,
                    fallback="flat",
                )
        start = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % 5)
        n = int(self.horizon.total_seconds() // self.slot_s) + 1
        return CarbonForecast(
            start=start,
            slot_s=self.slot_s,
            carbon_g_per_kwh=(FLAT_G_PER_KWH,) * n,
            price_per_mwh=None,
            source="unavailable" if self._current is None else "stale",
            generated_at=now,
        )

    async def refresh(self) -> bool:
        """Fetch once; True when the forecast was replaced."""
        try:
            forecast = await self.provider.fetch(self.clock(), self.horizon)
        except ForecastError as exc:
            self.failures_total += 1
            self.last_error = str(exc)
            log.warning("forecast_refresh_failed", error=str(exc), keeping=self._source())
            return False
        self._current = forecast
        self.last_update = self.clock()
        self.updates_total += 1
        self.last_error = None
        log.info("forecast_updated", source=forecast.source, slots=len(forecast.carbon_g_per_kwh))
        self.on_update()
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()

    def _source(self) -> str:
        return self._current.source if self._current else "unavailable"
