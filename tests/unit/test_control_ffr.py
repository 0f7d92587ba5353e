"""Fast frequency response: the droop curve and its ramp (properties), the grid loop carrying
it as a shift of its plan, the cycle feeding it the meter's frequency, and its settings."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pswd_gateway.config import ControlConfig, FfrConfig, GatewayConfig, SiteConfig
from pswd_gateway.control.battery import ffr_settings
from pswd_gateway.control.cycle import ControlCycle
from pswd_gateway.control.ffr import Ffr, FfrSettings, droop_w
from pswd_gateway.control.grid import GridReading, GridSettings, LimiterState, grid_step
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.domain.units import SiUnit, from_mwh
from pswd_gateway.simulation.config import GridSimConfig
from pswd_gateway.simulation.physics import scripted_hz
from pswd_gateway.store import PointStore

MW = 1e6
CURVE = FfrSettings(
    enabled=True,
    nominal_hz=50.0,
    deadband_hz=0.015,
    droop_pct=1.0,
    p_ref_w=100 * MW,
    max_w=50 * MW,
    ramp_w_per_s=100 * MW,
    max_age_s=0.5,
)
"""1 % droop on 100 MW: 0.2 Hz beyond the deadband asks for 40 MW; at most 50 MW."""

curves = st.builds(
    FfrSettings,
    nominal_hz=st.sampled_from([50.0, 60.0]),
    deadband_hz=st.floats(0.0, 0.2),
    droop_pct=st.floats(0.1, 10.0),
    p_ref_w=st.floats(1 * MW, 500 * MW),
    max_w=st.floats(1 * MW, 500 * MW),
    ramp_w_per_s=st.floats(1 * MW, 1000 * MW),
    max_age_s=st.floats(0.05, 2.0),
).map(lambda c: dataclasses.replace(c, enabled=True))
offsets = st.floats(-3.0, 3.0, allow_nan=False)


# ---- the curve -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hz", "expected_mw"),
    [
        (50.0, 0.0),
        (49.985, 0.0),  # on the deadband's edge
        (50.015, 0.0),
        (49.785, 40.0),  # 0.2 Hz below the deadband: 0.2 / (1 % of 50) of 100 MW
        (50.215, -40.0),  # above: the import is raised
        (49.0, 50.0),  # capped at max
        (51.0, -50.0),
    ],
)
def test_the_curve_is_a_droop_beyond_the_deadband_capped_at_max(
    hz: float, expected_mw: float
) -> None:
    assert droop_w(hz, CURVE) == pytest.approx(expected_mw * MW, abs=1.0)


def test_a_curve_not_enabled_asks_for_nothing() -> None:
    assert droop_w(49.0, dataclasses.replace(CURVE, enabled=False)) == 0.0


@given(curves, offsets)
def test_inside_the_deadband_there_is_no_response(curve: FfrSettings, offset: float) -> None:
    hz = curve.nominal_hz + max(-curve.deadband_hz, min(offset, curve.deadband_hz))
    assert droop_w(hz, curve) == 0.0


@given(curves, offsets, offsets)
def test_the_response_falls_as_the_frequency_rises_and_never_passes_max(
    curve: FfrSettings, a: float, b: float
) -> None:
    low, high = sorted((curve.nominal_hz + a, curve.nominal_hz + b))
    assert droop_w(low, curve) >= droop_w(high, curve)
    for hz in (low, high):
        response = droop_w(hz, curve)
        assert abs(response) <= curve.max_w
        # under-frequency lowers the import, over-frequency raises it
        assert response >= 0.0 if hz < curve.nominal_hz else response <= 0.0


@given(
    curves,
    st.lists(
        st.tuples(st.floats(0.0, 0.5), offsets, st.booleans(), st.floats(0.0, 3.0)),
        min_size=1,
        max_size=60,
    ),
)
@settings(max_examples=200)
def test_the_response_in_force_never_moves_faster_than_its_ramp(
    curve: FfrSettings, steps: list[tuple[float, float, bool, float]]
) -> None:
    """Whatever the frequency does — steps, stale or missing readings, time standing still —
    the response moves by at most ramp x dt per step, and stays within max."""
    ffr = Ffr(curve)
    t = 1000.0
    previous = ffr.step(t, curve.nominal_hz, t)
    assert previous == 0.0
    for dt, offset, present, age in steps:
        t += dt
        hz = curve.nominal_hz + offset if present else None
        now = ffr.step(t, hz, t - age if present else None)
        assert abs(now - previous) <= curve.ramp_w_per_s * dt * (1 + 1e-9) + 1.0  # W_EPS
        assert abs(now) <= curve.max_w * (1 + 1e-9)
        previous = now


def test_a_stale_or_missing_frequency_ramps_the_response_to_zero_not_a_jump() -> None:
    ffr = Ffr(CURVE)
    t = 0.0
    ffr.step(t, 49.785, t)
    for _ in range(10):  # 1 s at 100 MW/s: the whole 40 MW
        t += 0.1
        ffr.step(t, 49.785, t)
    assert ffr.response_w == pytest.approx(40 * MW)
    t += 0.1
    assert ffr.step(t, 49.785, t - 0.6) == pytest.approx(30 * MW)  # older than 0.5 s
    t += 0.1
    assert ffr.step(t, None, None) == pytest.approx(20 * MW)  # implausible
    t += 0.1
    assert ffr.step(t, math.nan, t) == pytest.approx(10 * MW)
    assert ffr.active


def test_reshaping_moves_to_the_new_curve_at_its_ramp() -> None:
    """The seam the operator's grid signal will use: disabling ramps out, not a jump."""
    ffr = Ffr(CURVE)
    for k in range(20):
        ffr.step(k * 0.1, 49.785, k * 0.1)
    ffr.shape(dataclasses.replace(CURVE, enabled=False, ramp_w_per_s=200 * MW))
    assert ffr.step(2.0, 49.785, 2.0) == pytest.approx(20 * MW)
    assert ffr.step(2.1, 49.785, 2.1) == pytest.approx(0.0)
    assert not ffr.active


# ---- the grid loop carries it ------------------------------------------------------------

S = GridSettings(
    ramp_limit_w_per_s=20 * MW,
    import_limit_w=320 * MW,
    bess_rated_w=250 * MW,
    bess_capacity_j=120 * 3.6e9,
    payback_s=0.0,
)


def settled(load_mw: float = 200.0, soc: float = 0.5) -> LimiterState:
    """A limiter that holds the grid at the load (the battery idle)."""
    return LimiterState(0.0, load_mw * MW, load_mw * MW, load_mw * MW)


def reading(
    ffr_mw: float, load_mw: float = 200.0, bess_mw: float = 0.0, soc: float = 0.5
) -> GridReading:
    return GridReading(
        0.1, (load_mw - bess_mw) * MW, bess_mw * MW, soc, acting_at=0.1, ffr_w=ffr_mw * MW
    )


@pytest.mark.parametrize("ffr_mw", [40.0, -40.0])
def test_the_response_shifts_the_plan_and_the_battery_carries_it_at_once(ffr_mw: float) -> None:
    """Under-frequency: the import drops by the response at once (the grid's ramp rule is
    waived for it), the battery discharges it; over-frequency: the reverse. No fallback."""
    d = grid_step(settled(), reading(ffr_mw), (), S)
    assert d.bess_setpoint_w == pytest.approx(ffr_mw * MW, abs=0.5 * MW)
    assert d.grid_plan_w == pytest.approx((200 - ffr_mw) * MW, abs=0.5 * MW)
    assert d.ffr_w == pytest.approx(ffr_mw * MW)
    assert d.fallback is None
    assert d.binding is None
    # the limiter's own plan is untouched: the response is not a ramp of the load
    assert d.state.grid_w == pytest.approx(200 * MW, abs=0.5 * MW)
    assert d.state.grid_w - d.state.ffr_w == pytest.approx(d.grid_plan_w)


def test_the_response_takes_only_the_headroom_the_rating_leaves() -> None:
    # the battery already discharges 230 MW for the plan: 20 MW of headroom
    d = grid_step(settled(), reading(40.0, load_mw=430.0, bess_mw=230.0), (), S)
    assert d.bess_setpoint_w == pytest.approx(250 * MW, abs=0.5 * MW)
    assert d.ffr_w == pytest.approx(20 * MW, abs=0.5 * MW)


@pytest.mark.parametrize(("ffr_mw", "soc"), [(40.0, 0.1), (-40.0, 0.9)])
def test_the_response_never_takes_the_battery_out_of_its_soc_window(
    ffr_mw: float, soc: float
) -> None:
    """An empty battery does not discharge for the response, nor a full one charge."""
    d = grid_step(settled(), reading(ffr_mw, soc=soc), (), S)
    assert d.bess_setpoint_w == 0.0
    assert d.ffr_w == 0.0
    assert d.grid_plan_w == pytest.approx(200 * MW, abs=0.5 * MW)


def test_an_over_frequency_response_never_raises_the_import_past_its_limit() -> None:
    d = grid_step(settled(300.0), reading(-40.0, load_mw=300.0), (), S)
    assert d.grid_plan_w == pytest.approx(320 * MW, abs=0.5 * MW)
    assert d.ffr_w == pytest.approx(-20 * MW, abs=0.5 * MW)


# ---- the cycle feeds it the meter's frequency --------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


SITE = SiteConfig(grid_meter="meter", bess="bess", thermal=None, it_load=())
FFR_ON = ControlConfig(
    enabled=True,
    ffr=FfrConfig(enabled=True, p_ref_mw=100.0, max_mw=50.0, ramp_mw_per_s=100.0),
)


def feed(store: PointStore, t: float, hz: float, hz_ts: float | None = None, bess_w: float = 0.0,
         quality: Quality = Quality.GOOD) -> None:  # fmt: skip
    """One meter measurement at ``t`` (the frequency measured at ``hz_ts``), and the battery."""
    values = {
        "meter.active_power": (200 * MW - bess_w, SiUnit.WATT, t),
        "meter.frequency": (hz, SiUnit.HERTZ, t if hz_ts is None else hz_ts),
        "bess.active_power": (bess_w, SiUnit.WATT, t),
        "bess.soc": (0.5, SiUnit.RATIO, t),
        "bess.power_rating": (250 * MW, SiUnit.WATT, t),
        "bess.energy_rating": (from_mwh(120.0), SiUnit.JOULE, t),
    }
    store.update(
        Point(name, v, unit, quality if name == "meter.frequency" else Quality.GOOD, ts, t)
        for name, (v, unit, ts) in values.items()
    )


def make_cycle(config: ControlConfig = FFR_ON) -> tuple[ControlCycle, Clock, list[float]]:
    clock = Clock()
    setpoints: list[float] = []

    async def write(device: str, point: str, value: float) -> None:
        if point == "power_setpoint":
            setpoints.append(value)

    cycle = ControlCycle(config, SITE, PointStore(), write, clock=clock)
    return cycle, clock, setpoints


async def run(cycle: ControlCycle, clock: Clock, hz: list[float], dt: float = 0.02, **kw: object
              ) -> list[float]:  # fmt: skip
    """One meter measurement every ``dt`` at each frequency; the response after each."""
    out = []
    for f in hz:
        clock.now += dt
        bess = cycle.loop.setpoint_w  # an ideal battery: it does what it was told
        feed(cycle.store, clock.now, f, bess_w=bess, **kw)  # type: ignore[arg-type]
        await cycle.run_once(received_ts=clock.now)
        out.append(cycle.stats.ffr_response_w)
    return out


async def test_an_under_frequency_step_ramps_the_battery_to_the_curve_at_the_ffr_ramp() -> None:
    cycle, clock, setpoints = make_cycle()
    await run(cycle, clock, [50.0] * 5)
    assert cycle.stats.ffr_response_w == 0.0
    assert not cycle.stats.ffr_active
    response = await run(cycle, clock, [49.785] * 40)  # asks for 40 MW; 2 MW per 20 ms
    assert cycle.stats.ffr_active
    steps = [b - a for a, b in zip([0.0, *response], response, strict=False)]
    assert max(steps) <= 2 * MW + 1.0
    assert response[-1] == pytest.approx(40 * MW)
    assert setpoints[-1] == pytest.approx(40 * MW, abs=1 * MW)  # the battery carries it
    assert cycle.stats.last is not None
    assert cycle.stats.last.grid_plan_w == pytest.approx(160 * MW, abs=1 * MW)
    assert cycle.stats.guard_trips_total == 0


async def test_a_frequency_inside_the_deadband_moves_nothing() -> None:
    cycle, clock, setpoints = make_cycle()
    response = await run(cycle, clock, [49.99, 50.01, 49.986, 50.014] * 10)
    assert response == [0.0] * 40
    assert all(abs(s) < 0.1 * MW for s in setpoints)


@pytest.mark.parametrize("fault", ["stale", "invalid"])
async def test_a_stale_or_invalid_frequency_ramps_the_response_out(fault: str) -> None:
    cycle, clock, _ = make_cycle()
    await run(cycle, clock, [49.785] * 40)
    assert cycle.stats.ffr_response_w == pytest.approx(40 * MW)
    kw: dict[str, object] = (
        {"hz_ts": clock.now} if fault == "stale" else {"quality": Quality.INVALID}
    )
    out = []
    for _ in range(60):
        out += await run(cycle, clock, [49.785], **kw)
    drops = [a - b for a, b in zip([40 * MW, *out], out, strict=False)]
    assert max(drops) <= 2 * MW + 1.0  # ramped, never a jump
    assert out[-1] == 0.0


async def test_ffr_off_by_default_leaves_the_loop_as_it_was() -> None:
    cycle, clock, _ = make_cycle(ControlConfig(enabled=True))
    await run(cycle, clock, [49.0] * 20)
    assert cycle.stats.ffr_response_w == 0.0
    assert not cycle.stats.ffr_active


async def test_the_operator_can_enable_and_shape_the_response_at_run_time() -> None:
    cycle, clock, _ = make_cycle(ControlConfig(enabled=True))
    cycle.shape_ffr(dataclasses.replace(CURVE, max_w=20 * MW, ramp_w_per_s=1000 * MW))
    response = await run(cycle, clock, [49.785] * 5)
    assert response[-1] == pytest.approx(20 * MW)
    cycle.shape_ffr(None)  # back to [control.ffr]: off, ramped out at its ramp
    response = await run(cycle, clock, [49.785] * 10)
    assert response[-1] == 0.0


# ---- settings --------------------------------------------------------------------------------


def test_the_defaults_follow_the_battery_rating() -> None:
    s = ffr_settings(FfrConfig(enabled=True), 50.0, 250 * MW)
    assert (s.p_ref_w, s.max_w, s.ramp_w_per_s) == (250 * MW, 250 * MW, 250 * MW)
    assert (s.deadband_hz, s.droop_pct, s.max_age_s) == (0.015, 1.0, 0.5)
    assert not FfrConfig().enabled


@pytest.mark.parametrize(
    ("ffr", "extra", "message"),
    [
        ({"droop_pct": 0}, {}, "control.ffr.droop_pct"),
        ({"deadband_hz": -0.01}, {}, "control.ffr.deadband_hz"),
        ({"max_mw": 200, "p_ref_mw": 100}, {}, "must not exceed p_ref_mw"),
        ({"max_mw": 200}, {"bess_power_mw": 100}, "ffr.max_mw (200.0) exceeds bess_power_mw"),
        ({"p_ref_mw": 300}, {"bess_power_mw": 100}, "ffr.p_ref_mw (300.0) exceeds"),
        ({"ramp_mw_per_s": 0}, {}, "control.ffr.ramp_mw_per_s"),
        ({"max_frequency_age_ms": 0}, {}, "control.ffr.max_frequency_age_ms"),
        ({"deadband": 0.1}, {}, "control.ffr.deadband"),  # a misspelt key
    ],
)
def test_bad_ffr_settings_are_refused_saying_where(
    ffr: dict[str, float], extra: dict[str, float], message: str
) -> None:
    with pytest.raises(ValidationError) as err:
        GatewayConfig.model_validate({"control": {"ffr": ffr, **extra}})
    assert message in str(err.value)


# ---- the twin's scripted frequency ---------------------------------------------------------


def test_the_twin_follows_its_frequency_script() -> None:
    cfg = GridSimConfig.model_validate(
        {
            "frequency_script": [
                {"at_s": 10.0, "hz": 49.8},
                {"at_s": 20.0, "hz": 50.2, "ramp_s": 4.0},
                {"at_s": 30.0, "hz": 50.0},
            ]
        }
    )
    assert scripted_hz(cfg, 5.0) == 50.0
    assert scripted_hz(cfg, 10.001) == 49.8
    assert scripted_hz(cfg, 22.0) == pytest.approx(50.0)
    assert scripted_hz(cfg, 25.0) == 50.2
    assert scripted_hz(cfg, 40.0) == 50.0


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ([{"at_s": 10.0, "hz": 49.8}, {"at_s": 5.0, "hz": 50.0}], "must come after"),
        ([{"at_s": 10.0, "hz": 49.8, "ramp_s": 6.0}, {"at_s": 15.0, "hz": 50.0}], "past the"),
        ([{"at_s": 10.0, "hz": 70.0}], "less than or equal to 65"),
    ],
)
def test_a_bad_frequency_script_is_refused(script: list[dict[str, float]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GridSimConfig.model_validate({"frequency_script": script})


def test_a_sustained_response_is_not_taken_back_by_the_soc_pull() -> None:
    """A minute of 40 MW discharged for the grid operator: the SoC falls, but the pull back to
    the target does not count that energy, so the import stays lowered by the response."""
    state: LimiterState | None = None
    soc, bess, t = 0.5, 0.0, 0.0
    plans = []
    for _ in range(600):
        t += 0.1
        r = GridReading(t, 200 * MW - bess, bess, soc, acting_at=t, ffr_w=40 * MW)
        d = grid_step(state, r, (), S)
        state, bess = d.state, d.bess_setpoint_w
        soc -= bess * 0.1 / S.bess_capacity_j
        plans.append(d.grid_plan_w)
    assert soc < 0.5 - 0.005  # the battery did give the energy
    assert min(plans[5:]) == pytest.approx(160 * MW, abs=0.1 * MW)
    assert max(plans[5:]) == pytest.approx(160 * MW, abs=0.1 * MW)
