"""The whole demo site, as ``make demo`` runs it, judged as a grid operator would judge it.

The soak bench's machinery (:func:`pswd_gateway.bench.soak.measure_soak`) runs the twin as its
own process with the demo config's ``[simulation]`` (every device, both BMCs, the thermal
plant), the gateway here with every listener the demo enables, and the ML platform announcing
the demo's 200 MW job over the API, moved to 30 s into the twin's run (the demo waits 45 s for
a watcher; the site does not need it). The run goes on to 65 s of the twin's time: the flat IT
load before the job, the planned climb, and 35 s of its training swings (fourteen periods of its
rhythm). The same run is made on a quiet machine and with one core kept busy by another process.

Every figure comes from the grid meter's readings as the gateway received them, through
:mod:`pswd_gateway.bench.figures` (the one definition of a 1 s-mean step and of a band).

What is asserted from the job's start through its swings is what a grid operator asks: no
whole second's mean grid power moves by more than the ramp limit from the second before (the
issue's criterion; the seconds count from the job's start on the twin's clock). The stricter
sliding reading (a 1 s window ending every 100 ms) is printed and must be at most half of what
the IT load's rhythm makes by itself (its 90th percentile and its share of windows over the
limit, from the twin's own trace): a lead lost to a plant hiccup can still leave one sliding
window a few MW/s over (docs/control.md, "What physics leaves on the grid"). The edges the job
tells ahead (``POST /v1/workloads/{id}/rhythm``, by the demo's ML platform) must be led.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pswd_gateway.bench import figures
from pswd_gateway.bench.soak import SoakFigures, SoakResult, first_job_at, measure_soak, render
from pswd_gateway.config import DEFAULT_CONFIG, load_config
from pswd_gateway.simulation.config import SimulationConfig
from pswd_gateway.simulation.trace import build_trace

pytestmark = pytest.mark.integration

JOB_START_S = 30.0
"""Twin time the demo's job starts at here."""
RUN_TO_S = JOB_START_S + 35.0
"""Twin time the run ends at."""
FLAT_BAND_MW = 5.0
RHYTHM_PERIOD_S = 2.5
"""The demo job's training rhythm (its rises keep time; its compute phases vary by ±5 %)."""
DEVICES = ("grid_meter", "bess", "thermal", "gpu_hall_a", "gpu_hall_b")
LISTENERS = ("metrics", "api", "opcua", "iec61850")


def harness_problems(result: SoakResult) -> list[str]:
    """What went wrong with the run itself (not with the control): these make the stability
    figures meaningless, so they are reported first and on their own."""
    problems = [
        f"{name} never answered a poll"
        for name in DEVICES
        if name not in result.devices or not result.devices[name].answered
    ]
    for name in LISTENERS:
        probe = result.listeners.get(name)
        if probe is None:
            problems.append(f"the {name} listener was not started")
        elif not probe.ok:
            problems.append(f"the {name} listener at {probe.address} did not answer: "
                            f"{probe.detail}")  # fmt: skip
    job = result.job
    if job.refused is not None or job.announced_start_s != pytest.approx(job.start_s, abs=0.5):
        problems.append(
            f"the job was not announced for its start at {job.start_s:g} s: announced for "
            f"{job.announced_start_s} s ({job.refused or 'accepted'})"
        )
    f = result.figures
    if f.readings["grid_meter"] < 10 * RUN_TO_S:
        problems.append(
            f"only {f.readings['grid_meter']} grid-meter readings in {RUN_TO_S:g} s "
            "(polled every 20 ms: expected thousands; is the machine overloaded?)"
        )
    if result.interrupted or f.flat_window_s is None or f.ramp_window_s is None:
        problems.append(
            f"the run ended at {result.ended_s:g} s, flat window {f.flat_window_s}, ramp window "
            f"{f.ramp_window_s}: {'; '.join(result.notes)}"
        )
    return problems


def it_load_steps(
    start_s: float, end_s: float, limit_w_per_s: float
) -> tuple[float, float | None, int, float | None]:
    """(largest and 90th-percentile sliding 1 s-mean step in MW/s, whole seconds over the
    limit, share of sliding windows over it) of the IT load alone: what the grid would see
    without the battery (the twin's trace, every 10 ms, with the run's job start)."""
    raw = load_config(DEFAULT_CONFIG).simulation
    sim = SimulationConfig.model_validate(first_job_at(raw, JOB_START_S))
    trace = build_trace(sim)
    it = [(k * 0.01, trace.it_power_w(k * 0.01)) for k in range(round(end_s * 100) + 1)]
    return (
        figures.max_step_w_per_s(it, start_s, end_s) / 1e6,
        (figures.step_quantile(it, start_s, end_s, 0.9) or 0.0) / 1e6,
        figures.seconds_over(it, start_s, end_s, limit_w_per_s),
        figures.share_over(it, start_s, end_s, limit_w_per_s),
    )


def ramp_problems(
    f: SoakFigures, window: tuple[float, float], alone: tuple[float, float, int, float]
) -> list[str]:
    """The ramp limit from the job's start: whole seconds (none over), sliding windows (at most
    half of the IT load's alone)."""
    (start, end), (it_step, it_p90, it_over, it_share) = window, alone
    p90, share = f.p90_step_mw_per_s or 0.0, f.share_over_ramp_limit or 0.0
    seconds = ", ".join(f"{t:g} s ({w:g})" for t, w in f.steps_over_limit[:8])
    problems = []
    if f.seconds_over_ramp_limit:
        problems.append(
            f"from the job's start at {start:g} s to {end:g} s the grid's 1 s mean moved by more "
            f"than the {f.ramp_limit_mw_per_s:g} MW/s limit in {f.seconds_over_ramp_limit} whole "
            f"seconds (the IT load alone: {it_over}); largest sliding step "
            f"{f.max_step_mw_per_s} MW/s (alone: {it_step:.1f}); the seconds whose sliding "
            f"step was over, MW/s: {seconds}"
        )
    if p90 > 0.5 * it_p90 or share > 0.5 * it_share:
        problems.append(
            f"from the job's start at {start:g} s to {end:g} s the battery did not take the "
            f"job's swings: the grid's sliding 1 s-mean steps, p90 {p90:.1f} MW/s (the IT load "
            f"alone: {it_p90:.1f}), largest {f.max_step_mw_per_s} (alone: {it_step:.1f}); "
            f"{share:.1%} of the sliding 1 s windows over the "
            f"{f.ramp_limit_mw_per_s:g} MW/s limit (the IT load alone: {it_share:.1%}; whole "
            f"seconds {f.seconds_over_ramp_limit} against {it_over}); the first seconds over "
            f"it, MW/s: {seconds}"
        )
    return problems


def stability_problems(result: SoakResult) -> list[str]:
    """Where the grid did what the operator forbids, in figures and twin times."""
    f = result.figures
    problems = []
    if f.grid_band_flat_mw is None:
        problems.append(f"no grid reading between {f.flat_window_s} s")
    elif f.grid_band_flat_mw > FLAT_BAND_MW:
        a, b = f.flat_window_s or (0.0, 0.0)
        problems.append(
            f"while the IT load was flat ({a:g} to {b:g} s, IT band {f.it_load_band_flat_mw} MW) "
            f"the grid strayed {f.grid_band_flat_mw:.1f} MW from its mean of "
            f"{f.grid_mean_flat_mw:.1f} MW (allowed ±{FLAT_BAND_MW:g} MW)"
        )
    start, end = f.ramp_window_s or (0.0, 0.0)
    it_step, it_p90, it_over, it_share = it_load_steps(start, end, f.ramp_limit_mw_per_s * 1e6)
    share, p90 = f.share_over_ramp_limit, f.p90_step_mw_per_s
    print(f"grid: p90 step {p90} MW/s, {share} of windows over; IT load alone: {it_p90} MW/s, "
          f"{it_share}")  # fmt: skip
    if p90 is None or share is None or it_share is None or it_p90 is None:
        problems.append(f"no grid reading between {start:g} and {end:g} s")
    else:
        problems += ramp_problems(f, (start, end), (it_step, it_p90, it_over, it_share))
    edges = 2 * int((RUN_TO_S - JOB_START_S) / RHYTHM_PERIOD_S)
    told = result.job.edges_told
    print(f"rhythm edges: {told} told by the job, {f.rhythm_leads} led, of ~{edges}")
    # The demo's ML platform tells each edge ~0.25 s ahead; the battery leads each one whose
    # phase the loop has seen (a poll gap at an edge, a device stall may cost one).
    if told < 0.8 * edges or result.job.rhythm_refused:
        problems.append(
            f"the job told {told} of its ~{edges} rhythm edges"
            + (f" (refused: {result.job.rhythm_refused})" if result.job.rhythm_refused else "")
        )
    if f.rhythm_leads is None or f.rhythm_leads < 0.5 * told:
        problems.append(
            f"the control put {f.rhythm_leads} of the {told} rhythm edges the job told on the "
            "battery ahead of them"
        )
    if f.guard_trips:
        problems.append(f"the control guard tripped {f.guard_trips} times")
    if f.import_limit_crossed_while_charging:
        t, grid, bess = f.first_crossing or (0.0, 0.0, 0.0)
        problems.append(
            f"the grid import went over its {f.import_limit_mw:g} MW limit while the battery "
            f"was charging (1 s means), {f.crossings_while_charging} seconds, first the second "
            f"from {t:g} s (grid {grid:g} MW, battery {bess:g} MW)"
        )
    return problems


@pytest.mark.timeout(300)
@pytest.mark.parametrize("busy_core", [False, True], ids=["quiet", "one-core-busy"])
async def test_the_whole_demo_site_keeps_the_grid_flat_smooth_and_under_its_import_limit(
    busy_core: bool, tmp_path: Path
) -> None:
    """With the IT load flat the grid stays within ±5 MW; from the 200 MW job's start through
    its training swings no whole second's mean moves by more than the ramp limit, and the
    battery takes at least half of the rhythm's sliding 1 s-mean steps and windows over it; the
    battery never pushes the grid over its import limit by charging (1 s means); the guard
    never trips. Every device is polled and every listener
    (metrics, API, OPC UA, MMS) answers."""
    started = time.monotonic()
    result = await measure_soak(
        DEFAULT_CONFIG, RUN_TO_S, busy_core=busy_core, workdir=tmp_path, job_start_s=JOB_START_S
    )
    print(f"{time.monotonic() - started:.0f} s wall")
    print(render(result))
    harness = harness_problems(result)
    if harness:
        pytest.fail(
            f"the run itself failed (logs in {tmp_path}):\n- " + "\n- ".join(harness), pytrace=False
        )
    problems = stability_problems(result)
    if problems:
        f = result.figures
        devices = ", ".join(
            f"{n} {d.polls} polls ({d.errors} errors, {d.overruns} overruns)"
            for n, d in result.devices.items()
        )
        pytest.fail(
            "the grid was not kept smooth on the whole demo site:\n- "
            + "\n- ".join(problems)
            + f"\n(guard trips {f.guard_trips}, fallbacks {f.fallbacks}, battery setpoint write "
            f"failures {f.write_failures}, battery throughput {f.battery_throughput_mwh} MWh; "
            f"{devices}; logs in {tmp_path})",
            pytrace=False,
        )
