"""The physical side of an allocation: grid ramp plan, battery reservation, pre-cooling.

Pure functions of the announcement, its start and the site figures.

Grid ramp. The job rises by ``P = peak - idle`` at its own rate ``r``; the grid may only move
at ``R`` (the site's ramp limit). The grid ramp is centred on the job's ramp midpoint
(``start + P/(2r)``) and lasts ``P/R``: before the start the battery absorbs the grid's early
rise (charging), after it the battery covers what the grid has not reached yet. The grid
settles at the job's mean power: the battery also carries the compute/communication rhythm.
The ramp-down mirrors this around the scheduled end. When ``R ≥ r`` the grid follows the job.

Battery reservation.
- power: ``P/2 x (1 - R/r)`` (the mismatch at the job's ramp end, zero when ``R ≥ r``)
  plus half the oscillation depth (or ``peak - mean`` for a time-series profile);
- energy: the ramp mismatch's area, ``P²/(8R) x (1 - R/r)`` MW·s, plus one half-swing of the
  oscillation, ``depth/2 x period/2`` MW·s; in MWh.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pswd_gateway.config import SchedulingConfig, SiteConfig
from pswd_gateway.domain.workloads import (
    Announcement,
    BatteryReservation,
    CoolingPreposition,
    GridRampStep,
)

__all__ = ["build_physical_plan"]

S_PER_H = 3600.0


def build_physical_plan(
    announcement: Announcement,
    start: datetime,
    scheduling: SchedulingConfig,
    site: SiteConfig,
) -> tuple[tuple[GridRampStep, ...], BatteryReservation, CoolingPreposition]:
    profile = announcement.power_profile
    idle = profile.idle_power_mw
    mean = profile.mean_power_mw()
    rise = max(profile.peak_power_mw - idle, 0.0)
    r = profile.ramp_rate_mw_per_sec
    grid_rate = site.grid_ramp_limit_mw_per_s
    end = start + announcement.duration

    if grid_rate >= r:
        up0, up1 = start, start + timedelta(seconds=rise / r)
        down0, down1 = end - timedelta(seconds=rise / r), end
        lag = 0.0
    else:
        centre = rise / (2.0 * r)
        half = (mean - idle) / (2.0 * grid_rate)
        up0 = start + timedelta(seconds=centre - half)
        up1 = start + timedelta(seconds=centre + half)
        down0 = end - timedelta(seconds=centre + half)
        down1 = end - timedelta(seconds=centre - half)
        lag = 1.0 - grid_rate / r
    ramp_plan = (
        GridRampStep(at=up0, grid_power_mw=idle),
        GridRampStep(at=up1, grid_power_mw=mean),
        GridRampStep(at=down0, grid_power_mw=mean),
        GridRampStep(at=down1, grid_power_mw=idle),
    )

    swing_mw = 0.0
    swing_mw_s = 0.0
    if profile.oscillation_depth_mw is not None and profile.oscillation_period_sec is not None:
        # Around its mean the rhythm is peak - mean for duty x period, then mean - low for the
        # rest: the battery moves (and stores) the larger of the two, depth x duty x (1 - duty)
        # x period each way (depth / 2 x period / 2 for half and half).
        duty = 0.5 if profile.oscillation_duty is None else profile.oscillation_duty
        depth = profile.oscillation_depth_mw
        swing_mw = depth * max(duty, 1.0 - duty)
        swing_mw_s = depth * duty * (1.0 - duty) * profile.oscillation_period_sec
    elif profile.time_series is not None:
        swing_mw = profile.peak_power_mw - mean
    ramp_mw = rise / 2.0 * lag
    ramp_mw_s = rise * rise / (8.0 * grid_rate) * lag
    reservation = BatteryReservation(
        power_mw=round(ramp_mw + swing_mw, 3),
        energy_mwh=round((ramp_mw_s + swing_mw_s) / S_PER_H, 6),
        start=min(up0, start),
        end=max(down1, end),
    )

    share = min(1.0, profile.peak_power_mw / scheduling.cooling_capacity_mw)
    cooling = CoolingPreposition(
        start_at=start - timedelta(seconds=scheduling.precool_lead_s),
        chw_supply_setpoint_c=round(
            scheduling.chw_supply_setpoint_c - scheduling.precool_max_k * share, 3
        ),
        heat_load_mw=round(mean, 3),
    )
    return ramp_plan, reservation, cooling
