"""Fast frequency response on the twin: IEEE 1547.1-style frequency sequences, judged from truth.

Each case is generated from a seed: a response curve (deadband, droop, reference and maximum
power, ramp) and a sequence of frequency events scripted on the twin's grid
(``[simulation.grid] frequency_script``): an under-frequency step and an over-frequency step
outside the deadband, a step inside it, and a ramp outside it, in a random order, each held and
then returned to nominal. The twin (its Modbus servers on free loopback ports, its physics and
imperfections) and the gateway (control on, the curve in ``[control.ffr]``) run in this process;
the grid meter and the battery are polled every 20 ms, as on the demo site.

Judged from the twin's truth (its physics, not what the meter showed), per event:

- **response** = the grid import over the second before the event, less the grid import since
  (> 0: the import was lowered); **expected** = the configured curve at the event's frequency;
- **response time** (steps outside the deadband): from the frequency's step to the response
  first reaching 90 % of the expected (40 ms means);
- **error ratio** (outside the deadband): once settled (the curve's ramp plus 1 s after the
  frequency arrived, to the end of the hold), the largest |0.5 s mean - expected| / |expected|;
- **deadband**: the largest |0.5 s mean of the response| while the step inside it held.

:func:`run_ffr_bench` runs several cases and reports ``step_response_p99_s`` and
``max_error_ratio`` (and the details); ``tests/integration/test_ffr_twin.py`` runs the same
cases with generous bounds.
"""

from __future__ import annotations

import asyncio
import math
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pswd_gateway.bench.api import percentile
from pswd_gateway.config import FfrConfig, GatewayConfig
from pswd_gateway.control.battery import ffr_settings
from pswd_gateway.control.ffr import FfrSettings, droop_w
from pswd_gateway.daemon import Gateway
from pswd_gateway.domain.units import from_mw
from pswd_gateway.runtime import HeapKeeper
from pswd_gateway.simulation.config import SimulationConfig
from pswd_gateway.simulation.twin import Twin

__all__ = [
    "CaseResult",
    "EventResult",
    "FfrCase",
    "FfrEvent",
    "generate_cases",
    "measure_ffr",
    "run_case",
    "run_ffr_bench",
]

NOMINAL_HZ = 50.0
WARMUP_S = 7.0
"""Twin time of the first event: the gateway connected, the limiter settled."""
REST_S = 2.5
"""At nominal between one event's end and the next event."""
SAMPLE_S = 0.005
"""The truth is read every this."""
BASELINE_S = 1.0
SMOOTH_S = 0.04
"""The response is judged on means over this (the meter's noise and the load's)."""
SETTLED_MEAN_S = 0.5
BESS_RATED_MW = 250.0
"""The twin's battery (``[simulation.bess] power_mw``)."""
SITE_LOAD_MW = 150.0
"""The twin's IT load: steady, so the response is all that moves the grid."""


@dataclass(frozen=True, slots=True)
class FfrEvent:
    """One frequency event: from ``at_s`` (twin time) to ``hz`` over ``ramp_s`` (0: a step),
    held ``hold_s``, then back to nominal at once."""

    kind: Literal["under_step", "over_step", "deadband_step", "ramp"]
    at_s: float
    hz: float
    ramp_s: float
    hold_s: float

    @property
    def end_s(self) -> float:
        return self.at_s + self.ramp_s + self.hold_s

    @property
    def outside_deadband(self) -> bool:
        return self.kind != "deadband_step"


@dataclass(frozen=True, slots=True)
class FfrCase:
    """A curve and the events it is judged on."""

    seed: int
    curve: FfrConfig
    events: tuple[FfrEvent, ...]

    @property
    def settings(self) -> FfrSettings:
        return ffr_settings(self.curve, NOMINAL_HZ, from_mw(BESS_RATED_MW))

    @property
    def end_s(self) -> float:
        return self.events[-1].end_s + REST_S

    def script(self) -> list[dict[str, float]]:
        """The twin's ``frequency_script``."""
        steps: list[dict[str, float]] = []
        for e in self.events:
            steps.append({"at_s": e.at_s, "hz": e.hz, "ramp_s": e.ramp_s})
            steps.append({"at_s": e.end_s, "hz": NOMINAL_HZ, "ramp_s": 0.0})
        return steps


def _hz_for(fraction: float, sign: float, curve: FfrSettings) -> float:
    """The frequency at which the curve asks for ``fraction`` of its maximum (``sign`` < 0:
    under-frequency)."""
    beyond = fraction * curve.max_w / curve.p_ref_w * curve.droop_pct / 100.0 * NOMINAL_HZ
    return round(NOMINAL_HZ + sign * (curve.deadband_hz + beyond), 3)


def generate_cases(seed: int, count: int) -> list[FfrCase]:
    """``count`` cases from ``seed``: curves across the usual products' deadbands (ENTSO-E FCR
    10 mHz, GB Dynamic Containment 15 mHz, IEEE 1547 36 mHz), droops of 0.5-2 %, responses of
    30-130 % of the maximum (so some saturate), steps and a ramp of 1-3 s."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test cases, not secrets
    cases = []
    for k in range(count):
        p_ref = rng.uniform(80.0, 200.0)
        curve = FfrConfig(
            enabled=True,
            deadband_hz=rng.choice([0.01, 0.015, 0.036]),
            droop_pct=round(rng.uniform(0.5, 2.0), 2),
            p_ref_mw=round(p_ref, 1),
            max_mw=round(p_ref * rng.uniform(0.3, 0.6), 1),
            ramp_mw_per_s=round(rng.uniform(100.0, 250.0), 0),
        )
        settings = ffr_settings(curve, NOMINAL_HZ, from_mw(BESS_RATED_MW))
        kinds: list[Literal["under_step", "over_step", "deadband_step", "ramp"]] = [
            "under_step",
            "over_step",
            "deadband_step",
            "ramp",
        ]
        rng.shuffle(kinds)
        events, at = [], WARMUP_S
        for kind in kinds:
            sign = rng.choice([-1.0, 1.0])
            if kind == "under_step":
                hz, ramp = _hz_for(rng.uniform(0.3, 1.3), -1.0, settings), 0.0
            elif kind == "over_step":
                hz, ramp = _hz_for(rng.uniform(0.3, 1.3), 1.0, settings), 0.0
            elif kind == "deadband_step":
                hz = round(NOMINAL_HZ + sign * rng.uniform(0.3, 0.8) * settings.deadband_hz, 3)
                ramp = 0.0
            else:
                hz, ramp = _hz_for(rng.uniform(0.3, 1.3), sign, settings), rng.uniform(1.0, 3.0)
            event = FfrEvent(kind, round(at, 3), hz, round(ramp, 3), 3.0)
            events.append(event)
            at = event.end_s + REST_S
        cases.append(FfrCase(seed * 1000 + k, curve, tuple(events)))
    return cases


@dataclass(frozen=True, slots=True)
class EventResult:
    event: FfrEvent
    expected_w: float
    response_w: float
    """The mean response once settled (the deadband's: the largest 0.5 s mean, signed)."""
    response_time_s: float | None
    """Steps outside the deadband: to 90 % of the expected; ``None`` if it never got there."""
    error_ratio: float | None
    """Outside the deadband: the largest settled |0.5 s mean - expected| / |expected|."""


@dataclass
class CaseResult:
    case: FfrCase
    events: list[EventResult] = field(default_factory=list)
    guard_trips: int = 0
    write_failures: int = 0
    writes: int = 0


def _mean(samples: list[tuple[float, float]], t0: float, t1: float) -> float | None:
    inside = [w for t, w in samples if t0 <= t < t1]
    return sum(inside) / len(inside) if inside else None


def judge(event: FfrEvent, curve: FfrSettings, grid: list[tuple[float, float]]) -> EventResult:
    """One event from the truth ``grid`` (twin time, W): see the module docstring."""
    expected = droop_w(event.hz, curve)
    baseline = _mean(grid, event.at_s - BASELINE_S, event.at_s)
    if baseline is None:
        raise ValueError(f"no truth before the event at {event.at_s} s")
    response = [(t, baseline - w) for t, w in grid if event.at_s - SMOOTH_S <= t <= event.end_s]
    arrived = event.at_s + event.ramp_s
    settled_from = arrived + abs(expected) / curve.ramp_w_per_s + 1.0
    windows = []
    t = settled_from
    while t + SETTLED_MEAN_S <= event.end_s - 0.05:
        mean = _mean(response, t, t + SETTLED_MEAN_S)
        if mean is not None:
            windows.append(mean)
        t += SETTLED_MEAN_S / 2
    if not event.outside_deadband:
        worst = max(windows, key=abs, default=0.0)
        return EventResult(event, expected, worst, None, None)
    settled = _mean(response, settled_from, event.end_s - 0.05) or 0.0
    error = max((abs(m - expected) / abs(expected) for m in windows), default=math.inf)
    reached = None
    if event.ramp_s == 0.0:
        for t, _ in response:
            if t < event.at_s:
                continue
            mean = _mean(response, t - SMOOTH_S, t)
            if mean is not None and mean * math.copysign(1.0, expected) >= 0.9 * abs(expected):
                reached = t - event.at_s
                break
    return EventResult(event, expected, settled, reached, error)


def twin_config(case: FfrCase) -> SimulationConfig:
    return SimulationConfig.model_validate(
        {
            "seed": case.seed,
            "ports": {"grid_meter": 0, "bess": 0, "thermal": 0, "redfish": [0, 0]},
            "truth_buffer_s": case.end_s + 60.0,
            "trace": {"baseline_mw": SITE_LOAD_MW, "jobs": []},
            "bess": {"power_mw": BESS_RATED_MW},
            "grid": {"frequency_wander_hz": 0.0, "events": [], "frequency_script": case.script()},
            "redfish": {"enabled": False},
        }
    )


def gateway_config(case: FfrCase, twin: Twin, state_dir: Path) -> GatewayConfig:
    fast = {"poll_interval_ms": 20, "timeout_ms": 100, "measurement_refresh_ms": 20}
    ports = {name: port for name, (_, port) in twin.endpoints.items()}
    return GatewayConfig.model_validate(
        {
            "devices": [
                {"name": "grid_meter", "kind": "modbus", "port": ports["grid_meter"],
                 "register_map": "sunspec-meter", **fast},
                {"name": "bess", "kind": "modbus", "port": ports["bess"],
                 "register_map": "sunspec-bess", "write_connection": "own", **fast},
                {"name": "thermal", "kind": "modbus", "port": ports["thermal"],
                 "register_map": "thermal-plant"},
            ],
            "listeners": {
                "metrics": {"enabled": False, "port": 0},
                "api": {"enabled": False, "port": 0},
            },
            "storage": {"state_dir": str(state_dir), "journal_synchronous": "normal"},
            "control": {"enabled": True, "ffr": case.curve.model_dump(exclude_none=True)},
            "scheduling": {"cooling_capacity_mw": 1000.0},
        }
    )  # fmt: skip


async def run_case(case: FfrCase) -> CaseResult:
    """The case on a twin and a gateway of its own, both stopped whatever happens."""
    twin = Twin(twin_config(case))
    gw: Gateway | None = None
    with tempfile.TemporaryDirectory(prefix="pswd-bench-ffr-") as tmp:
        try:
            await twin.start()
            gw = Gateway(gateway_config(case, twin, Path(tmp) / "state"), heap=HeapKeeper())
            await gw.start()
            await asyncio.sleep(max(0.0, case.end_s - twin.now()) + 0.1)
            grid = []
            t = 0.5
            while t <= min(case.end_s, twin.now()):
                grid.append((t, twin.truth_at(t).grid_w))
                t += SAMPLE_S
            result = CaseResult(case)
            assert gw.control is not None
            stats = gw.control.stats
            result.guard_trips = stats.guard_trips_total
            result.writes, result.write_failures = stats.writes_total, stats.write_failures_total
        finally:
            if gw is not None:
                await gw.stop()
            await twin.stop()
    curve = case.settings
    result.events = [judge(e, curve, grid) for e in case.events]
    return result


def summarise(results: list[CaseResult]) -> dict[str, Any]:
    """The figures: ``step_response_p99_s`` and ``max_error_ratio`` and what they came from."""
    events = [e for r in results for e in r.events]
    times = [e.response_time_s for e in events if e.response_time_s is not None]
    steps = [e for e in events if e.event.outside_deadband and e.event.ramp_s == 0.0]
    errors = [e.error_ratio for e in events if e.error_ratio is not None]
    deadband = [abs(e.response_w) for e in events if not e.event.outside_deadband]
    return {
        "step_response_p99_s": round(percentile(times, 0.99), 3) if times else None,
        "step_response_p50_s": round(percentile(times, 0.5), 3) if times else None,
        "steps": len(steps),
        "steps_not_reached": len(steps) - len(times),
        "max_error_ratio": round(max(errors), 4) if errors else None,
        "deadband_max_response_mw": round(max(deadband) / 1e6, 3) if deadband else None,
        "guard_trips": sum(r.guard_trips for r in results),
        "cases": [
            {
                "seed": r.case.seed,
                "curve": r.case.curve.model_dump(exclude_none=True),
                "events": [
                    {
                        "kind": e.event.kind,
                        "hz": e.event.hz,
                        "ramp_s": e.event.ramp_s,
                        "expected_mw": round(e.expected_w / 1e6, 3),
                        "response_mw": round(e.response_w / 1e6, 3),
                        "response_time_s": (
                            None if e.response_time_s is None else round(e.response_time_s, 3)
                        ),
                        "error_ratio": None if e.error_ratio is None else round(e.error_ratio, 4),
                    }
                    for e in r.events
                ],
            }
            for r in results
        ],
    }


async def measure_ffr(seed: int = 1547, cases: int = 3) -> dict[str, Any]:
    """Run ``cases`` generated cases one after the other; the figures of :func:`summarise`."""
    return summarise([await run_case(c) for c in generate_cases(seed, cases)])


def run_ffr_bench(seed: int = 1547, cases: int = 3) -> dict[str, Any]:
    """:func:`measure_ffr` in an event loop of its own (about 35 s a case)."""
    return asyncio.run(measure_ffr(seed, cases))
