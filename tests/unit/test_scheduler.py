"""Placement against brute force on small cases, does-not-fit answers, and invariants."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pswd_gateway.config import SchedulingConfig, SiteConfig
from pswd_gateway.domain.workloads import Announcement
from pswd_gateway.errors import DoesNotFitError
from pswd_gateway.scheduling.model import CarbonForecast, PlacedJob
from pswd_gateway.scheduling.scheduler import Scheduler

NOW = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
SLOT = timedelta(hours=1)


def forecast(values: list[float]) -> CarbonForecast:
    return CarbonForecast(NOW, 3600, tuple(values), None, "test", NOW)


def scheduler(limit: float = 100.0, **cfg: Any) -> Scheduler:
    defaults: dict[str, Any] = {
        "slot_minutes": 60,
        "horizon_h": 12,
        "base_load_mw": 0.0,
        "cooling_capacity_mw": 1000.0,
        "bess_power_mw": 0.0,
        "bess_usable_energy_mwh": 0.0,
    }
    return Scheduler(SchedulingConfig(**(defaults | cfg)), SiteConfig(grid_import_limit_mw=limit))


def job(mw: float, hours: int, earliest_h: int, deadline_h: int) -> Announcement:
    return Announcement.model_validate(
        {
            "workload_type": "ai_training",
            "power_profile": {
                "peak_power_mw": mw,
                "ramp_rate_mw_per_sec": 1000,
                "duration_estimate_sec": hours * 3600,
            },
            "timing_constraints": {
                "earliest_start_time": NOW + earliest_h * SLOT,
                "deadline": NOW + deadline_h * SLOT,
            },
        }
    )


def limits(s: Scheduler) -> np.ndarray:
    limit = np.full(60, s.site.grid_import_limit_mw)
    for w in s.cfg.demand_response:
        limit[int((w.start - NOW) / SLOT) : int((w.end - NOW) / SLOT)] = w.import_limit_mw
    return limit


CARBON = [300, 280, 120, 100, 90, 200, 400, 380, 150, 110, 250, 260] + [300] * 30


def brute_force(
    s: Scheduler, jobs: list[Announcement], fc: CarbonForecast
) -> tuple[float, tuple[int, ...]] | None:
    """Every combination of whole-hour starts; the cheapest that respects the limits."""
    limit = limits(s)
    best: tuple[float, tuple[int, ...]] | None = None
    ranges = [
        range(int((a.earliest_start - NOW) / SLOT), int((a.latest_start - NOW) / SLOT) + 1)
        for a in jobs
    ]
    for starts in itertools.product(*ranges):
        load = np.full(60, s.cfg.base_load_mw)
        carbon = 0.0
        for a, h in zip(jobs, starts, strict=True):
            d = int(a.power_profile.duration_estimate_sec // 3600)
            load[h : h + d] += a.power_profile.peak_power_mw
            carbon += a.power_profile.peak_power_mw * sum(fc.carbon_g_per_kwh[h : h + d])
        excess = np.maximum(load - limit, 0)
        if (excess > s.cfg.bess_power_mw + 1e-9).any():
            continue
        if excess.sum() > s.cfg.bess_usable_energy_mwh + 1e-9:
            continue
        if (load > s.cfg.cooling_capacity_mw + 1e-9).any():
            continue
        if best is None or carbon < best[0] - 1e-6:
            best = (carbon, starts)
    return best


CASES = {
    "loose: each job at its own cleanest hour": (
        100.0,
        {},
        [job(40, 2, 0, 12), job(30, 1, 0, 12), job(20, 3, 1, 12)],
    ),
    "the import limit forces one job off the cleanest hours": (
        60.0,
        {},
        [job(40, 2, 0, 12), job(30, 2, 0, 12)],
    ),
    "the battery covers a little overlap": (
        60.0,
        {"bess_power_mw": 10.0, "bess_usable_energy_mwh": 10.0},
        [job(40, 2, 0, 12), job(30, 2, 0, 12)],
    ),
    "cooling is the tighter limit": (
        200.0,
        {"cooling_capacity_mw": 70.0},
        [job(40, 2, 0, 12), job(35, 2, 0, 12), job(10, 1, 2, 6)],
    ),
    "a demand-response window lowers the limit": (
        100.0,
        {
            "demand_response": [
                {"start": NOW + 2 * SLOT, "end": NOW + 5 * SLOT, "import_limit_mw": 20.0}
            ]
        },
        [job(40, 2, 0, 12), job(30, 1, 0, 8)],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_milp_finds_the_brute_force_optimum(case: str) -> None:
    limit, cfg, jobs = CASES[case]
    s = scheduler(limit, **cfg)
    fc = forecast(CARBON)
    expected = brute_force(s, jobs, fc)
    assert expected is not None
    result = s.optimise([(f"j{i}", a) for i, a in enumerate(jobs)], [], fc, NOW)
    assert result.status == "Optimal"
    assert not result.unplaced
    assert result.objective_kg == pytest.approx(expected[0], rel=1e-9)


@pytest.mark.parametrize("case", list(CASES))
def test_placing_one_job_among_fixed_others_matches_brute_force(case: str) -> None:
    limit, cfg, jobs = CASES[case]
    s = scheduler(limit, **cfg)
    fc = forecast(CARBON)
    first = [
        PlacedJob(f"j{i}", a, NOW + h * SLOT)
        for i, (a, h) in enumerate(zip(jobs[:-1], brute_force(s, jobs[:-1], fc)[1], strict=True))  # type: ignore[index]
    ]
    alloc = s.place("new", jobs[-1], first, fc, NOW)
    options = []
    for h in range(
        int((jobs[-1].earliest_start - NOW) / SLOT), int((jobs[-1].latest_start - NOW) / SLOT) + 1
    ):
        combo = brute_force_fixed(s, first, jobs[-1], h, fc)
        if combo is not None:
            options.append(combo)
    assert alloc.expected_carbon_kg == pytest.approx(min(options), rel=1e-9)


def brute_force_fixed(
    s: Scheduler, fixed: list[PlacedJob], a: Announcement, h: int, fc: CarbonForecast
) -> float | None:
    starts = (*tuple(int((p.start - NOW) / SLOT) for p in fixed), h)
    jobs = [p.announcement for p in fixed] + [a]
    load = np.full(60, s.cfg.base_load_mw)
    for j, start in zip(jobs, starts, strict=True):
        load[start : start + int(j.power_profile.duration_estimate_sec // 3600)] += (
            j.power_profile.peak_power_mw
        )
    limit = limits(s)
    excess = np.maximum(load - limit, 0)
    if (
        excess > s.cfg.bess_power_mw + 1e-9
    ).any() or excess.sum() > s.cfg.bess_usable_energy_mwh + 1e-9:
        return None
    if (load > s.cfg.cooling_capacity_mw + 1e-9).any():
        return None
    d = int(a.power_profile.duration_estimate_sec // 3600)
    return a.power_profile.peak_power_mw * sum(fc.carbon_g_per_kwh[h : h + d])


def test_a_job_that_cannot_fit_names_the_limit_and_the_first_start_that_would() -> None:
    s = scheduler(60.0)
    fc = forecast(CARBON)
    held = [PlacedJob("a", job(50, 3, 0, 12), NOW + 2 * SLOT)]
    with pytest.raises(DoesNotFitError) as info:
        s.place("b", job(20, 1, 2, 5), held, fc, NOW)
    assert info.value.binding_constraint == "grid_import_limit"
    assert info.value.earliest_feasible_start == NOW + 5 * SLOT
    assert "60 MW import limit" in info.value.reason


def test_a_passed_window_is_refused_as_past_its_deadline() -> None:
    with pytest.raises(DoesNotFitError) as info:
        scheduler().place("x", job(10, 1, 0, 2), [], forecast(CARBON), NOW + 3 * SLOT)
    assert info.value.binding_constraint == "deadline"


def test_explanations_name_the_binding_constraint() -> None:
    s = scheduler(60.0)
    fc = forecast(CARBON)
    free = s.place("a", job(40, 2, 0, 12), [], fc, NOW)
    assert free.explanation.binding_constraint == "none"
    assert free.scheduled_start == NOW + 3 * SLOT  # hours 3-4: 100 + 90
    pushed = s.place(
        "b", job(30, 2, 0, 12), [PlacedJob("a", job(40, 2, 0, 12), free.scheduled_start)], fc, NOW
    )
    assert pushed.explanation.binding_constraint == "grid_import_limit"
    assert pushed.carbon_saved_kg == pytest.approx(
        pushed.run_now_carbon_kg - pushed.expected_carbon_kg
    )


job_specs = st.lists(
    st.tuples(st.floats(5, 60), st.integers(1, 3), st.integers(0, 5), st.integers(3, 9)),
    min_size=1,
    max_size=4,
)


@settings(max_examples=40, deadline=None)
@given(specs=job_specs, limit=st.floats(40, 150), bess=st.floats(0, 30))
def test_a_replan_never_breaks_a_limit_and_keeps_every_window(
    specs: list[tuple[float, int, int, int]], limit: float, bess: float
) -> None:
    s = scheduler(
        limit, bess_power_mw=bess, bess_usable_energy_mwh=bess, cooling_capacity_mw=limit + 10
    )
    fc = forecast(CARBON)
    jobs = [job(mw, h, e, e + h + extra) for mw, h, e, extra in specs]
    result = s.optimise([(f"j{i}", a) for i, a in enumerate(jobs)], [], fc, NOW)
    load = np.zeros(60)
    for i, a in enumerate(jobs):
        alloc = result.allocations.get(f"j{i}")
        if alloc is None:
            assert f"j{i}" in result.unplaced
            continue
        assert a.earliest_start <= alloc.scheduled_start <= a.latest_start
        h = int((alloc.scheduled_start - NOW) / SLOT)
        load[h : h + int(a.power_profile.duration_estimate_sec // 3600)] += (
            a.power_profile.peak_power_mw
        )
    excess = np.maximum(load - limit, 0)
    assert (excess <= bess + 1e-6).all()
    assert excess.sum() <= bess + 1e-6
    assert (load <= limit + 10 + 1e-6).all()
