"""The training-job trace: a deterministic, pure function of time with 40 ms edges."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pswd_gateway.simulation.config import JobConfig, SimulationConfig, TraceConfig
from pswd_gateway.simulation.trace import (
    CSV_HEADER,
    CsvTrace,
    TrainingTrace,
    build_trace,
    read_trace_csv,
    write_trace_csv,
)

BASELINE_W = 20e6


def one_job(**overrides: object) -> TraceConfig:
    job = {
        "name": "job",
        "start_s": 10.0,
        "duration_s": 100.0,
        "peak_mw": 200.0,
        "period_s": 2.0,
        "depth": 0.9,
        "duty": 0.5,
        "jitter": 0.0,
        "ramp_up_s": 5.0,
        "ramp_down_s": 5.0,
        "checkpoint_every_s": None,
        **overrides,
    }
    return TraceConfig(baseline_mw=20.0, jobs=(JobConfig.model_validate(job),))


def samples(trace: TrainingTrace, start: float, end: float, step: float) -> list[float]:
    n = round((end - start) / step)
    return [trace.it_power_w(start + i * step) for i in range(n + 1)]


def test_same_seed_gives_the_same_trace_and_another_seed_a_different_one() -> None:
    """Two traces built with one seed agree at every instant; the seed changes the jitter."""
    cfg = TraceConfig()
    a, b, c = TrainingTrace(cfg, seed=42), TrainingTrace(cfg, seed=42), TrainingTrace(cfg, seed=9)
    times = [0.0137 * i for i in range(20_000)]
    assert [a.it_power_w(t) for t in times] == [b.it_power_w(t) for t in times]
    assert any(a.it_power_w(t) != c.it_power_w(t) for t in times)


def test_default_schedule_runs_a_200mw_class_job_within_the_first_twenty_seconds() -> None:
    """The demo sees a job swing by more than 150 MW before t = 20 s."""
    trace = build_trace(SimulationConfig())
    assert isinstance(trace, TrainingTrace)
    assert trace.active_jobs(20.0)
    window = samples(trace, 15.0, 20.0, 0.005)
    assert max(window) - min(window) > 150e6
    assert trace.it_power_w(0.0) == pytest.approx(BASELINE_W)


def test_default_schedule_has_start_and_stop_events_within_the_hour() -> None:
    """Several jobs start and end within the one-hour demo, one of them abruptly."""
    trace = TrainingTrace(TraceConfig(), seed=42)
    events = trace.events()
    starts = [e for e in events if e.kind == "job_start"]
    ends = [e for e in events if e.kind == "job_end"]
    assert len(starts) >= 2
    assert len(ends) >= 2
    assert all(0.0 <= e.t_s <= 3600.0 for e in events)
    stopping = {e.job: e.t_s for e in events if e.kind == "job_stopping"}
    assert any(math.isclose(e.t_s - stopping[e.job], 0.04) for e in ends), "an abrupt stop"


def test_compute_and_communication_phases_switch_in_forty_ms() -> None:
    """A rising and a falling edge each take 40 ms from one level to the other."""
    trace = TrainingTrace(one_job(), seed=1)
    low, high = BASELINE_W + 20e6, BASELINE_W + 200e6
    start = 10.0 + 20 * 2.0  # well after the ramp, at the start of an iteration
    series = samples(trace, start, start + 2.0, 0.001)
    rise = [i for i, p in enumerate(series) if low + 1e3 < p < high - 1e3]
    assert series[0] == pytest.approx(low)
    # strictly between the levels for the 39 one-millisecond samples inside each 40 ms edge
    edges = [list(g) for g in _groups(rise)]
    assert [len(e) for e in edges] == [39, 39]
    assert max(series) == pytest.approx(high)


def _groups(indices: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in indices:
        if out and i == out[-1][-1] + 1:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def test_job_ramps_in_and_out_and_is_off_outside_its_run() -> None:
    """Before the start and after the end only the baseline remains; ramps scale the swing."""
    trace = TrainingTrace(one_job(), seed=1)
    assert trace.it_power_w(9.999) == pytest.approx(BASELINE_W)
    assert trace.it_power_w(110.0) == pytest.approx(BASELINE_W)
    early = samples(trace, 10.0, 11.0, 0.01)  # first fifth of a 5 s ramp
    assert max(early) <= BASELINE_W + 0.2 * 200e6 + 1.0
    late = samples(trace, 109.0, 109.999, 0.01)  # last fifth of the ramp down
    assert max(late) <= BASELINE_W + 0.2 * 200e6 + 1.0


def test_checkpoints_hold_the_low_level_for_whole_iterations() -> None:
    """During a checkpoint the GPUs wait on storage: no compute peak for its duration."""
    trace = TrainingTrace(one_job(checkpoint_every_s=10.0, checkpoint_s=4.0), seed=1)
    # iterations of 2 s: 5 compute iterations, then 2 checkpoint iterations, repeating
    checkpoint = samples(trace, 10.0 + 10.0, 10.0 + 14.0 - 0.001, 0.005)
    assert max(checkpoint) == pytest.approx(BASELINE_W + 20e6)
    compute = samples(trace, 10.0 + 14.0, 10.0 + 16.0, 0.005)
    assert max(compute) == pytest.approx(BASELINE_W + 200e6)


def test_jobs_split_their_power_between_their_halls() -> None:
    """A job in one hall loads only that hall; the baseline is split evenly."""
    trace = TrainingTrace(one_job(halls=("gpu_hall_b",)), seed=1)
    t = 10.0 + 20 * 2.0 + 0.5  # mid compute phase
    hall_a, hall_b = trace.hall_demand_w(t)
    assert hall_a == pytest.approx(BASELINE_W / 2)
    assert hall_b == pytest.approx(BASELINE_W / 2 + 200e6)


def test_edges_longer_than_a_quarter_period_are_refused() -> None:
    """A job whose edges would not fit its period is a configuration error."""
    with pytest.raises(ValidationError, match="four edges"):
        one_job(period_s=0.1, edge_ms=40.0)


def test_trace_csv_has_the_exact_header_and_one_row_per_millisecond(tmp_path: Path) -> None:
    """``write_trace_csv`` at 1 ms writes ``t_s,it_power_mw`` then exact multiples of the step,
    and reading the file back gives the same power at those instants."""
    cfg = SimulationConfig(trace=one_job())
    path = tmp_path / "trace.csv"
    rows = write_trace_csv(cfg, path, duration_s=1.0, step_s=0.001)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == CSV_HEADER
    assert rows == len(lines) - 1 == 1001
    assert lines[1].split(",")[0] == "0"
    assert lines[2].split(",")[0] == "0.001"
    assert lines[-1].split(",")[0] == "1"
    replay = read_trace_csv(path, loop=False)
    original = build_trace(cfg)
    for t in (0.0, 0.123, 0.5, 1.0):
        assert replay.it_power_w(t) == pytest.approx(original.it_power_w(t), abs=1.0)


def test_trace_csv_refuses_steps_below_one_millisecond(tmp_path: Path) -> None:
    """A step under 1 ms is refused rather than silently rounded."""
    with pytest.raises(ValueError, match="1 ms"):
        write_trace_csv(SimulationConfig(), tmp_path / "x.csv", duration_s=1.0, step_s=0.0005)


def test_a_recorded_trace_replays_interpolated_and_looped(tmp_path: Path) -> None:
    """A ``replay_csv`` trace drives the twin: linear between samples, starting over at the end."""
    path = tmp_path / "rec.csv"
    path.write_text(f"{CSV_HEADER}\n0,10\n1,30\n2,10\n", encoding="utf-8")
    trace = build_trace(SimulationConfig(trace=TraceConfig(replay_csv=str(path))))
    assert isinstance(trace, CsvTrace)
    assert trace.it_power_w(0.5) == pytest.approx(20e6)
    assert trace.it_power_w(2.5) == pytest.approx(20e6)  # looped
    assert sum(trace.hall_demand_w(0.5)) == pytest.approx(20e6)


def test_a_csv_without_the_header_is_refused(tmp_path: Path) -> None:
    """The header line is part of the format."""
    path = tmp_path / "bad.csv"
    path.write_text("time,power\n0,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="t_s,it_power_mw"):
        read_trace_csv(path)


@settings(max_examples=200, deadline=None)
@given(t=st.floats(min_value=-10.0, max_value=4000.0, allow_nan=False))
def test_site_power_stays_between_baseline_and_all_peaks_and_halls_add_up(t: float) -> None:
    """At any instant the IT demand is at least the baseline, at most baseline plus every job's
    peak, and the halls' demands add up to it."""
    cfg = TraceConfig()
    trace = TrainingTrace(cfg, seed=42)
    power = trace.it_power_w(t)
    ceiling = cfg.baseline_mw * 1e6 + sum(j.peak_mw * 1e6 for j in cfg.jobs)
    assert cfg.baseline_mw * 1e6 - 1e-3 <= power <= ceiling + 1e-3
    assert sum(trace.hall_demand_w(t)) == pytest.approx(power)


def _is_quadratic_between(trace: TrainingTrace | CsvTrace, a: float, b: float) -> bool:
    """The demand on [a, b] is the parabola through its ends and middle (to 1 W)."""
    fa, fm, fb = (trace.it_power_w(x) for x in (a, 0.5 * (a + b), b))
    for u in (0.1, 0.25, 0.4, 0.6, 0.75, 0.9):
        x = a + u * (b - a)
        parabola = fa * (1 - u) * (1 - 2 * u) + fm * 4 * u * (1 - u) + fb * u * (2 * u - 1)
        if abs(trace.it_power_w(x) - parabola) > 1.0:
            return False
    return True


@settings(max_examples=60, deadline=None)
@given(
    start=st.floats(min_value=0.0, max_value=120.0),
    length=st.floats(min_value=0.001, max_value=0.5),
    jitter=st.floats(min_value=0.0, max_value=0.3),
    checkpoint=st.booleans(),
)
def test_between_breakpoints_the_demand_is_at_most_quadratic(
    start: float, length: float, jitter: float, checkpoint: bool
) -> None:
    """The physics integrates the demand exactly (Simpson on each piece) because between two of
    the trace's breakpoints — edges, phase changes, ramp ends, job start and end — each piece is
    a polynomial of degree two at most (a ramp times an edge)."""
    cfg = one_job(jitter=jitter, checkpoint_every_s=10.0 if checkpoint else None, checkpoint_s=4.0)
    trace = TrainingTrace(cfg, seed=3)
    cuts = [start, *trace.breakpoints(start, start + length), start + length]
    assert cuts == sorted(cuts)
    assert all(start < x < start + length for x in cuts[1:-1])
    for a, b in itertools.pairwise(cuts):
        assert _is_quadratic_between(trace, a, b), (a, b)


def test_a_job_edge_is_a_breakpoint_and_a_plateau_has_none() -> None:
    """The rising edge of an iteration starts and ends at breakpoints; a compute plateau has
    none inside it."""
    trace = TrainingTrace(one_job(ramp_up_s=0.0), seed=1)
    start = 10.0 + 20 * 2.0  # iteration 20 of a 2 s period starting at 10 s
    assert trace.breakpoints(start - 0.01, start + 0.05) == pytest.approx([start, start + 0.04])
    assert trace.breakpoints(start + 0.2, start + 0.9) == []


def test_a_looped_recording_breaks_at_its_samples_in_every_cycle() -> None:
    """A replayed CSV is linear between samples; looping repeats them every cycle."""
    trace = CsvTrace([0.0, 1.0, 3.0], [10e6, 30e6, 20e6], loop=True)
    assert trace.breakpoints(0.5, 3.5) == pytest.approx([1.0, 3.0])
    assert trace.breakpoints(3.5, 7.5) == pytest.approx([4.0, 6.0, 7.0])
    once = CsvTrace([0.0, 1.0, 3.0], [10e6, 30e6, 20e6], loop=False)
    assert once.breakpoints(0.5, 10.0) == pytest.approx([1.0, 3.0])  # then it holds


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 1000),
    jitter=st.sampled_from([0.0, 0.05]),
    checkpoint=st.booleans(),
    a=st.floats(15.0, 60.0),
)
def test_the_edges_a_job_tells_are_where_its_power_crosses_halfway(
    seed: int, jitter: float, checkpoint: bool, a: float
) -> None:
    """What the ML platform tells of the twin's job: each edge's middle is where the job's power
    is halfway between its levels, rising or falling as told; none while a checkpoint holds it
    low, and every crossing of the window is told."""
    cfg = one_job(
        ramp_up_s=0.0,
        jitter=jitter,
        checkpoint_every_s=10.0 if checkpoint else None,
        checkpoint_s=4.0,
    )
    trace = TrainingTrace(cfg, seed=seed)
    half = (200e6 + 20e6) / 2
    edges = trace.job_edges("job", a, a + 8.0)
    for t, rise in edges:
        assert trace.job_power_w("job", t) == pytest.approx(half, rel=1e-9)
        later = trace.job_power_w("job", t + 0.005)
        assert (later > half) == rise
    crossings = sum(
        (trace.job_power_w("job", t0) > half) != (trace.job_power_w("job", t1) > half)
        for t0, t1 in itertools.pairwise(a + 0.001 * i for i in range(8001))
    )
    assert len(edges) == crossings
    assert [t for t, _ in edges] == sorted(t for t, _ in edges)
