"""The grid controllers: tables on a fake clock, and properties over random loads."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pswd_gateway.control.grid import (
    Announced,
    GridDecision,
    GridReading,
    GridSettings,
    LimiterState,
    expected_announced_w,
    grid_step,
    planned_announced_w,
    soc_target,
)

MW = 1e6
S = GridSettings(
    ramp_limit_w_per_s=20 * MW,
    import_limit_w=320 * MW,
    bess_rated_w=250 * MW,
    bess_capacity_j=120 * 3.6e9,
)
S0 = dataclasses.replace(S, payback_s=0.0)
"""The limiter and the arbiter alone (no pay-back), for the tables of their own behaviour."""
JOB = Announced(start_s=100.0, end_s=700.0, level_w=200 * MW, ramp_w_per_s=5000 * MW)


def reading(t: float, load_mw: float, bess_mw: float = 0.0, soc: float | None = 0.5) -> GridReading:
    return GridReading(t, (load_mw - bess_mw) * MW, bess_mw * MW, soc)


def run(
    loads_mw: list[float],
    jobs: tuple[Announced, ...] = (),
    dt: float = 0.1,
    soc: float = 0.5,
    s: GridSettings = S0,
) -> list[GridDecision]:
    """Closed loop with an ideal battery (it does what it is told by the next reading)."""
    state: LimiterState | None = None
    bess = 0.0
    out = []
    for i, load in enumerate(loads_mw):
        d = grid_step(state, reading(i * dt, load, bess / MW, soc), jobs, s)
        state, bess = d.state, d.bess_setpoint_w
        out.append(d)
    return out


# ---- tables --------------------------------------------------------------------------------


def test_a_steady_load_is_carried_by_the_grid_alone() -> None:
    d = run([150.0] * 50)[-1]
    assert abs(d.bess_setpoint_w) < 1.0
    assert d.grid_plan_w == pytest.approx(150 * MW)
    assert d.binding is None
    assert d.fallback is None


def test_an_unannounced_step_lands_on_the_battery_and_the_grid_follows_at_the_ramp() -> None:
    ds = run([100.0] * 10 + [300.0] * 30)
    first = ds[10]
    assert first.bess_setpoint_w == pytest.approx(200 * MW, rel=0.01)
    for a, b in itertools.pairwise(ds):
        assert abs(b.grid_plan_w - a.grid_plan_w) <= S.planning_ramp_w_per_s * 0.1 + 1.0


@pytest.mark.parametrize(
    ("t", "expected_mw"),
    [(99.0, 0.0), (100.02, 100.0), (100.04, 200.0), (400.0, 200.0), (699.98, 100.0), (701.0, 0.0)],
)
def test_expected_announced_load_follows_the_jobs_own_edges(t: float, expected_mw: float) -> None:
    assert expected_announced_w(t, [JOB]) == pytest.approx(expected_mw * MW, abs=1.0)


@pytest.mark.parametrize(
    ("t", "planned_mw"),
    [(80.0, 0.0), (87.54, 0.0), (93.79, 100.0), (100.04, 200.0), (400.0, 200.0), (720.0, 0.0)],
)
def test_the_planned_grid_ramp_ends_with_the_jobs_rise(t: float, planned_mw: float) -> None:
    rp = S.planning_ramp_w_per_s  # 16 MW/s: 200 MW over 12.5 s, all of it before the start
    assert planned_announced_w(t, [JOB], rp) == pytest.approx(planned_mw * MW, abs=0.2 * MW)


def test_an_announced_start_raises_the_grid_before_the_job_moves() -> None:
    dt = 0.1
    loads = [50.0] * int(100.0 / dt) + [250.0] * 100
    ds = run(loads, (JOB,), dt)
    at_start = ds[int(100.0 / dt) - 1]
    assert at_start.grid_plan_w > 230 * MW  # the step is already on the grid
    assert at_start.bess_setpoint_w < -170 * MW  # the battery is charging with it
    for a, b in itertools.pairwise(ds):
        assert abs(b.grid_plan_w - a.grid_plan_w) <= S.planning_ramp_w_per_s * dt + 1.0


def test_the_soc_target_makes_room_before_a_start_and_stores_before_a_stop() -> None:
    assert soc_target(50.0, [JOB], S) <= S.soc_target
    assert soc_target(650.0, [JOB], S) >= S.soc_target
    assert soc_target(-5000.0, [JOB], S) == S.soc_target


def test_an_empty_battery_cannot_cover_a_step_and_asks_the_workload_to_ramp() -> None:
    ds = run([100.0] * 10 + [300.0] * 5, soc=S.soc_min)
    d = ds[10]
    assert d.bess_setpoint_w == 0.0
    assert d.binding == "soc_min"
    assert d.fallback is not None
    # The grid had started to rise (the SoC pull, at most 10 % of the rating), the rest is short.
    assert 150 * MW < d.fallback.shortfall_w <= 200 * MW
    assert d.fallback.ramp_w_per_s == S.planning_ramp_w_per_s


def test_a_full_battery_does_not_charge() -> None:
    d = run([300.0] * 10 + [100.0] * 5, soc=S.soc_max)[10]
    assert d.bess_setpoint_w == 0.0
    assert d.binding == "soc_max"


def test_the_import_limit_beats_the_ramp_limit() -> None:
    d = run([300.0] * 10 + [500.0] * 5)[-1]
    assert d.grid_plan_w <= S.import_limit_w
    assert d.bess_setpoint_w == pytest.approx(500 * MW - d.grid_plan_w)


def test_a_binding_limit_is_held_its_margin_under_and_the_pay_back_keeps_to_it() -> None:
    held = dataclasses.replace(S, import_hold_margin_w=1 * MW)
    for d in run([300.0] * 10 + [500.0] * 40, s=held)[30:]:  # past the ramp up to the limit
        assert d.binding == "import_limit"
        assert d.grid_plan_w == pytest.approx(319 * MW)
        assert d.grid_plan_w - d.payback_w <= 319 * MW + 1.0


def test_beyond_the_inverter_rating_the_grid_takes_the_rest_and_a_fallback_is_raised() -> None:
    d = run([50.0] * 10 + [350.0] * 2)[10]
    assert d.bess_setpoint_w == S.bess_rated_w
    assert d.binding == "bess_power"
    assert d.fallback is not None


def test_an_unknown_state_of_charge_leaves_the_battery_idle() -> None:
    d = grid_step(None, reading(0.0, 100.0, 0.0, None), (), S)
    assert d.bess_setpoint_w == 0.0
    assert d.binding == "bess_unavailable"


def test_what_the_grid_drew_beyond_its_plan_is_paid_back_and_the_debt_empties() -> None:
    # A 200 MW edge the battery only sees at the next reading: the grid carried it for 20 ms.
    ds = run([100.0] * 10 + [300.0] * 200, dt=0.02, s=S)
    first = ds[10]
    assert first.payback_w == pytest.approx(200 * MW * 0.02 / S.payback_s, rel=0.01)
    assert first.bess_setpoint_w == pytest.approx(200 * MW + first.payback_w, rel=0.01)
    # the battery pays it back through the grid; the debt decays with time constant payback_s
    owed = [d.state.leak_j for d in ds[10:]]
    assert owed[0] == pytest.approx(4e6, rel=0.01)
    assert all(b <= a + 1.0 for a, b in itertools.pairwise(owed))
    assert owed[-1] < 0.01 * owed[0]


def test_the_pay_back_is_bounded_and_never_pushes_the_grid_over_its_import_limit() -> None:
    # a huge edge: the pay-back asks for no more than its share of the rating
    ds = run([100.0] * 10 + [300.0] * 5, dt=1.0, s=S)
    assert ds[10].payback_w == pytest.approx(S.payback_max_w)
    # the grid drew less than planned, right at the import limit: no negative pay-back above it
    state = LimiterState(0.0, S.import_limit_w, 400 * MW, 400 * MW, -5e6)
    d = grid_step(state, reading(0.1, 400.0, 80.0), (), S)
    assert d.grid_plan_w - d.payback_w <= S.import_limit_w + 1.0


# ---- properties ----------------------------------------------------------------------------

loads = st.lists(st.floats(0.0, 400.0, allow_nan=False), min_size=2, max_size=80)
socs = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(loads, socs)
def test_setpoints_never_exceed_the_rating_nor_leave_the_soc_window(
    load_mw: list[float], soc: float
) -> None:
    for d in run(load_mw, soc=soc):
        assert abs(d.bess_setpoint_w) <= S.bess_rated_w
        if soc <= S.soc_min:
            assert d.bess_setpoint_w <= 0.0
        if soc >= S.soc_max:
            assert d.bess_setpoint_w >= 0.0
        can_give = S.bess_rated_w if soc > S.soc_min else 0.0
        assert d.grid_plan_w <= max(S.import_limit_w, d.site_load_w - can_give) + 1.0
        if d.grid_plan_w > S.import_limit_w + 1.0:
            assert d.fallback is not None  # the workload is told to shed


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 240.0, allow_nan=False), min_size=2, max_size=80))
def test_the_ramp_limit_holds_whenever_the_battery_can_cover(load_mw: list[float]) -> None:
    ds = run(load_mw)
    for a, b in itertools.pairwise(ds):
        if b.binding is None:
            assert abs(b.grid_plan_w - a.grid_plan_w) <= S.ramp_limit_w_per_s * 0.1 + 1.0


@settings(max_examples=100, deadline=None)
@given(
    st.floats(50.0, 400.0),
    st.floats(1.0, 10_000.0),
    st.floats(0.0, 200.0),
)
def test_a_closed_loop_soc_stays_in_its_window(level_mw: float, ramp: float, base: float) -> None:
    """A real integrator: the SoC moves with what the battery does."""
    job = Announced(20.0, 60.0, level_mw * MW, ramp * MW)
    s = GridSettings(
        ramp_limit_w_per_s=5 * MW,
        import_limit_w=10_000 * MW,
        bess_rated_w=500 * MW,
        bess_capacity_j=0.2 * 3.6e9,  # small: the window is reached
    )
    state: LimiterState | None = None
    energy = 0.5 * s.bess_capacity_j
    bess = 0.0
    dt = 0.1
    for i in range(900):
        t = i * dt
        load = base * MW + expected_announced_w(t, [job])
        d = grid_step(
            state, GridReading(t, load - bess, bess, energy / s.bess_capacity_j), [job], s
        )
        state, bess = d.state, d.bess_setpoint_w
        energy -= bess * dt
        step = s.bess_rated_w * dt / s.bess_capacity_j
        assert s.soc_min - step <= energy / s.bess_capacity_j <= s.soc_max + step
    assert math.isfinite(energy)


def test_an_announced_edge_goes_on_the_battery_before_the_meter_can_show_it() -> None:
    """A setpoint decided 20 ms before the job starts acts after it: the battery is given the
    job's step then, not one loop delay later; without the lead it waits for the meter."""
    job = Announced(start_s=100.0, end_s=700.0, level_w=200 * MW, ramp_w_per_s=5000 * MW)
    state = grid_step(None, reading(99.0, 250.0, 0.0), (job,), S0).state
    early = GridReading(99.98, 250 * MW, 0.0, 0.5, acting_at=100.05)
    without = GridReading(99.98, 250 * MW, 0.0, 0.5)
    ahead = grid_step(state, early, (job,), S0)
    plain = grid_step(state, without, (job,), S0)
    assert ahead.bess_setpoint_w - plain.bess_setpoint_w == pytest.approx(200 * MW, rel=0.01)
    assert ahead.site_load_w == plain.site_load_w  # the estimate of the load stays measured


def test_a_training_start_goes_on_the_battery_at_its_peak_not_its_mean() -> None:
    """A training job starts computing, at its peak: the start edge's feed-forward gives the
    battery the peak; the mean (peak less half the rhythm's depth) would leave the rest on the
    grid for a loop delay. Once the job has started, nothing more is added ahead."""
    job = Announced(100.0, 700.0, 110 * MW, 5000 * MW, peak_w=200 * MW)
    mean_only = Announced(100.0, 700.0, 110 * MW, 5000 * MW)
    state = grid_step(None, reading(99.0, 250.0, 0.0), (job,), S0).state
    early = GridReading(99.98, 250 * MW, 0.0, 0.5, acting_at=100.05)
    plain = grid_step(state, GridReading(99.98, 250 * MW, 0.0, 0.5), (job,), S0)
    peak = grid_step(state, early, (job,), S0)
    mean = grid_step(state, early, (mean_only,), S0)
    assert peak.bess_setpoint_w - plain.bess_setpoint_w == pytest.approx(200 * MW, rel=0.01)
    assert mean.bess_setpoint_w - plain.bess_setpoint_w == pytest.approx(110 * MW, rel=0.01)
    after = GridReading(100.05, 250 * MW, 0.0, 0.5, acting_at=100.12)
    started = grid_step(state, after, (job,), S0)
    assert started.bess_setpoint_w == pytest.approx(
        grid_step(state, GridReading(100.05, 250 * MW, 0.0, 0.5), (job,), S0).bess_setpoint_w
    )
