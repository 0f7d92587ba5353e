"""The site's physics without sockets: balance, BESS limits, thermal lags, truth buffer."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pswd_gateway.simulation.config import (
    BessSimConfig,
    FrequencyEvent,
    GridSimConfig,
    JobConfig,
    SimulationConfig,
    ThermalSimConfig,
    TraceConfig,
)
from pswd_gateway.simulation.physics import (
    BessCommand,
    BessParams,
    BessState,
    SitePhysics,
    bess_step,
    bess_target_w,
)

MW = 1e6


def quiet(**overrides: object) -> SimulationConfig:
    """A site without noise, frequency wander or events: only what a test sets moves."""
    base: dict[str, object] = {
        "grid": GridSimConfig(noise_mw=0.0, frequency_wander_hz=0.0, events=()),
        "trace": TraceConfig(baseline_mw=100.0, jobs=()),
    }
    return SimulationConfig.model_validate({**base, **overrides})


def run(physics: SitePhysics, until: float, step: float = 0.05) -> None:
    t = physics.latest.t
    while t < until:
        t = min(until, t + step)
        physics.advance(t)


# ------------------------------------------------------------------------------ determinism


def test_same_seed_and_same_requests_give_identical_truth() -> None:
    """Two sites with one seed, asked at the same instants, agree exactly; a new seed differs."""
    cfg = SimulationConfig(seed=5)
    a, b, c = SitePhysics(cfg), SitePhysics(cfg), SitePhysics(SimulationConfig(seed=6))
    times = [0.0371 * i for i in range(1, 800)]
    grid_a = [a.advance(t).grid_w for t in times]
    assert grid_a == [b.advance(t).grid_w for t in times]
    assert grid_a != [c.advance(t).grid_w for t in times]


def test_result_does_not_depend_on_how_time_is_cut_into_requests() -> None:
    """Asking every 7 ms or every 100 ms ends in (almost) the same state: lags are exact."""
    cfg = SimulationConfig(seed=3)
    fine, coarse = SitePhysics(cfg), SitePhysics(cfg)
    for p in (fine, coarse):
        p.command_bess(0.0, enabled=True, setpoint_w=80 * MW)
    run(fine, 30.0, step=0.007)
    run(coarse, 30.0, step=0.1)
    a, b = fine.truth_at(30.0), coarse.truth_at(30.0)
    assert a.it_w == b.it_w
    assert a.bess_w == pytest.approx(b.bess_w)
    assert a.soc == pytest.approx(b.soc, abs=1e-6)
    assert a.chw_supply_c == pytest.approx(b.chw_supply_c, abs=0.05)


# ------------------------------------------------------------------------------ grid balance


def test_grid_power_is_it_plus_cooling_minus_bess() -> None:
    """Import at the meter = IT + chillers + heat pump - BESS discharge (noise switched off)."""
    cfg = quiet(trace=TraceConfig())  # the demo jobs, for a moving IT load
    physics = SitePhysics(cfg)
    physics.command_bess(1.0, enabled=True, setpoint_w=-60 * MW)
    for i in range(1, 400):
        truth = physics.advance(0.07 * i)
        expected = truth.it_w + truth.chiller_w + truth.heat_pump_w - truth.bess_w
        assert truth.grid_w == pytest.approx(expected, abs=1e-3)
        assert truth.cooling_w == pytest.approx(truth.chiller_w + truth.heat_pump_w)


def test_a_40ms_compute_edge_reaches_the_grid_meter_unsmoothed() -> None:
    """IT power edges are not filtered by the physics: the grid import rises by the job's swing
    within one 40 ms edge (cooling lags by seconds and moves it by a fraction of a percent)."""
    job = JobConfig(
        name="edge",
        start_s=1.0,
        duration_s=1000.0,
        peak_mw=200.0,
        period_s=2.0,
        depth=0.9,
        duty=0.5,
        jitter=0.0,
        ramp_up_s=0.0,
        checkpoint_every_s=None,
    )
    physics = SitePhysics(quiet(trace=TraceConfig(baseline_mw=20.0, jobs=(job,))))
    edge_start = 1.0 + 10 * 2.0  # an iteration boundary: the rising edge starts here
    run(physics, edge_start, step=0.05)
    before = physics.advance(edge_start).grid_w
    after = physics.advance(edge_start + 0.040).grid_w
    assert after - before == pytest.approx(180 * MW, rel=0.01)
    midway = physics.truth_at(edge_start + 0.020).grid_w
    assert midway - before == pytest.approx(90 * MW, rel=0.02)


def test_grid_noise_is_small_seeded_and_zero_mean() -> None:
    """The seeded noise moves the meter by a fraction of a MW around the balance."""
    physics = SitePhysics(SimulationConfig(grid=GridSimConfig(noise_mw=0.3)))
    residuals = []
    for i in range(1, 2000):
        t = 0.013 * i
        truth = physics.advance(t)
        residuals.append(truth.grid_w - (truth.it_w + truth.cooling_w - truth.bess_w))
    assert max(abs(r) for r in residuals) < 2 * MW
    assert abs(sum(residuals) / len(residuals)) < 0.2 * MW
    assert max(residuals) - min(residuals) > 0.1 * MW


def test_import_and_export_energy_accumulate_by_sign() -> None:
    """Import energy grows while importing; a BESS discharging more than the load exports."""
    physics = SitePhysics(quiet())
    run(physics, 10.0)
    importing = physics.truth_at(10.0)
    assert importing.grid_import_j > 0.0
    assert importing.grid_export_j == 0.0
    physics.command_bess(10.0, enabled=True, setpoint_w=250 * MW)
    run(physics, 20.0)
    exporting = physics.truth_at(20.0)
    assert exporting.grid_w < 0.0
    assert exporting.grid_export_j > 0.0


def net_import_j(physics: SitePhysics, t: float) -> float:
    truth = physics.truth_at(t)
    return truth.grid_import_j - truth.grid_export_j


@settings(max_examples=25, deadline=None)
@given(
    cuts_a=st.lists(st.floats(min_value=0.001, max_value=0.2), min_size=1, max_size=60),
    cuts_b=st.lists(st.floats(min_value=0.001, max_value=0.2), min_size=1, max_size=60),
    window=st.floats(min_value=0.005, max_value=0.5),
)
def test_grid_energy_over_a_window_does_not_depend_on_how_time_was_cut(
    cuts_a: list[float], cuts_b: list[float], window: float
) -> None:
    """The meters' window means are energy differences, so the energy counters must not depend
    on the requests: IT (Simpson between the trace's breakpoints), noise (exact between its
    knots) and BESS (exact lag) are integrated exactly, only the slow cooling is not. Two sites
    asked at different instants agree on the mean import over any window to within 1 kW."""
    cfg = SimulationConfig(seed=4)  # the demo jobs with their 40 ms edges, noise on
    a, b = SitePhysics(cfg), SitePhysics(cfg)
    for physics, cuts in ((a, cuts_a), (b, cuts_b)):
        physics.command_bess(0.0, enabled=True, setpoint_w=-40 * MW)
        t = 15.0  # the first job runs at full power from 15 s
        physics.advance(t)
        physics.command_bess(t + 0.1, setpoint_w=120 * MW)
        for cut in cuts:
            t += cut
            physics.advance(t)
    end = min(a.latest.t, b.latest.t)
    start = max(end - window, 15.0)
    mean_a = (net_import_j(a, end) - net_import_j(a, start)) / (end - start)
    mean_b = (net_import_j(b, end) - net_import_j(b, start)) / (end - start)
    assert mean_a == pytest.approx(mean_b, abs=1e3)


def test_grid_energy_is_the_integral_of_the_grid_power() -> None:
    """Over a second with 40 ms edges and a BESS step, E(b) - E(a) matches a 0.25 ms numerical
    integral of the instantaneous grid power (to 0.5 kW of mean power)."""
    physics = SitePhysics(SimulationConfig(seed=8))
    run(physics, 20.0, step=0.25)
    physics.command_bess(20.3, enabled=True, setpoint_w=90 * MW)
    run(physics, 21.5, step=0.01)
    n = 4000
    powers = [physics.truth_at(20.0 + i / n).grid_w for i in range(n + 1)]
    integral = sum(0.5 * (x + y) / n for x, y in itertools.pairwise(powers))
    assert net_import_j(physics, 21.0) - net_import_j(physics, 20.0) == pytest.approx(
        integral, abs=500.0
    )


def test_frequency_event_reaches_its_nadir_and_recovers() -> None:
    """A configured dip takes the frequency to nominal + delta, then back to nominal."""
    event = FrequencyEvent(start_s=5.0, delta_hz=-0.2, fall_s=2.0, hold_s=3.0, recover_s=4.0)
    physics = SitePhysics(quiet(grid=GridSimConfig(frequency_wander_hz=0.0, events=(event,))))
    assert physics.advance(4.9).frequency_hz == pytest.approx(50.0)
    assert physics.advance(8.5).frequency_hz == pytest.approx(49.8)
    assert physics.advance(12.0).frequency_hz == pytest.approx(49.9)
    assert physics.advance(20.0).frequency_hz == pytest.approx(50.0)


def test_sixty_hz_grid_wanders_around_sixty() -> None:
    """The nominal frequency is configurable; the wander stays within a few tens of mHz."""
    physics = SitePhysics(SimulationConfig(grid=GridSimConfig(nominal_frequency_hz=60, events=())))
    values = [physics.advance(0.5 * i).frequency_hz for i in range(1, 400)]
    assert all(abs(f - 60.0) < 0.06 for f in values)


# ------------------------------------------------------------------------------ BESS


def test_bess_follows_a_setpoint_after_its_dead_time_within_its_response_time() -> None:
    """A step written at 1 s does nothing for the 20 ms dead time, is within 5 % of the
    setpoint 60 ms (response_ms) after that and settled soon after."""
    physics = SitePhysics(quiet(bess=BessSimConfig(response_delay_ms=20.0, response_ms=60.0)))
    physics.command_bess(1.0, enabled=True, setpoint_w=100 * MW)
    assert physics.advance(1.019).bess_w == 0.0
    assert 0.0 < physics.advance(1.040).bess_w < 95 * MW
    assert physics.advance(1.080).bess_w == pytest.approx(100 * MW, rel=0.05)
    assert physics.advance(1.5).bess_w == pytest.approx(100 * MW, rel=1e-6)


def test_the_default_pcs_has_a_dead_time_and_a_20ms_response() -> None:
    """The defaults are the demo's PCS, written directly: 10 ms dead time, 20 ms to settle."""
    params = BessParams.from_config(BessSimConfig())
    assert params.dead_time_s == pytest.approx(0.010)
    assert params.tau_s == pytest.approx(0.020 / 3)


def test_truth_before_a_commands_effective_time_does_not_include_it() -> None:
    """Asked afterwards, the truth just before t + delay still has the old command acting and
    the truth at t + delay the new one; the registers read back the new one at once."""
    physics = SitePhysics(quiet(bess=BessSimConfig(response_delay_ms=30.0)))
    physics.advance(2.0)
    physics.command_bess(2.0, enabled=True, setpoint_w=-80 * MW)
    assert physics.latest.bess_requested.setpoint_w == -80 * MW
    assert physics.latest.commands.bess.enabled is False
    run(physics, 3.0)
    before = physics.truth_at(2.0299)
    assert before.state.commands.bess.enabled is False
    assert before.bess_target_w == 0.0
    assert before.bess_w == 0.0
    acting = physics.truth_at(2.030)
    assert acting.state.commands.bess.setpoint_w == -80 * MW
    assert acting.bess_target_w == -80 * MW
    assert acting.bess_w == 0.0  # the lag starts from here
    assert physics.truth_at(2.031).bess_w < 0.0


def test_commands_in_the_dead_time_act_in_order_at_their_own_instants() -> None:
    """Two setpoints 5 ms apart with a 20 ms dead time act at +20 ms and +25 ms."""
    physics = SitePhysics(quiet(bess=BessSimConfig(response_delay_ms=20.0)))
    physics.command_bess(1.000, enabled=True, setpoint_w=50 * MW)
    physics.command_bess(1.005, setpoint_w=70 * MW)
    assert physics.latest.bess_requested.setpoint_w == 70 * MW
    assert physics.latest.bess_requested.enabled is True
    assert physics.truth_at(1.0199).bess_target_w == 0.0
    assert physics.truth_at(1.0200).bess_target_w == 50 * MW
    assert physics.truth_at(1.0249).bess_target_w == 50 * MW
    assert physics.truth_at(1.0250).bess_target_w == 70 * MW
    run(physics, 2.0)
    assert physics.truth_at(2.0).bess_w == pytest.approx(70 * MW)
    assert physics.latest.bess_pending == ()


@settings(max_examples=40, deadline=None)
@given(
    delay_ms=st.floats(min_value=0.0, max_value=500.0),
    at=st.floats(min_value=0.001, max_value=3.0),
    setpoint=st.floats(min_value=-250 * MW, max_value=250 * MW),
    steps=st.lists(st.floats(min_value=0.0005, max_value=0.2), min_size=1, max_size=40),
)
def test_a_command_with_dead_time_acts_as_the_same_command_given_that_much_later(
    delay_ms: float, at: float, setpoint: float, steps: list[float]
) -> None:
    """Dead time is pure delay: commanding at t with delay d gives the same BESS as commanding
    at t + d without one, at every instant, however the requests cut the time — and nothing of
    the command shows before t + d."""
    delay = delay_ms / 1000.0
    delayed = SitePhysics(quiet(bess=BessSimConfig(response_delay_ms=delay_ms)))
    direct = SitePhysics(quiet(bess=BessSimConfig(response_delay_ms=0.0)))
    delayed.command_bess(at, enabled=True, setpoint_w=setpoint)
    direct.command_bess(at + delay, enabled=True, setpoint_w=setpoint)
    t = at
    for step in steps:
        t += step
        a, b = delayed.advance(t), direct.truth_at(t)
        assert a.bess_w == pytest.approx(b.bess_w, rel=1e-9, abs=1e-3)
        assert a.soc == pytest.approx(b.soc, rel=1e-12)
        if t < at + delay:
            assert a.bess_w == 0.0
    for back in (at + 0.5 * delay, at + delay, (at + delay + t) / 2):
        if back <= t:
            assert delayed.truth_at(back).bess_w == pytest.approx(
                direct.truth_at(back).bess_w, rel=1e-9, abs=1e-3
            )


def test_bess_idles_until_enabled() -> None:
    """A setpoint without WSetEna does nothing, as on a real PCS."""
    physics = SitePhysics(quiet())
    physics.command_bess(1.0, setpoint_w=100 * MW)
    assert physics.advance(2.0).bess_w == 0.0


def test_bess_setpoint_beyond_rating_is_clamped_to_the_rating() -> None:
    """400 MW asked of a 250 MW PCS gives 250 MW; -400 MW gives -250 MW."""
    physics = SitePhysics(quiet())
    physics.command_bess(1.0, enabled=True, setpoint_w=400 * MW)
    assert physics.advance(2.0).bess_w == pytest.approx(250 * MW)
    physics.command_bess(2.0, setpoint_w=-400 * MW)
    assert physics.advance(3.0).bess_w == pytest.approx(-250 * MW)


def test_bess_percent_mode_uses_wmax() -> None:
    """In W_MAX_PCT mode the setpoint is a percentage of WMax."""
    physics = SitePhysics(quiet())
    physics.command_bess(1.0, enabled=True, watts_mode=False, setpoint_pct=40.0, wmax_w=200 * MW)
    assert physics.advance(2.0).bess_w == pytest.approx(80 * MW)


def test_bess_stops_discharging_at_the_bottom_of_its_soc_window() -> None:
    """A small battery discharged at full power ends at soc_min and stops, never below."""
    cfg = quiet(bess=BessSimConfig(energy_mwh=2.0, soc_initial=0.3, soc_min=0.2, soc_max=0.8))
    physics = SitePhysics(cfg)
    physics.command_bess(0.0, enabled=True, setpoint_w=250 * MW)
    run(physics, 20.0)
    truth = physics.truth_at(20.0)
    assert truth.soc == pytest.approx(0.2)
    assert truth.bess_w == pytest.approx(0.0, abs=1.0)
    assert truth.bess_target_w == 0.0


def test_bess_stops_charging_at_the_top_of_its_soc_window() -> None:
    """Charging ends at soc_max."""
    cfg = quiet(bess=BessSimConfig(energy_mwh=2.0, soc_initial=0.7, soc_min=0.2, soc_max=0.8))
    physics = SitePhysics(cfg)
    physics.command_bess(0.0, enabled=True, setpoint_w=-250 * MW)
    run(physics, 20.0)
    truth = physics.truth_at(20.0)
    assert truth.soc == pytest.approx(0.8)
    assert truth.bess_w == pytest.approx(0.0, abs=1.0)


def test_charge_and_discharge_efficiencies_apply_to_the_stored_energy() -> None:
    """Charging stores 95 % of the AC energy; discharging draws AC / 95 % from storage."""
    # a fast PCS without dead time: its transitions are negligible against the 60 s legs
    physics = SitePhysics(quiet(bess=BessSimConfig(response_delay_ms=0.0, response_ms=20.0)))
    capacity_j = 120 * 3.6e9
    physics.command_bess(0.0, enabled=True, setpoint_w=-100 * MW)
    run(physics, 60.0)
    charged = physics.truth_at(60.0)
    assert charged.soc - 0.5 == pytest.approx(100 * MW * 60 * 0.95 / capacity_j, rel=1e-3)
    assert charged.bess_charged_j == pytest.approx(100 * MW * 60, rel=1e-3)
    physics.command_bess(60.0, setpoint_w=100 * MW)
    run(physics, 120.0)
    discharged = physics.truth_at(120.0)
    assert charged.soc - discharged.soc == pytest.approx(
        100 * MW * 60 / 0.95 / capacity_j, rel=1e-3
    )
    assert discharged.bess_discharged_j == pytest.approx(100 * MW * 60, rel=1e-3)


def test_reduced_charge_rate_setting_limits_charging() -> None:
    """A lower WChaRteMax setting caps charging below the rating."""
    physics = SitePhysics(quiet())
    physics.command_bess(0.0, enabled=True, setpoint_w=-200 * MW, max_charge_w=50 * MW)
    assert physics.advance(1.0).bess_w == pytest.approx(-50 * MW)


commands = st.lists(
    st.tuples(
        st.floats(min_value=0.001, max_value=60.0),  # how long the setpoint holds
        st.floats(min_value=-600 * MW, max_value=600 * MW),  # setpoint, beyond the rating too
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=100, deadline=None)
@given(
    commands=commands,
    energy_mwh=st.floats(min_value=0.5, max_value=200.0),
    soc0=st.floats(min_value=0.1, max_value=0.9),
)
def test_soc_stays_in_its_window_and_power_within_the_rating(
    commands: list[tuple[float, float]], energy_mwh: float, soc0: float
) -> None:
    """Whatever is commanded, SoC never leaves [soc_min, soc_max] ⊂ [0, 1] and the AC power
    never exceeds the 250 MW rating in either direction."""
    params = BessParams.from_config(BessSimConfig(energy_mwh=energy_mwh, soc_initial=soc0))
    state = BessState(power_w=0.0, soc=soc0)
    for hold_s, setpoint in commands:
        command = BessCommand(enabled=True, setpoint_w=setpoint)
        remaining = hold_s
        while remaining > 0:
            dt = min(remaining, 0.25)
            state = bess_step(params, state, bess_target_w(params, command, state.soc), dt)
            remaining -= dt
            assert 0.1 <= state.soc <= 0.9
            assert 0.0 <= state.soc <= 1.0
            assert abs(state.power_w) <= params.rated_w
            assert state.charged_j >= 0.0
            assert state.discharged_j >= 0.0


@settings(max_examples=100, deadline=None)
@given(
    p0=st.floats(min_value=-250 * MW, max_value=250 * MW),
    target=st.floats(min_value=-250 * MW, max_value=250 * MW),
    dt=st.floats(min_value=1e-4, max_value=0.05),
)
def test_energy_split_matches_the_power_crossing_zero(p0: float, target: float, dt: float) -> None:
    """Discharged minus charged AC energy equals the integral of the power over the step."""
    params = BessParams.from_config(BessSimConfig())
    state = bess_step(params, BessState(power_w=p0, soc=0.5), target, dt)
    tau = params.tau_s
    integral = target * dt + (p0 - target) * tau * (1 - math.exp(-dt / tau))
    assert state.discharged_j - state.charged_j == pytest.approx(integral, rel=1e-9, abs=1e-3)


# ------------------------------------------------------------------------------ thermal


def test_chilled_water_supply_follows_its_setpoint_as_a_first_order_lag() -> None:
    """At constant load a setpoint step is 63 % done after one time constant, done after five."""
    physics = SitePhysics(quiet(thermal=ThermalSimConfig(chw_tau_s=60.0)))
    run(physics, 10.0, step=0.25)
    assert physics.truth_at(10.0).chw_supply_c == pytest.approx(18.0, abs=1e-6)
    physics.set_chw_setpoint(10.0, 16.0)
    run(physics, 70.0, step=0.25)
    expected = 16.0 + 2.0 * math.exp(-1.0)
    assert physics.truth_at(70.0).chw_supply_c == pytest.approx(expected, abs=0.01)
    run(physics, 10.0 + 300.0, step=0.5)
    assert physics.truth_at(310.0).chw_supply_c == pytest.approx(16.0 + 2 * math.exp(-5), abs=0.01)


def test_heat_load_step_disturbs_the_supply_temperature_which_then_recovers() -> None:
    """A job starting lifts the supply temperature while the chillers catch up, then it
    returns to the setpoint; the return is warmer than the supply by the load over the flow."""
    job = JobConfig(
        name="step",
        start_s=5.0,
        duration_s=10_000.0,
        peak_mw=150.0,
        depth=0.0,
        ramp_up_s=0.0,
        checkpoint_every_s=None,
    )
    physics = SitePhysics(quiet(trace=TraceConfig(baseline_mw=20.0, jobs=(job,))))
    run(physics, 5.0, step=0.25)
    before = physics.truth_at(5.0).chw_supply_c
    run(physics, 30.0, step=0.25)
    disturbed = physics.truth_at(30.0)
    assert disturbed.chw_supply_c > before + 0.5
    run(physics, 400.0, step=0.5)
    settled = physics.truth_at(400.0)
    assert settled.chw_supply_c == pytest.approx(18.0, abs=0.05)
    assert settled.chw_return_c > settled.chw_supply_c + 3.0
    assert settled.chiller_w > 0.0


def test_heat_supply_follows_its_setpoint_and_heat_pump_power_is_heat_over_cop() -> None:
    """The municipal supply temperature tracks its setpoint (first order) and the heat pump
    draws delivered heat divided by its COP."""
    physics = SitePhysics(quiet(thermal=ThermalSimConfig(heat_tau_s=100.0)))
    physics.set_heat_setpoint(0.0, 90.0)
    run(physics, 100.0, step=0.5)
    truth = physics.truth_at(100.0)
    assert truth.heat_supply_c == pytest.approx(90.0 - 10.0 * math.exp(-1.0), abs=0.02)
    assert truth.heat_pump_w * truth.heat_pump_cop == pytest.approx(truth.heat_delivered_w)
    assert 0.0 < truth.heat_delivered_w <= 40 * MW + 1.0


def test_more_it_heat_lets_the_heat_pump_meet_the_municipal_demand() -> None:
    """With a 100 MW IT load the 40 MW municipal demand is met once the heat pump has ramped."""
    physics = SitePhysics(quiet())
    run(physics, 600.0, step=0.5)
    assert physics.truth_at(600.0).heat_delivered_w == pytest.approx(40 * MW, rel=1e-3)


# ------------------------------------------------------------------------------ truth buffer


def test_truth_at_returns_what_a_request_at_that_instant_saw() -> None:
    """``truth_at`` of a committed instant is exactly the answer given then; between commits it
    is the same integration a request there would have done."""
    physics = SitePhysics(SimulationConfig())
    seen = {t: physics.advance(t) for t in (1.0, 1.3, 2.0, 2.011)}
    for t, truth in seen.items():
        assert physics.truth_at(t).grid_w == truth.grid_w
    between = physics.truth_at(1.15)
    fresh = SitePhysics(SimulationConfig())
    fresh.advance(1.0)
    assert between.grid_w == pytest.approx(fresh.advance(1.15).grid_w)


def test_truth_older_than_the_buffer_is_refused() -> None:
    """The ring buffer keeps ``truth_buffer_s``; asking further back is a LookupError."""
    physics = SitePhysics(SimulationConfig(truth_buffer_s=5.0))
    run(physics, 30.0)
    physics.truth_at(30.0 - 5.0)
    with pytest.raises(LookupError):
        physics.truth_at(10.0)


# ------------------------------------------------------------------------------ racks


def test_a_rack_power_limit_caps_the_hall_and_the_site() -> None:
    """Capping one rack below its share removes the difference from the hall's IT power."""
    physics = SitePhysics(quiet())
    t = 1.0
    free = physics.advance(t)
    share = free.hall_demand_w[0] * physics.rack_weights[0][7]
    physics.set_rack_limit(t, 0, 7, share - 100e3)
    capped = physics.advance(t + 1.0)
    assert capped.hall_w[0] == pytest.approx(free.hall_w[0] - 100e3)
    assert capped.hall_w[1] == pytest.approx(free.hall_w[1])
    assert physics.rack_power_w(capped, 0, 7) == pytest.approx(share - 100e3)
    physics.set_rack_limit(t + 1.0, 0, 7, None)
    assert physics.advance(t + 2.0).hall_w[0] == pytest.approx(free.hall_w[0])


def test_rack_energies_add_up_to_the_hall_energy() -> None:
    """Each rack's energy is its share of the hall's, less what its limit held back."""
    physics = SitePhysics(quiet())
    run(physics, 10.0)
    truth = physics.truth_at(10.0)
    racks = sum(physics.rack_energy_j(truth, 1, r) for r in range(len(physics.rack_weights[1])))
    assert racks == pytest.approx(50 * MW * 10.0, rel=1e-6)
