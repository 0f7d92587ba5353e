"""The grid loop between readings and setpoints: one instant, one step per measurement, the
guard, staleness. Cycle tables in the style of OpenEMS's ControllerTest: inputs per cycle,
expected setpoint per cycle, on a fake clock."""

from __future__ import annotations

import dataclasses

import pytest

from pswd_gateway.control.grid import Announced, GridSettings
from pswd_gateway.control.loop import GridLoop, LoopSettings

MW = 1e6
S = GridSettings(
    ramp_limit_w_per_s=20 * MW,
    import_limit_w=320 * MW,
    bess_rated_w=250 * MW,
    bess_capacity_j=120 * 3.6e9,
    payback_s=0.0,
)


def step(loop: GridLoop, t: float, grid_mw: float, received: float | None = None) -> float | None:
    out = loop.step(
        t,
        grid_mw * MW,
        received=t + 0.03 if received is None else received,
        soc=0.5,
        bess_available=True,
        jobs=(),
        settings=S,
    )
    return None if out.setpoint_w is None else out.setpoint_w / MW


def test_cycle_table_a_step_measured_at_one_instant() -> None:
    """(t, battery reading, meter reading) per cycle → the setpoint written."""
    loop = GridLoop()
    table = [
        # t      battery  meter   expected setpoint (MW)
        (10.00, 0.0, 100.0, 0.0),
        (10.02, 0.0, 300.0, 200.0),  # an unannounced 200 MW step: the battery takes it
        (10.04, 200.0, 100.0, 200.0),  # the battery delivered: same load, same setpoint
        (10.06, 200.0, 100.4, 200.0),  # the plan rose 0.4 MW (14 MW/s x 20 ms): the grid too
    ]
    for t, bess, meter, expected in table:
        loop.battery(t, bess * MW)
        got = step(loop, t, meter)
        assert got == pytest.approx(expected, abs=0.6), (t, got)


def test_the_battery_is_taken_at_the_meters_measurement_instant() -> None:
    loop = GridLoop()
    loop.battery(10.00, 0.0)
    step(loop, 10.0, 100.0)
    loop.battery(10.04, 100 * MW)  # the battery moved from 0 to 100 MW over 40 ms
    # the meter measured at 10.02 (half way): the battery was at 50 MW then, not 100
    assert loop.battery_at(10.02) == pytest.approx(50 * MW)
    setpoint = step(loop, 10.02, 150.0)  # load = 150 + 50 = 200 MW, plan ~100
    assert setpoint == pytest.approx(100.0, abs=0.5)


def test_a_meter_reading_ahead_of_the_battery_waits_for_its_next_reading() -> None:
    loop = GridLoop(LoopSettings(max_skew_s=0.005))
    loop.battery(10.0, 0.0)
    step(loop, 10.0, 100.0)
    out = loop.step(
        10.04, 120 * MW, received=10.05, soc=0.5, bess_available=True, jobs=(), settings=S
    )
    assert out.setpoint_w is None
    assert out.skipped is not None
    assert "waiting" in out.skipped
    assert loop.waiting == 10.04
    assert loop.battery(10.05, 0.0)  # now the meter reading can be stepped
    assert step(loop, 10.04, 120.0) == pytest.approx(20.0, abs=0.5)
    assert loop.waiting is None


def test_a_repeated_measurement_is_not_stepped_twice() -> None:
    loop = GridLoop()
    loop.battery(10.0, 0.0)
    assert step(loop, 10.0, 100.0) is not None
    assert step(loop, 10.0, 100.0) is None
    assert not loop.is_new(10.0)


def test_without_new_meter_measurements_the_battery_ramps_to_zero() -> None:
    loop = GridLoop(LoopSettings(stale_s=0.5))
    loop.battery(10.0, 0.0)
    step(loop, 10.0, 100.0, received=10.0)
    loop.battery(10.02, 0.0)
    assert step(loop, 10.02, 200.0, received=10.02) == pytest.approx(100.0, abs=0.5)
    assert loop.idle(10.3, S).setpoint_w is None  # not stale yet
    first = loop.idle(10.6, S)
    assert first.skipped is not None
    assert first.setpoint_w == pytest.approx(100 * MW, rel=0.01)
    later = loop.idle(11.6, S).setpoint_w
    assert later == pytest.approx(100 * MW - S.planning_ramp_w_per_s * 1.0, rel=0.01)
    assert loop.idle(30.0, S).setpoint_w == 0.0
    assert loop.state is None  # the limiter starts afresh from the next reading


def test_a_battery_that_does_the_opposite_of_its_setpoint_cannot_make_the_loop_ring() -> None:
    """Grid + battery at one instant is the load, whatever the battery does: no feedback."""
    loop = GridLoop()
    bess = 0.0
    for k in range(200):
        t = 100.0 + 0.02 * k
        loop.battery(t, bess)
        out = loop.step(
            t, 100 * MW - bess, received=t, soc=0.5, bess_available=True, jobs=(), settings=S
        )
        assert out.event is None
        bess = -(out.setpoint_w or 0.0) * 1.5
    assert abs(loop.setpoint_w) < 1.0


def ring(loop: GridLoop, t: float, cycles: int) -> tuple[float, list[object]]:
    """A loop fed a battery reading stamped 100 ms later than it was measured (a device whose
    averaging the gateway was not told of): the load estimate lags the battery, an integrator
    with delay, and it rings."""
    events: list[object] = []
    history = [0.0] * 6
    for k in range(cycles):
        t += 0.02
        loop.battery(t, history[-6])  # what the battery did 100 ms ago, stamped now
        load = 150 * MW if k >= 5 else 100 * MW  # a 50 MW step sets it off
        grid = load - history[-1]
        out = loop.step(t, grid, received=t, soc=0.5, bess_available=True, jobs=(), settings=S)
        if out.event is not None:
            events.append(out.event)
        history.append(loop.setpoint_w)  # an ideal battery does what it is told at once
    return t, events


def test_a_ringing_loop_is_put_in_safe_mode_and_re_armed_later() -> None:
    loop = GridLoop()
    loop.battery(100.0, 0.0)
    step(loop, 100.0, 100.0)
    loop.battery(100.0, 0.0)
    t, events = ring(loop, 100.0, 300)
    assert events
    first = events[0]
    assert first.tripped  # type: ignore[attr-defined]
    assert loop.guard.tripped
    # in safe mode the setpoint is the guard's, whatever the readings say
    held = loop.setpoint_w
    t += 0.02
    loop.battery(t, 0.0)
    out = loop.step(t, 50 * MW, received=t, soc=0.5, bess_available=True, jobs=(), settings=S)
    assert out.skipped == "safe mode"
    assert out.setpoint_w == pytest.approx(held, abs=abs(held) * 0.05 + 1.0)
    # after the wait the loop controls again, from the reading it gets
    t = first.at + loop.guard.wait_s + 0.01  # type: ignore[attr-defined]
    loop.battery(t, 0.0)
    out = loop.step(t, 100 * MW, received=t, soc=0.5, bess_available=True, jobs=(), settings=S)
    assert out.event is not None
    assert not out.event.tripped
    assert not loop.guard.tripped


def test_an_unavailable_battery_is_left_idle() -> None:
    loop = GridLoop()
    out = loop.step(
        10.0, 100 * MW, received=10.0, soc=None, bess_available=False, jobs=(), settings=S
    )
    assert out.setpoint_w == 0.0
    assert out.decision is not None
    assert out.decision.binding == "bess_unavailable"


def test_the_pay_back_follows_the_meters_measurement_times_not_the_cycles() -> None:
    """Readings 20 ms apart on the meter's clock: the pay-back integrates 20 ms, whenever the
    cycle ran (the old loop used the cycle's clock and paid back counter increments that did
    not line up with it)."""
    s = dataclasses.replace(S, payback_s=0.5)
    loop = GridLoop()
    loop.battery(10.0, 0.0)
    loop.step(10.0, 100 * MW, received=10.5, soc=0.5, bess_available=True, jobs=(), settings=s)
    loop.battery(10.02, 0.0)
    out = loop.step(
        10.02, 300 * MW, received=11.7, soc=0.5, bess_available=True, jobs=(), settings=s
    )
    assert out.decision is not None
    assert out.decision.payback_w == pytest.approx(200 * MW * 0.02 / 0.5, rel=0.01)


def test_a_lead_puts_an_announced_edge_on_the_battery_without_waiting_for_a_reading() -> None:
    """The timer runs `actuation_s` before the middle of an announced 40 ms start: the job's
    first phase goes on the battery then, once; the next reading decides afresh and keeps it."""
    job = Announced(100.0, 700.0, 110 * MW, 5000 * MW, peak_w=200 * MW)
    loop = GridLoop(LoopSettings(actuation_s=0.03))

    def at(t: float, grid_mw: float, received: float) -> float | None:
        loop.battery(t, 0.0)
        out = loop.step(
            t, grid_mw * MW, received=received, soc=0.5, bess_available=True,
            jobs=(job,), settings=S,
        )  # fmt: skip
        return None if out.setpoint_w is None else out.setpoint_w / MW

    before = at(99.90, 100.0, 99.92)
    assert loop.next_edge(99.92, (job,)) == pytest.approx(100.02 - 0.03)
    assert before is not None
    assert loop.lead(99.97, (job,), S).setpoint_w is None  # before its middle is in reach
    led = loop.lead(99.99, (job,), S)
    assert led.setpoint_w is not None
    assert led.setpoint_w / MW - before == pytest.approx(200.0, abs=0.5)
    assert loop.lead(99.995, (job,), S).setpoint_w is None  # once
    # a reading measured before the edge, arriving after the lead, keeps the edge on
    after = at(99.96, 100.0, 99.98)
    assert after == pytest.approx(led.setpoint_w / MW, abs=1.5)  # the plan moved 60 ms on
    assert loop.next_edge(100.0, (job,)) == pytest.approx(700.0 - job.rise_s / 2 - 0.03)


def test_a_lead_whose_time_passed_while_the_cycle_was_held_up_is_run_late_not_dropped() -> None:
    """The cycle was waiting out a lost write's reply when a lead fell due: while the edge's
    middle is still ahead the lead is due at once (and once); after its middle it is not."""
    job = Announced(100.0, 700.0, 110 * MW, 5000 * MW, peak_w=200 * MW)
    loop = GridLoop(LoopSettings(actuation_s=0.03))
    loop.battery(99.90, 0.0)
    loop.step(
        99.90, 100 * MW, received=99.92, soc=0.5, bess_available=True, jobs=(job,), settings=S
    )
    due = 100.02 - 0.03
    assert loop.next_edge(100.0, (job,)) != pytest.approx(due)  # the old question: none ahead
    late = loop.next_edge(100.0, (job,), led_to=99.0)
    assert late == pytest.approx(due)  # late, not lost
    assert loop.next_edge(100.0, (job,), led_to=late) != pytest.approx(due)  # run already
    assert loop.next_edge(100.03, (job,), led_to=99.0) != pytest.approx(due)  # edge is past
    assert loop.lead(100.0, (job,), S).setpoint_w is not None


def test_a_reading_measured_across_a_led_edge_is_not_a_correction() -> None:
    """The lead put a 40 ms, 200 MW start on the battery. The meter's 20 ms mean across the
    edge shows half of it while the battery's reading shows all of it: their sum says the load
    is 100 MW short, and a step would take 100 MW off the battery just after the edge (the
    grid's spike after a led start). Readings whose windows reach into the edge are held; the
    first one past it is stepped, and keeps the lead. Without the lead the first is stepped."""
    job = Announced(100.0, 700.0, 110 * MW, 5000 * MW, peak_w=200 * MW)  # edge 100.00-100.04

    def run(*, lead: bool) -> list[float | None]:
        loop = GridLoop(LoopSettings(actuation_s=0.03, measure_window_s=0.02))

        def at(t: float, grid_mw: float, bess_mw: float) -> float | None:
            loop.battery(t, bess_mw * MW)
            out = loop.step(t, grid_mw * MW, received=t + 0.005, soc=0.5, bess_available=True,
                            jobs=(job,), settings=S)  # fmt: skip
            return None if out.setpoint_w is None else out.setpoint_w / MW

        got = [at(99.90, 100.0, 0.0)]
        if lead:
            assert loop.lead(99.99, (job,), S).setpoint_w is not None
        got += [at(100.03, 0.0, 200.0), at(100.05, 100.0, 200.0), at(100.07, 100.0, 200.0)]
        # unled, the first reading across the edge is stepped, and its feed-forward puts the
        # edge's rest on the battery: the next one is held as after a lead
        assert loop.held_total == (2 if lead else 1)
        return got

    before, across, closing, past = run(lead=True)
    assert before is not None
    assert across is None  # not stepped: held at the lead's setpoint
    assert closing is None  # its window still reaches the edge's end
    assert past == pytest.approx(before + 200.0, abs=4.0)  # the plan moved 170 ms on
    _, unled, _, _ = run(lead=False)
    assert unled is not None  # an edge that is not on the battery is the reactive loop's


def test_a_step_held_up_decides_for_when_its_setpoint_acts_not_for_when_its_reading_came() -> None:
    """A reading received 40 ms before the run that steps it (the cycle was held up): the
    setpoint acts ``actuation_s`` after the run, past the announced edge's middle, so the edge
    is in it."""
    job = Announced(100.0, 700.0, 110 * MW, 5000 * MW, peak_w=200 * MW)

    def stepped(now: float | None) -> float:
        loop = GridLoop(LoopSettings(actuation_s=0.03))
        for k in range(20):
            t = 99.5 + 0.02 * k
            loop.battery(t, 0.0)
            loop.step(t, 100 * MW, received=t + 0.005, soc=0.5, bess_available=True,
                      jobs=(job,), settings=S)  # fmt: skip
        loop.battery(99.94, 0.0)
        out = loop.step(
            99.94, 100 * MW, received=99.95, now=now, soc=0.5, bess_available=True,
            jobs=(job,), settings=S,
        )  # fmt: skip
        assert out.setpoint_w is not None
        return out.setpoint_w / MW

    on_time, held_up = stepped(None), stepped(99.99)
    assert held_up - on_time == pytest.approx(200.0, abs=2.0)


def test_no_lead_before_the_loop_has_decided_or_in_safe_mode() -> None:
    job = Announced(100.0, 700.0, 110 * MW, 5000 * MW)
    loop = GridLoop()
    assert loop.lead(99.97, (job,), S).setpoint_w is None
