"""The training rhythm learnt from the load: edges found, predicted only while they keep time,
dropped when they do not come, the lead's timing learnt from where the battery lands, and the
grid loop putting a predicted rise on the battery ahead of it."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pswd_gateway.control.grid import Announced, GridSettings
from pswd_gateway.control.loop import GridLoop, LoopSettings, rhythm_of
from pswd_gateway.control.rhythm import Edge, Rhythm, RhythmSettings

MW = 1e6
DEPTH = 180 * MW
LOW = 40 * MW
EDGE = 0.04
SAMPLE = 0.02


def square(t: float, period: float, compute: float, phase: float = 0.0) -> float:
    """A training rhythm: rises at ``phase + k * period`` over 40 ms, computes, falls."""
    x = (t - phase) % period
    if x < EDGE:
        return LOW + DEPTH * x / EDGE
    if x < EDGE + compute:
        return LOW + DEPTH
    if x < 2 * EDGE + compute:
        return LOW + DEPTH * (1 - (x - EDGE - compute) / EDGE)
    return LOW


def rise_middle(t: float, period: float, phase: float = 0.0) -> float:
    """The middle of the next rise after ``t``."""
    k = math.floor((t - phase) / period) + 1
    return phase + k * period + EDGE / 2


def follow(period: float) -> Rhythm:
    rhythm = Rhythm()
    rhythm.follow(period, DEPTH)
    return rhythm


def play(rhythm: Rhythm, until: float, t: float = 0.0) -> float:
    """The demo's rhythm (2.5 s, compute 1.8 s) measured every 20 ms from ``t``; the time
    after the last measurement."""
    while t < until:
        rhythm.observe(t, square(t, 2.5, 1.8))
        t += SAMPLE
    return t


@settings(max_examples=30, deadline=None)
@given(
    period=st.floats(1.0, 5.0),
    duty=st.floats(0.3, 0.8),
    phase=st.floats(0.0, 5.0),
    offset=st.floats(-0.03, 0.03),
)
def test_a_steady_rhythm_is_learnt_and_its_next_rise_predicted_within_the_tolerance(
    period: float, duty: float, phase: float, offset: float
) -> None:
    """Whatever its period, duty and phase (and an announced period a little off), after a
    few periods the next rise is predicted within the tolerance of its middle."""
    rhythm = follow(period + offset)
    rng = random.Random(7)
    compute = duty * period
    t = 0.0
    while t < 10 * period:
        rhythm.observe(t, square(t, period, compute, phase) + rng.uniform(-0.2, 0.2) * MW)
        t += SAMPLE + rng.uniform(-0.002, 0.002)
    # on into a low phase, two measurements past its fall: the next rise is what is pending
    while not 2 * EDGE + compute + 2 * SAMPLE < (t - phase) % period < period - SAMPLE:
        rhythm.observe(t, square(t, period, compute, phase))
        t += SAMPLE
    rhythm.observe(t, square(t, period, compute, phase))
    edge = rhythm.pending()
    assert edge is not None
    assert edge.rise
    assert edge.at == pytest.approx(rise_middle(t, period, phase), abs=0.02)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
@example(seed=1699)
def test_compute_phases_that_vary_by_five_percent_are_never_predicted(seed: int) -> None:
    """The twin's default rhythm: 2.5 s period, compute 1.875 s ± 5 % (±94 ms). Its rises keep
    time, its falls do not: a fall is not predicted over 40 iterations, unless the eight before
    it happened to keep time (hypothesis found seed 1699 doing so at iteration 31)."""
    rng = random.Random(seed)
    rhythm = follow(2.5)
    t = 0.0
    computes: list[float] = []
    for k in range(40):
        compute = 1.875 * (1 + 0.05 * rng.uniform(-1, 1))
        computes.append(compute)
        start = k * 2.5
        while t < start + 2.5:
            rhythm.observe(t, square(t - start, 2.5, compute))
            edge = rhythm.pending()
            # a fall may be predicted only where, by chance, the last eight falls kept time
            # (each within the tolerance of the one before, less a sample either side)
            kept = all(
                abs(a - b) <= 0.02 + 2 * SAMPLE for a, b in itertools.pairwise(computes[-9:-1])
            )
            assert edge is None or edge.rise or (len(computes) > 8 and kept), (k, t)
            t += SAMPLE
    assert rhythm.period() == pytest.approx(2.5, abs=0.01)
    assert rhythm.compute_s() is None


def test_steady_compute_phases_are_predicted_too() -> None:
    """Where the compute phase keeps time (±5 ms), its fall is predicted as well."""
    rng = random.Random(3)
    rhythm = follow(2.0)
    t, falls = 0.0, []
    for k in range(20):
        compute = 1.2 + rng.uniform(-0.005, 0.005)
        while t < (k + 1) * 2.0:
            rhythm.observe(t, square(t - k * 2.0, 2.0, compute))
            edge = rhythm.pending()
            if edge is not None and not edge.rise:
                falls.append((k, edge.at - (k * 2.0 + EDGE + compute + EDGE / 2)))
            t += SAMPLE
    assert falls
    assert all(abs(error) < 0.02 for _, error in falls)


def test_one_glitch_past_the_middle_is_not_an_edge() -> None:
    """A single measurement past the middle (the grid + battery sum while the battery moves) does
    not turn the phase: an edge is two in a row."""
    rhythm = follow(2.5)
    t = play(rhythm, 6.0)
    # t = 6.0: 1.0 s into an iteration, high
    rises = rhythm.period()
    rhythm.observe(t, LOW)  # one glitch
    t += SAMPLE
    rhythm.observe(t, LOW + DEPTH)
    assert rhythm.swing_w == pytest.approx(DEPTH, rel=0.01)
    assert rhythm.period() == rises
    assert rhythm.ahead_w(t, LOW + DEPTH, t + 0.03) == 0.0


def test_a_predicted_rise_that_does_not_come_is_dropped_and_the_rhythm_relearnt() -> None:
    """A checkpoint (the GPUs wait at the low level): the predicted rise is given up
    ``give_up_s`` after it was due and nothing more is predicted while the load stays low;
    once the rhythm resumes, the rise after its first is predicted again."""
    rhythm = follow(2.5)
    t = play(rhythm, 12.4)
    edge = rhythm.pending()
    assert edge is not None
    assert edge.rise
    assert edge.at == pytest.approx(12.52, abs=0.02)
    while t < 20.0:  # the checkpoint: no rise
        rhythm.observe(t, LOW)
        assert t < edge.at + 0.06 or rhythm.pending() is None, t
        t += SAMPLE
    resumed = 20.5
    while t < resumed + 2.2:
        rhythm.observe(t, square(t, 2.5, 1.8, phase=resumed) if t >= resumed else LOW)
        t += SAMPLE
    again = rhythm.pending()
    assert again is not None
    assert again.at == pytest.approx(resumed + 2.5 + EDGE / 2, abs=0.02)


def test_the_lead_learns_where_the_battery_lands() -> None:
    """A battery that lands 50 ms after it is told, led 30 ms ahead (``actuation_s``): it
    lands 20 ms late; each settled edge moves the next lead by a share of the error, until
    the battery's middle lands on the load's."""
    rhythm = follow(2.5)
    t, told = 0.0, -math.inf
    while t < 60.0:
        edge = rhythm.pending()
        if edge is not None and edge.rise and t >= edge.at - 0.03 and t - told > 1.0:
            rhythm.led(edge, t)
            told = t
        load = square(t, 2.5, 1.8)
        battery = DEPTH if told + 0.05 <= t < told + 1.0 else 0.0
        rhythm.battery(t, battery)
        rhythm.observe(t, load)
        t += 0.005
    assert rhythm.timing_s == pytest.approx(-0.02, abs=0.006)


@settings(max_examples=50, deadline=None)
@given(loads=st.lists(st.floats(-500.0, 800.0), min_size=5, max_size=400))
def test_what_the_rhythm_adds_never_exceeds_the_announced_depth(loads: list[float]) -> None:
    """Whatever the load does, the rhythm never asks the battery for more than the job swings."""
    rhythm = follow(1.0)
    for k, load in enumerate(loads):
        t = k * SAMPLE
        rhythm.observe(t, load * MW)
        assert abs(rhythm.ahead_w(t, load * MW, t + 0.5)) <= DEPTH + 1.0


def test_only_one_rhythm_is_followed() -> None:
    """Two announced jobs with rhythms add up out of phase: neither is followed."""
    a = Announced(10.0, 100.0, 100 * MW, 50 * MW, period_s=2.5, depth_w=DEPTH)
    b = Announced(20.0, 100.0, 50 * MW, 50 * MW, period_s=1.2, depth_w=30 * MW)
    assert rhythm_of([a], 15.0) == (2.5, DEPTH)
    assert rhythm_of([a], 7.0) == (2.5, DEPTH)  # starting within the rhythm's window
    assert rhythm_of([a], 5.0) == (None, 0.0)
    assert rhythm_of([a, b], 25.0) == (None, 0.0)
    assert rhythm_of([Announced(10.0, 100.0, 100 * MW, 50 * MW)], 15.0) == (None, 0.0)


S = GridSettings(
    ramp_limit_w_per_s=20 * MW,
    import_limit_w=320 * MW,
    bess_rated_w=250 * MW,
    bess_capacity_j=120 * 3.6e9,
    payback_s=0.0,
)


def run_steady_job(until: float) -> tuple[Announced, GridLoop, float]:
    """The grid loop with a steady job (announced, rhythm 2.5 s, from 1 s) and a battery that
    follows at once, stepped every 20 ms up to ``until``; returns the job, the loop, the time."""
    job = Announced(1.0, 1000.0, 110 * MW, 50 * MW, peak_w=220 * MW, period_s=2.5, depth_w=DEPTH)
    loop = GridLoop(LoopSettings(actuation_s=0.03))
    t, battery = 0.0, 0.0
    while t < until:
        load = 20 * MW + (square(t - 1.0, 2.5, 1.8) if t >= 1.0 else 0.0)
        loop.battery(t, battery)
        out = loop.step(
            t, load - battery, received=t + 0.005, soc=0.5, bess_available=True,
            jobs=[job], settings=S,
        )  # fmt: skip
        if out.setpoint_w is not None:
            battery = out.setpoint_w
        t += SAMPLE
    return job, loop, t


@dataclass(frozen=True)
class Led:
    """The cycle's timer ran the lead ahead of the steady job's next rise."""

    job: Announced
    loop: GridLoop
    due: float
    """When the lead was due (``actuation_s`` before the rise's middle)."""
    before_w: float
    """The setpoint before the lead."""
    led_w: float
    """The lead's setpoint."""


def lead_next_rise(until: float, middle: float) -> Led:
    """:func:`run_steady_job` up to ``until``; the next lead is due ``actuation_s`` (30 ms)
    before the rise whose middle is at ``middle``, and the timer runs it."""
    job, loop, t = run_steady_job(until=until)
    due = loop.next_edge(t, [job])
    assert due is not None
    assert due == pytest.approx(middle - 0.03, abs=0.02)
    before = loop.setpoint_w
    lead = loop.lead(due, [job], S)
    assert lead.setpoint_w is not None
    return Led(job, loop, due, before, lead.setpoint_w)


def test_the_loop_puts_a_predicted_rise_on_the_battery_ahead_of_it() -> None:
    """The grid loop with a steady job: once its rhythm is learnt, the cycle's timer is due
    ``actuation_s`` before the next rise's middle, and that lead puts the whole swing on the
    battery (once); the readings after it keep it there."""
    led = lead_next_rise(until=13.2, middle=13.52)
    job, loop, due = led.job, led.loop, led.due
    assert led.led_w - led.before_w == pytest.approx(DEPTH, rel=0.02)
    assert loop.lead(due + 0.001, [job], S).setpoint_w is None  # once


def test_a_reading_across_a_led_rhythm_edge_is_held_not_stepped() -> None:
    """After the lead, a meter reading whose window took half the rise, added to a battery
    reading that shows the whole lead, says the load is half a swing short: stepping it would
    take 90 MW back off the battery until the next reading (the grid's spike after a led edge;
    with a device stall, for 200 ms). It is held; the first reading past the edge is stepped
    and keeps the lead."""
    lead = lead_next_rise(until=13.2, middle=13.52)
    job, loop, led = lead.job, lead.loop, lead.led_w
    middle = lead.due + 0.03
    high = 20 * MW + LOW + DEPTH
    held = loop.held_total  # the readings across the edges led so far

    def at(t: float, load_w: float) -> float | None:
        loop.battery(t, led)
        out = loop.step(t, load_w - led, received=t + 0.005, soc=0.5, bess_available=True,
                        jobs=[job], settings=S)  # fmt: skip
        return out.setpoint_w

    assert at(middle, high - DEPTH / 2) is None
    assert loop.held_total == held + 1
    past = at(middle + 0.08, high)
    assert past == pytest.approx(led, abs=1 * MW)


def test_a_settled_battery_is_held_while_its_reading_is_late() -> None:
    """A lost battery poll: a battery that had settled on its command is held at its newest
    reading (the loop keeps deciding); one told to move since is not (the loop waits)."""
    loop = GridLoop(LoopSettings(max_skew_s=0.005, settled_hold_s=0.3, actuation_s=0.03))
    loop.battery(10.0, 0.0)
    loop.step(10.0, 100 * MW, received=10.005, soc=0.5, bess_available=True, jobs=(), settings=S)
    loop.battery(10.02, 0.0)
    moved = loop.step(
        10.02, 300 * MW, received=10.025, soc=0.5, bess_available=True, jobs=(), settings=S
    )
    assert moved.setpoint_w == pytest.approx(200 * MW, rel=0.01)
    # told to move at 10.025: a reading from before it settled does not stand for it
    loop.battery(10.04, 100 * MW)
    assert loop.battery_at(10.10) is None
    # settled (measured after the command plus its actuation): held for up to 0.3 s
    loop.battery(10.08, 200 * MW)
    assert loop.battery_at(10.30) == 200 * MW
    assert loop.battery_at(10.39) is None


def test_a_tolerance_of_zero_turns_the_rhythm_off() -> None:
    """``[control] rhythm_tolerance_ms = 0``: nothing is learnt, nothing is added."""
    rhythm = Rhythm(RhythmSettings(tolerance_s=0.0))
    rhythm.follow(2.5, DEPTH)
    t = 0.0
    while t < 30.0:
        rhythm.observe(t, square(t, 2.5, 1.8))
        assert rhythm.pending() is None
        assert rhythm.ahead_w(t, square(t, 2.5, 1.8), t + 0.05) == 0.0
        t += SAMPLE


# ---- edges the job tells ------------------------------------------------------------------------


def varying(seed: int, iterations: int) -> list[float]:
    """Compute phases of the twin's default rhythm: 1.875 s ± 5 %."""
    rng = random.Random(seed)
    return [1.875 * (1 + 0.05 * rng.uniform(-1, 1)) for _ in range(iterations)]


def fall_middle(k: int, computes: list[float]) -> float:
    return k * 2.5 + EDGE + computes[k] + EDGE / 2


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), error=st.floats(-0.01, 0.01))
def test_a_told_fall_is_predicted_though_compute_phases_vary(seed: int, error: float) -> None:
    """Falls that do not keep time are never learnt, but one the job told (10 ms off at most)
    is what is pending through its compute phase, and is consumed once the load shows it."""
    computes = varying(seed, 12)
    rhythm = follow(2.5)
    t = 0.0
    for k in range(12):
        start = k * 2.5
        if k >= 2:  # from the third iteration on, the job tells each fall at its rise
            rhythm.hint([Edge(fall_middle(k, computes) + error, rise=False)])
        told = k >= 2
        while t < start + 2.5:
            rhythm.observe(t, square(t - start, 2.5, computes[k]))
            edge = rhythm.pending()
            in_compute = start + EDGE + 2 * SAMPLE < t < start + EDGE + computes[k]
            if told and in_compute:
                assert edge is not None, (k, t)
                assert not edge.rise
                assert edge.at == pytest.approx(fall_middle(k, computes) + error, abs=1e-9)
            elif in_compute:
                assert edge is None or edge.rise
            t += SAMPLE
    assert rhythm.compute_s() is None  # still not learnt: told, not predicted
    assert rhythm.hints_dropped_total == 0


def test_a_told_edge_that_does_not_come_is_dropped_and_what_was_learnt_stays() -> None:
    """The job told a fall that did not come (its iteration ran long): it is dropped
    ``give_up_s`` after it was due; what was learnt (here steady falls too) is predicted
    again."""
    rhythm = follow(2.5)
    t = play(rhythm, 25.2)  # into the high phase of the iteration from 25 s
    assert rhythm.period() is not None
    rhythm.hint([Edge(25.5, rise=False)])
    pending = rhythm.pending()
    assert pending is not None
    assert pending.at == pytest.approx(25.5)
    while t < 25.8:  # the load stays high
        rhythm.observe(t, LOW + DEPTH)
        t += SAMPLE
    assert rhythm.hints_dropped_total == 1
    assert rhythm.drops_total == 1  # counted among the predicted edges that did not come
    assert rhythm.pending() == Edge(25.0 + EDGE + 1.8 + EDGE / 2, rise=False)
    assert rhythm.period() is not None


def test_a_told_edge_from_before_the_phase_began_is_not_its_end() -> None:
    """A fall told too late (after the load fell) is not taken for the next high phase's end;
    a new job (another rhythm followed) forgets every told edge."""
    rhythm = follow(2.5)
    t = play(rhythm, 24.5)  # low phase after the fall near 21.9
    rhythm.hint([Edge(21.9, rise=False)])
    t = play(rhythm, 25.3, t)  # the rise at 25.02: high phase
    learnt = Edge(25.0 + EDGE + 1.8 + EDGE / 2, rise=False)
    assert rhythm.pending() == learnt
    rhythm.hint([Edge(26.9, rise=False)])
    assert rhythm.pending() == Edge(26.9, rise=False)
    rhythm.follow(1.2, DEPTH)
    rhythm.follow(2.5, DEPTH)
    assert rhythm._hints == []


def test_the_first_rise_after_the_start_is_led_by_the_announced_depth_not_the_starts_height() -> (
    None
):
    """Before the rhythm's first low phase has settled its low is the load before the job: the
    swing it measures is the start's height (220 MW here). The lead puts no more than the
    announced depth on the battery."""
    led = lead_next_rise(until=3.3, middle=3.52)
    assert led.loop.rhythm.swing_w > DEPTH  # the start's height
    # the swing, and what the announced mean adds meanwhile (50 MW/s)
    assert led.led_w - led.before_w == pytest.approx(DEPTH, abs=8 * MW)
