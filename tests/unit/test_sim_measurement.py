"""What the twin's meters show: refreshed window means from the physics' energy counters.

Pure: a :class:`SitePhysics` driven in simulated time, no sockets, no clock.
"""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pswd_gateway.simulation.config import (
    BessSimConfig,
    GridSimConfig,
    SimulationConfig,
    TraceConfig,
)
from pswd_gateway.simulation.measurement import (
    METER_NOISE_STREAM,
    BessView,
    MeterView,
    refresh_index,
    refresh_instant,
    shown_range,
    window_mean,
)
from pswd_gateway.simulation.physics import SitePhysics

MW = 1e6
T = 0.020


def moving(**grid: object) -> SimulationConfig:
    """The demo jobs (a load that moves in 40 ms edges) with the physics' own noise off."""
    g: dict[str, object] = {"noise_mw": 0.0, "meter_noise_mw": 0.0, **grid}
    return SimulationConfig.model_validate({"grid": g})


def quiet() -> SimulationConfig:
    """A constant 100 MW load: only what a test commands moves."""
    return SimulationConfig(
        grid=GridSimConfig(noise_mw=0.0, meter_noise_mw=0.0, frequency_wander_hz=0.0, events=()),
        trace=TraceConfig(baseline_mw=100.0, jobs=()),
        # a PCS slower than the meter's window, whatever the defaults are
        bess=BessSimConfig(response_delay_ms=20.0, response_ms=60.0),
    )


def run(physics: SitePhysics, until: float, step: float = 0.013) -> None:
    t = physics.latest.t
    while t < until:
        t = min(until, t + step)
        physics.advance(t)


def net_import_j(physics: SitePhysics, t: float) -> float:
    truth = physics.truth_at(t)
    return truth.grid_import_j - truth.grid_export_j


# ------------------------------------------------------------------------- refresh instants


@given(
    k=st.integers(min_value=0, max_value=10_000_000_000), period_ms=st.sampled_from([1, 20, 200])
)
def test_a_refresh_instant_counts_as_on_itself_despite_binary_floats(
    k: int, period_ms: int
) -> None:
    """``k·T`` computed in floating point is refresh ``k`` (0.06 / 0.02 is 2.9999999999999996
    in binary, yet 0.06 s is the third 20 ms refresh), and just before it is refresh k - 1."""
    period = period_ms / 1000.0
    assert refresh_index(k * period, period) == k
    assert refresh_instant(k * period + 0.5 * period, period) == pytest.approx(k * period)
    if 0 < k < 10_000_000:  # beyond, a microsecond of a period is lost in the rounding
        assert refresh_index(k * period - 1e-6 * period, period) == k - 1


def test_without_a_refresh_period_the_instant_is_the_request_itself() -> None:
    """refresh 0 = off: the meter shows the instantaneous truth."""
    physics = SitePhysics(moving(meter_refresh_ms=0.0))
    meter = MeterView.from_config(physics)
    run(physics, 21.0)
    for t in (20.0, 20.0037, 20.011):
        assert meter.refresh_instant(t) == t
        assert meter.active_power_w(t) == physics.truth_at(t).grid_w


# ------------------------------------------------------------------------------ grid meter


@settings(max_examples=60, deadline=None)
@given(t=st.floats(min_value=0.2, max_value=30.0), refresh_ms=st.sampled_from([5, 20, 100]))
def test_the_meter_shows_the_mean_power_of_the_window_just_ended(t: float, refresh_ms: int) -> None:
    """W is (E(r) - E(r - T)) / T from the physics' import and export counters, r being the last
    refresh at or before t; it lies within the instantaneous power's range over the window."""
    period = refresh_ms / 1000.0
    physics = SitePhysics(moving(meter_refresh_ms=float(refresh_ms)))
    meter = MeterView.from_config(physics)
    run(physics, t + 0.1, step=0.5)
    r = math.floor(t / period + 1e-9) * period
    expected = (net_import_j(physics, r) - net_import_j(physics, r - period)) / period
    shown = meter.reading(t)
    assert shown.t == pytest.approx(r)
    assert shown.w == pytest.approx(expected, rel=1e-12)
    samples = [physics.truth_at(r - period + period * i / 50).grid_w for i in range(51)]
    # each sample and each counter is integrated along its own cut of the time into steps; the
    # thermal plant's lags (input held at each step's mean) make powers differ by tens of W and
    # counters by a few J from cut to cut, which a 5 ms window turns into kW (7.3 J seen)
    slack_w = 1e3 + 50.0 / period
    assert min(samples) - slack_w <= shown.w <= max(samples) + slack_w
    assert shown.w == window_mean(
        physics, lambda truth: truth.grid_import_j - truth.grid_export_j, r, period
    )


@settings(max_examples=40, deadline=None)
@given(k=st.integers(min_value=1, max_value=1400), into=st.floats(min_value=0.0, max_value=0.999))
def test_meter_values_hold_between_refreshes_and_change_at_refresh_instants(
    k: int, into: float
) -> None:
    """Anywhere in [k·T, (k+1)·T) the registers show refresh k's values — W, var, V and Hz
    alike — and at (k+1)·T the next ones (the load moves, so they differ)."""
    physics = SitePhysics(moving())
    meter = MeterView.from_config(physics)
    start = 20.0 + k * T  # inside the first job, where the load moves
    run(physics, start + 2 * T, step=0.5)
    held = meter.reading(start)
    assert meter.reading(start + into * T) == held
    assert held.t == pytest.approx(start)
    assert held.frequency_hz == physics.truth_at(held.t).frequency_hz
    assert held.voltage_v == physics.truth_at(held.t).grid_voltage_v
    assert held.var == pytest.approx(abs(held.w) * physics.tan_phi)
    following = meter.reading(start + T)
    assert following.t == pytest.approx(start + T)
    assert following.w != held.w


def test_a_load_edge_reaches_the_meter_one_window_mean_at_a_time() -> None:
    """Across a 40 ms edge of 180 MW the meter steps through window means: it never shows a
    value before the edge's refresh, and shows the full swing one window after the edge."""
    physics = SitePhysics(quiet())
    meter = MeterView.from_config(physics)
    physics.advance(5.0)
    physics.command_bess(5.0, enabled=True, setpoint_w=-60 * MW)  # 60 MW more import
    run(physics, 6.0)
    before = meter.active_power_w(5.0)
    assert before == pytest.approx(physics.truth_at(5.0).grid_w)
    # dead time 20 ms: the window [5.00, 5.02] is all before the PCS moves
    assert meter.active_power_w(5.02) == pytest.approx(before, abs=1.0)
    middle = meter.active_power_w(5.06)
    assert before < middle < before + 60 * MW
    assert meter.active_power_w(5.5) == pytest.approx(before + 60 * MW, rel=1e-6)


def test_energy_registers_refresh_at_their_own_period() -> None:
    """TotWhAbs/TotWhInj hold the counters of the last whole second while W moves every 20 ms."""
    physics = SitePhysics(moving(meter_energy_refresh_ms=1000.0))
    meter = MeterView.from_config(physics)
    run(physics, 13.5)
    at_12 = meter.energy_j(12.0)
    truth = physics.truth_at(12.0)
    assert (at_12.imported_j, at_12.exported_j) == (truth.grid_import_j, truth.grid_export_j)
    for t in (12.02, 12.5, 12.999):
        assert meter.energy_j(t) == at_12
    assert meter.energy_j(13.0).imported_j > at_12.imported_j
    assert meter.reading(12.5).t == pytest.approx(12.5)  # the power refreshes on its own


def test_meter_noise_is_seeded_per_refresh_and_of_the_configured_size() -> None:
    """The noise is a pure function of (seed, refresh index): the same seed gives the same
    readings, another seed others; its spread is meter_noise_mw."""
    cfg = moving(meter_noise_mw=0.1)

    def readings(seed: int) -> list[float]:
        physics = SitePhysics(cfg.model_copy(update={"seed": seed}))
        meter = MeterView.from_config(physics)
        run(physics, 11.0)
        return [meter.active_power_w(1.0 + i * T) for i in range(500)]

    assert readings(5) == readings(5)
    assert readings(5) != readings(6)
    physics = SitePhysics(cfg)
    noisy = MeterView.from_config(physics)
    clean = MeterView(physics, T, 0.0, physics.seed, METER_NOISE_STREAM)
    run(physics, 11.0)
    residual = [
        noisy.active_power_w(1.0 + i * T) - clean.active_power_w(1.0 + i * T) for i in range(500)
    ]
    assert statistics.pstdev(residual) == pytest.approx(0.1 * MW, rel=0.2)
    assert abs(statistics.fmean(residual)) < 0.03 * MW


def test_a_cached_reading_is_not_changed_by_a_later_command() -> None:
    """A reading taken at t equals one computed afresh after commands given at t and later:
    the window [r - T, r] lies before them."""
    physics = SitePhysics(moving())
    meter = MeterView.from_config(physics)
    run(physics, 10.01)
    seen = meter.reading(10.01)
    physics.command_bess(10.01, enabled=True, setpoint_w=200 * MW)
    run(physics, 12.0)
    assert meter.reading(10.01) == seen
    assert MeterView.from_config(physics).reading(10.01) == seen


def test_a_reading_asked_for_before_the_physics_got_there_is_not_kept() -> None:
    """Asked ahead of the physics, the meter answers what the site will do without new
    commands, and does not keep it: once a command changes the future the answer follows."""
    physics = SitePhysics(quiet())
    meter = MeterView.from_config(physics)
    physics.advance(1.0)
    ahead = meter.active_power_w(1.5)
    physics.command_bess(1.0, enabled=True, setpoint_w=50 * MW)
    run(physics, 2.0)
    assert meter.active_power_w(1.5) == pytest.approx(ahead - 50 * MW, rel=1e-6)


def test_shown_range_covers_every_refresh_in_flight() -> None:
    """The range of what the meter showed between two instants holds every value it showed."""
    physics = SitePhysics(moving())
    meter = MeterView.from_config(physics)
    run(physics, 21.0)
    lo, hi = shown_range(meter.active_power_w, 20.005, 20.5, T)
    values = [meter.active_power_w(20.005 + i * 0.001) for i in range(496)]
    assert lo == min(values)
    assert hi == max(values)


# ------------------------------------------------------------------------------------ BESS


@settings(max_examples=40, deadline=None)
@given(t=st.floats(min_value=1.0, max_value=3.0))
def test_the_pcs_shows_the_mean_power_of_its_window_and_the_soc_at_the_refresh(t: float) -> None:
    """PCS W is (discharged - charged)(r) minus the same at r - T, over T; SoC is the refresh's."""
    physics = SitePhysics(quiet())
    bess = BessView.from_config(physics)
    physics.command_bess(1.0, enabled=True, setpoint_w=120 * MW)
    run(physics, 3.1)
    r = math.floor(t / T + 1e-9) * T

    def net(at: float) -> float:
        truth = physics.truth_at(at)
        return truth.bess_discharged_j - truth.bess_charged_j

    assert bess.power_w(t) == pytest.approx((net(r) - net(r - T)) / T, rel=1e-12, abs=1e-6)
    assert bess.soc(t) == physics.truth_at(r).soc
    assert bess.reading(t) == bess.reading(r)


def test_the_pcs_measurement_trails_a_setpoint_by_dead_time_response_and_one_window() -> None:
    """After a 100 MW setpoint at 1 s: nothing shown through the dead time's window, the full
    value once the power has settled and a whole window has passed."""
    cfg = quiet().model_copy(
        update={"bess": BessSimConfig(response_delay_ms=20.0, response_ms=60.0)}
    )
    physics = SitePhysics(cfg)
    bess = BessView.from_config(physics)
    physics.command_bess(1.0, enabled=True, setpoint_w=100 * MW)
    run(physics, 2.0)
    assert bess.power_w(1.02) == 0.0
    assert 0.0 < bess.power_w(1.06) < 100 * MW
    assert bess.power_w(1.5) == pytest.approx(100 * MW, rel=1e-6)


def test_pcs_values_hold_between_refreshes() -> None:
    """W and SoC change only at the PCS's refresh instants (every measurement_refresh_ms)."""
    cfg = quiet().model_copy(update={"bess": BessSimConfig(measurement_refresh_ms=100.0)})
    physics = SitePhysics(cfg)
    bess = BessView.from_config(physics)
    physics.command_bess(0.5, enabled=True, setpoint_w=-200 * MW)
    run(physics, 3.0)
    held = bess.reading(2.0)
    assert all(bess.reading(2.0 + i * 0.01) == held for i in range(10))
    assert bess.soc(2.1) > held.soc  # charging: the next refresh shows more
