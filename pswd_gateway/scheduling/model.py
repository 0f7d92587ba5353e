"""Plain data the scheduler works on: forecasts, placed jobs, the site forecast, a re-plan."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from pswd_gateway.domain.workloads import Allocation, Announcement
from pswd_gateway.errors import DoesNotFitError

__all__ = [
    "CarbonForecast",
    "OptimiseResult",
    "PlacedJob",
    "SiteForecast",
    "SiteForecastSlot",
]


@dataclass(frozen=True)
class CarbonForecast:
    """Carbon intensity (g/kWh = kg/MWh) and optionally price and renewable supply per slot
    from ``start``."""

    start: datetime
    slot_s: int
    carbon_g_per_kwh: tuple[float, ...]
    price_per_mwh: tuple[float, ...] | None
    source: str
    generated_at: datetime
    renewable_mw: tuple[float, ...] | None = None
    """Renewable power available to the site (on-site plant or contracted supply, MW): load up
    to it draws no grid carbon (docs/grid.md, "Forecast inputs")."""

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.slot_s * len(self.carbon_g_per_kwh))

    def resampled(self, start: datetime, slot_s: int, n: int) -> CarbonForecast:
        """Time-weighted means on another grid; outside the data the edge values hold."""
        return CarbonForecast(
            start=start,
            slot_s=slot_s,
            carbon_g_per_kwh=tuple(self._resample(self.carbon_g_per_kwh, start, slot_s, n)),
            price_per_mwh=(
                tuple(self._resample(self.price_per_mwh, start, slot_s, n))
                if self.price_per_mwh is not None
                else None
            ),
            source=self.source,
            generated_at=self.generated_at,
            renewable_mw=(
                tuple(self._resample(self.renewable_mw, start, slot_s, n))
                if self.renewable_mw is not None
                else None
            ),
        )

    def _resample(
        self, values: tuple[float, ...], start: datetime, slot_s: int, n: int
    ) -> list[float]:
        src = np.asarray(values, dtype=float)
        if len(src) == 0:
            return [0.0] * n
        # cumulative integral of the source step function, in source-slot units
        cum = np.concatenate(([0.0], np.cumsum(src)))
        offset = (start - self.start).total_seconds() / self.slot_s
        ratio = slot_s / self.slot_s
        edges = offset + ratio * np.arange(n + 1)

        def integral(x: np.ndarray) -> np.ndarray:
            before = np.minimum(x, 0.0) * src[0]
            inside = np.clip(x, 0.0, len(src))
            whole = np.floor(inside).astype(int)
            frac = inside - whole
            part = cum[np.minimum(whole, len(src))] + frac * src[np.minimum(whole, len(src) - 1)]
            after = np.maximum(x - len(src), 0.0) * src[-1]
            total: np.ndarray = before + part + after
            return total

        areas = integral(edges)
        return list(np.diff(areas) / ratio)


@dataclass(frozen=True)
class PlacedJob:
    """A workload the plan holds at ``start``."""

    id: str
    announcement: Announcement
    start: datetime


@dataclass(frozen=True)
class SiteForecastSlot:
    start: datetime
    site_load_mw: float
    grid_import_mw: float
    bess_mw: float
    """Battery discharge planned to keep the import under its limit (positive = discharge)."""
    heat_export_mw: float
    carbon_g_per_kwh: float
    import_limit_mw: float


@dataclass(frozen=True)
class SiteForecast:
    start: datetime
    slot_s: int
    slots: tuple[SiteForecastSlot, ...]
    source: str


@dataclass(frozen=True)
class OptimiseResult:
    """A global re-plan: new allocations, the workloads that did not fit, how the solve went."""

    allocations: dict[str, Allocation]
    unplaced: dict[str, DoesNotFitError]
    status: str
    objective_kg: float
    solve_s: float
    candidates: int
    mip_gap: float = 0.0
