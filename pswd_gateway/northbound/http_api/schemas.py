"""Response bodies of the HTTP API (requests use the domain models directly)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pswd_gateway.domain.workloads import MAX_REASON_CHARS, Workload
from pswd_gateway.scheduling.model import SiteForecast

__all__ = [
    "ActionRequest",
    "ForecastOut",
    "ForecastSlotOut",
    "SiteOut",
    "WorkloadPage",
]


class ActionRequest(BaseModel):
    """Optional body of ``start``, ``complete`` and ``cancel``."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=MAX_REASON_CHARS)


class RhythmAccepted(BaseModel):
    """Answer of ``POST /v1/workloads/{id}/rhythm``."""

    edges: int
    """How many edges the grid loop took."""


class WorkloadPage(BaseModel):
    items: list[Workload]
    next_cursor: str | None
    """Pass as ``cursor`` for the next page; null on the last page."""


class SignalOut(BaseModel):
    """One signal of the site's catalogue, in SI units."""

    value: float | None
    """Null: no device plays its role, or its reading is invalid."""
    unit: str
    """SI unit (``W``, ``var``, ``Hz``, ``degC``, ``ratio``, ``J``, ``W/s``, ``1`` …)."""
    quality: Literal["good", "questionable", "invalid"] | None
    description: str


class SiteOut(BaseModel):
    """The live site, from the latest readings. A null value is unknown (device invalid)."""

    at: datetime
    site: str
    grid_import_mw: float | None
    grid_frequency_hz: float | None
    it_load_mw: float | None
    bess_power_mw: float | None
    """Positive: the battery discharges into the site."""
    bess_soc: float | None
    chw_supply_temp_c: float | None
    heat_export_mw: float | None
    heat_supply_temp_c: float | None
    grid_import_limit_mw: float
    grid_ramp_limit_mw_per_s: float
    devices: dict[str, Literal["good", "questionable", "invalid"]]
    workloads: dict[str, int]
    """Active workloads by state."""
    signals: dict[str, SignalOut] = Field(default_factory=dict)
    """Every signal of the site's catalogue by key (``grid.active_power`` …), SI units."""


class ForecastSlotOut(BaseModel):
    start: datetime
    site_load_mw: float
    grid_import_mw: float
    bess_mw: float
    heat_export_mw: float
    carbon_g_per_kwh: float
    import_limit_mw: float


class ForecastOut(BaseModel):
    """The next hours in slots, from the current allocations and the carbon forecast."""

    start: datetime
    slot_s: int
    source: str
    slots: list[ForecastSlotOut]

    @classmethod
    def of(cls, forecast: SiteForecast) -> ForecastOut:
        return cls(
            start=forecast.start,
            slot_s=forecast.slot_s,
            source=forecast.source,
            slots=[
                ForecastSlotOut(
                    start=s.start,
                    site_load_mw=round(s.site_load_mw, 3),
                    grid_import_mw=round(s.grid_import_mw, 3),
                    bess_mw=round(s.bess_mw, 3),
                    heat_export_mw=round(s.heat_export_mw, 3),
                    carbon_g_per_kwh=round(s.carbon_g_per_kwh, 2),
                    import_limit_mw=s.import_limit_mw,
                )
                for s in forecast.slots
            ],
        )
