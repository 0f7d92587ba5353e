"""Heat requests and renewable supply bias placement: a flexible job moves into a requested
window when the heat it lets the site deliver is worth more than the grid carbon it costs there,
and no further; load within the renewable supply draws no grid carbon."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_scheduler import job

from pswd_gateway.config import HeatConfig, SchedulingConfig, SiteConfig
from pswd_gateway.domain.grid_signals import GridSignal, HeatRequest, ImportLimit, SignalSource
from pswd_gateway.domain.workloads import Announcement, Flexibility
from pswd_gateway.scheduling.heat import (
    Requested,
    heat_at_supply_mw,
    heat_per_site_mwh,
    requested_of,
    site_load_for_heat_mw,
)
from pswd_gateway.scheduling.model import CarbonForecast
from pswd_gateway.scheduling.scheduler import Scheduler

NOW = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
SLOT = timedelta(hours=1)
HEAT = HeatConfig(heat_pump_power_mw=1000.0, capacity_mw=1000.0)
"""A plant that never binds: the source (the site's load) sets the heat."""


def forecast(values: list[float]) -> CarbonForecast:
    return CarbonForecast(NOW, 3600, tuple(values), None, "test", NOW)


def scheduler(heat: HeatConfig | None = HEAT, **cfg: Any) -> Scheduler:
    defaults: dict[str, Any] = {
        "slot_minutes": 60,
        "horizon_h": 12,
        "base_load_mw": 0.0,
        "cooling_capacity_mw": 1000.0,
        "bess_power_mw": 0.0,
        "bess_usable_energy_mwh": 0.0,
    }
    return Scheduler(
        SchedulingConfig(**(defaults | cfg)), SiteConfig(grid_import_limit_mw=500.0), heat=heat
    )


def request(start_h: int, end_h: int, heat_mw: float, supply_c: float = 80.0) -> Requested:
    return Requested(NOW + start_h * SLOT, NOW + end_h * SLOT, supply_c, heat_mw)


CARBON = [100.0] * 4 + [150.0] * 4 + [300.0] * 40
"""Cleanest in hours 0-3; hours 4-7 cost 50 g/kWh more."""


def start_hour(s: Scheduler, a: Announcement) -> int:
    alloc = s.place("w", a, [], forecast(CARBON), NOW)
    return int((alloc.scheduled_start - NOW) / SLOT)


def test_without_a_request_the_job_takes_the_cleanest_hours() -> None:
    assert start_hour(scheduler(), job(50, 2, 0, 8)) == 0


def test_a_request_worth_more_than_the_carbon_moves_the_job_into_its_window() -> None:
    s = scheduler()
    credit = heat_per_site_mwh(80.0, HEAT) * HEAT.displaced_kg_per_mwh
    assert credit > 50.0  # kg per MWh: more than the 50 kg/MWh the window costs extra
    s.heat_requests = (request(4, 6, heat_mw=200.0),)
    a = job(50, 2, 0, 8)
    alloc = s.place("w", a, [], forecast(CARBON), NOW)
    assert alloc.scheduled_start == NOW + 4 * SLOT
    assert "heat" in alloc.explanation.reason
    assert alloc.explanation.binding_constraint == "none"


def test_no_credit_for_heat_places_by_carbon_alone() -> None:
    s = scheduler(heat=HEAT.model_copy(update={"displaced_kg_per_mwh": 0.0}))
    s.heat_requests = (request(4, 6, heat_mw=200.0),)
    assert start_hour(s, job(50, 2, 0, 8)) == 0
    s = scheduler(heat=None)
    s.heat_requests = (request(4, 6, heat_mw=200.0),)
    assert start_hour(s, job(50, 2, 0, 8)) == 0


def test_the_credit_stops_at_the_heat_the_request_asks() -> None:
    """A request for a little heat credits only the load it needs: not enough to pay for a
    large job's extra carbon."""
    s = scheduler()
    s.heat_requests = (request(4, 6, heat_mw=1.0),)
    assert start_hour(s, job(50, 2, 0, 8)) == 0


def test_load_already_planned_in_the_window_fills_the_request_first() -> None:
    base = site_load_for_heat_mw(100.0, 80.0, HEAT)
    s = scheduler(base_load_mw=base)  # the base load delivers the whole request already
    s.heat_requests = (request(4, 6, heat_mw=100.0),)
    assert start_hour(s, job(50, 2, 0, 8)) == 0


def test_a_fixed_job_stays_where_it_was_announced() -> None:
    s = scheduler()
    s.heat_requests = (request(4, 6, heat_mw=200.0),)
    a = job(50, 2, 1, 8).model_copy(update={"flexibility": Flexibility.FIXED})
    assert start_hour(s, a) == 1


def test_the_global_replan_follows_the_request_too() -> None:
    s = scheduler()
    s.heat_requests = (request(4, 6, heat_mw=200.0),)
    result = s.optimise([("w", job(50, 2, 0, 8))], [], forecast(CARBON), NOW)
    assert result.allocations["w"].scheduled_start == NOW + 4 * SLOT


def test_requested_of_takes_the_heat_requests_among_signals() -> None:
    def signal(body: Any, n: int) -> GridSignal:
        return GridSignal(
            id=f"gs_{n}",
            signal=body,
            source=SignalSource.HTTP,
            issuer="op",
            received_at=NOW,
        )

    heat = HeatRequest(heat_mw=5, supply_temp_c=85, end=NOW + SLOT)
    got = requested_of([signal(ImportLimit(import_limit_mw=3), 1), signal(heat, 2)])
    assert got == (Requested(NOW, NOW + SLOT, 85.0, 5.0),)


@settings(max_examples=200, deadline=None)
@given(
    heat_mw=st.floats(0.1, 500.0),
    supply_c=st.floats(70.0, 90.0),
    recovery=st.floats(0.05, 1.0),
    pump_mw=st.floats(0.5, 100.0),
    capacity_mw=st.floats(0.5, 500.0),
)
def test_the_load_for_a_heat_gives_that_heat_or_the_most_the_plant_can(
    heat_mw: float, supply_c: float, recovery: float, pump_mw: float, capacity_mw: float
) -> None:
    heat = HeatConfig(
        recovery_fraction=recovery, heat_pump_power_mw=pump_mw, capacity_mw=capacity_mw
    )
    load = site_load_for_heat_mw(heat_mw, supply_c, heat)
    delivered = heat_at_supply_mw(load, supply_c, heat)
    most = heat_at_supply_mw(1e9, supply_c, heat)
    assert delivered == pytest.approx(min(heat_mw, most), rel=1e-9, abs=1e-9)
    assert np.isfinite(load)


def test_renewable_supply_draws_no_grid_carbon_and_moves_the_job_to_it() -> None:
    s = scheduler(heat=None)
    green = [0.0] * 4 + [0.0, 0.0, 60.0, 60.0] + [0.0] * 40
    fc = CarbonForecast(NOW, 3600, tuple(CARBON), None, "test", NOW, tuple(green))
    alloc = s.place("w", job(50, 2, 0, 8), [], fc, NOW)
    assert alloc.scheduled_start == NOW + 6 * SLOT
    assert alloc.expected_carbon_kg == pytest.approx(0.0)
    # 80 MW: the 20 MW beyond the supply draw the grid's 150 g/kWh there (6 t), still less
    # than the whole job at the cleanest grid hours (80 MW x 2 h x 100 g/kWh = 16 t)
    alloc = s.place("w", job(80, 2, 0, 8), [], fc, NOW)
    assert alloc.scheduled_start == NOW + 6 * SLOT
    assert alloc.expected_carbon_kg == pytest.approx(20 * 2 * 150.0)
    result = s.optimise([("w", job(50, 2, 0, 8))], [], fc, NOW)
    assert result.allocations["w"].scheduled_start == NOW + 6 * SLOT
