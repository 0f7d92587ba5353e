"""The whole grid loop against the twin's physics, in simulated time: no sockets, no wall clock.

What the live site does, event by event, with the very code the gateway runs:

- the twin's physics (:class:`~pswd_gateway.simulation.physics.SitePhysics`: trace → IT load,
  cooling, the BESS with its PCS dead time and response) and what its meters show
  (:mod:`pswd_gateway.simulation.measurement`: refresh periods, window averages, noise);
- the twin's device faults (:class:`~pswd_gateway.simulation.faults.DeviceFaults`: reply
  jitter, lost replies, stalls);
- the gateway's pollers on absolute deadlines (a slot still waiting for its reply is skipped),
  the driver's source times (:class:`~pswd_gateway.southbound.source_time.SourceClock`), the
  grid loop with its guard (:class:`~pswd_gateway.control.loop.GridLoop`) stepped on each new
  meter measurement and idled on the cycle's timer, the setpoint dead band of the live cycle;
- the gateway's own imperfections: poll lateness jitter and event-loop stalls (a busy core).

It is the offline twin of ``bench soak``: the imperfection matrix test and ``bench smoothing``
run it, so what they judge is what the live site does, only faster and repeatable.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pswd_gateway.bench.figures import (
    band_w,
    import_crossings,
    max_step_w_per_s,
    seconds_over,
    throughput_j,
)
from pswd_gateway.config import ControlConfig, SiteConfig
from pswd_gateway.control.cycle import REWRITE_EVERY_S, SETPOINT_DEADBAND_W, grid_settings
from pswd_gateway.control.cycle import loop_settings as make_loop_settings
from pswd_gateway.control.grid import Announced, GridSettings, announced_edges
from pswd_gateway.control.loop import FAST_EDGE_S, GridLoop
from pswd_gateway.control.rhythm import Edge
from pswd_gateway.simulation.config import JobConfig, SimulationConfig
from pswd_gateway.simulation.faults import DeviceFaults
from pswd_gateway.simulation.measurement import BessView, MeterView
from pswd_gateway.simulation.noise import uniform
from pswd_gateway.simulation.physics import SitePhysics
from pswd_gateway.simulation.trace import TrainingTrace
from pswd_gateway.southbound.source_time import SourceClock

__all__ = [
    "GatewayTiming",
    "SiteRun",
    "SiteSim",
    "announce_jobs",
    "flat_until",
    "simulate_site",
]

SAMPLE_S: Final = 0.02
"""How often the physics' truth is recorded."""
NET_S: Final = 0.0002
"""One way over loopback."""
_GW_STREAM: Final = 0x6A7E
_TOLD_STREAM: Final = 0x7E11
TOLD_ERROR_S: Final = 0.005
TOLD_LATENCY_S: Final = 0.005
"""A hint's way over the API (``bench soak``: a few ms on loopback)."""


@dataclass(frozen=True, slots=True)
class GatewayTiming:
    """How the gateway's side keeps time (its pollers, its event loop)."""

    meter_poll_s: float = 0.02
    bess_poll_s: float = 0.02
    timeout_s: float = 0.06
    meter_refresh_s: float = 0.02
    """What the gateway's device config says of the meter's refresh (``measurement_refresh_ms``);
    the truth is the twin's ``[simulation.grid] meter_refresh_ms``."""
    bess_refresh_s: float = 0.02
    poll_jitter_s: float = 0.002
    """Each poll starts up to this late (uniform): the event loop had other work."""
    stall_every_s: float = 0.0
    stall_s: float = 0.0
    """Every ``stall_every_s`` the gateway's event loop is stalled for ``stall_s``: whatever was
    due in it runs at its end (a busy core, a garbage collection)."""
    cycle_s: float = 0.1
    decide_s: float = 0.001
    """From a reading's arrival to its setpoint on the wire."""
    write_s: float = 0.002
    """From the setpoint on the wire to the PCS (its dead time comes after)."""


@dataclass
class SiteRun:
    """What one simulated run saw (times in seconds of the twin's clock)."""

    meter: list[tuple[float, float]] = field(default_factory=list)
    """The gateway's new meter measurements: (source time, W)."""
    truth_grid: list[tuple[float, float]] = field(default_factory=list)
    bess: list[tuple[float, float]] = field(default_factory=list)
    """The battery's true power, sampled every 20 ms."""
    setpoints: list[tuple[float, float]] = field(default_factory=list)
    it: list[tuple[float, float]] = field(default_factory=list)
    soc: list[tuple[float, float]] = field(default_factory=list)
    guard_trips: list[tuple[float, str]] = field(default_factory=list)
    fallbacks: int = 0
    overruns: int = 0
    lost: int = 0

    def figures(
        self,
        *,
        flat_end_s: float,
        job_start_s: float,
        end_s: float,
        ramp_limit_w_per_s: float,
        import_limit_w: float,
    ) -> dict[str, Any]:
        """The soak figures of this run (MW, MW/s, MWh); the IT load is flat until
        ``flat_end_s`` (where the grid starts to prepare for the job)."""
        flat_end = flat_end_s
        over_by_battery = bool(import_crossings(self.meter, self.bess, 0.0, end_s, import_limit_w))
        return {
            "max_step_mw_per_s": round(max_step_w_per_s(self.meter, job_start_s, end_s) / 1e6, 2),
            "seconds_over_limit": seconds_over(self.meter, job_start_s, end_s, ramp_limit_w_per_s),
            "flat_band_mw": round(band_w(self.meter, 5.0, flat_end) / 1e6, 2)
            if flat_end > 6.0
            else None,
            "max_grid_mw": round(max(w for _, w in self.meter) / 1e6, 1),
            "import_limit_crossed_by_battery": over_by_battery,
            "bess_throughput_mwh": round(throughput_j(self.bess, 0.0, end_s) / 3.6e9, 3),
            "guard_trips": len(self.guard_trips),
            "fallbacks": self.fallbacks,
            "overruns": self.overruns,
            "lost_replies": self.lost,
        }


def flat_until(announced: Sequence[Announced], settings: GridSettings, start: float) -> float:
    """When the grid starts to move for the first announced job (its planned ramp), or the first
    job's start, whichever is earlier."""
    rp = settings.planning_ramp_w_per_s
    ramps = [a.start_s + a.rise_s - a.level_w / rp for a in announced]
    return min([start, *ramps])


def announce_jobs(jobs: Sequence[JobConfig]) -> list[Announced]:
    """Each job as the ML platform announces it: its mean level, its own edge and its rhythm's
    period and depth."""
    out = []
    for j in jobs:
        level = j.peak_mw * (1.0 - j.depth * (1.0 - j.duty))  # PowerProfile.level_mw
        out.append(
            Announced(
                start_s=j.start_s,
                end_s=j.start_s + j.duration_s,
                level_w=level * 1e6,
                ramp_w_per_s=j.peak_mw * 1e6 / max(j.ramp_up_s, j.edge_ms / 1000.0),
                peak_w=j.peak_mw * 1e6,
                period_s=j.period_s,
                depth_w=j.peak_mw * j.depth * 1e6,
            )
        )
    return out


class _Poll:
    """One simulated poller: deadlines, outstanding request, the twin's faults."""

    def __init__(self, name: str, interval_s: float, faults: DeviceFaults | None) -> None:
        self.name = name
        self.interval_s = interval_s
        self.faults = faults
        self.k = 0
        self.requests = 0
        self.busy_until = -math.inf
        self.clock = SourceClock()


class SiteSim:
    """One run; see the module docstring. ``run(duration_s)`` returns a :class:`SiteRun`."""

    def __init__(
        self,
        simulation: SimulationConfig,
        *,
        control: ControlConfig,
        site: SiteConfig,
        timing: GatewayTiming = GatewayTiming(),
        announced: Sequence[Announced] = (),
        visible_from: Sequence[float] | None = None,
        told_ahead_s: float | None = None,
    ) -> None:
        self.cfg = simulation
        self.physics = SitePhysics(simulation)
        self.meter_view = MeterView.from_config(self.physics)
        self.bess_view = BessView.from_config(self.physics)
        self.timing = timing
        self.control = control
        self.settings: GridSettings = grid_settings(
            control,
            site,
            simulation.bess.power_mw * 1e6,
            simulation.bess.energy_mwh * 3.6e9,
        )
        self.loop = GridLoop(
            make_loop_settings(control, max(timing.meter_refresh_s, timing.bess_refresh_s))
        )
        self.announced = list(announced)
        self._visible_from = (
            list(visible_from)
            if visible_from is not None
            else [a.start_s - control.announce_lead_s for a in announced]
        )
        """When each announcement reaches the gateway (default: as early as it looks ahead)."""
        self.told_ahead_s = told_ahead_s
        """The first job tells each edge of its rhythm this long ahead (``None``: it does not;
        ``bench soak``'s ML platform tells them ~0.25 s ahead within ±5 ms)."""
        self.run_record = SiteRun()
        self._queue: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = itertools.count()
        self._written: float | None = None
        self._pending: tuple[float, float] | None = None
        self._leads: set[float] = set()
        self._soc = simulation.bess.soc_initial
        self._written_at = -math.inf
        faulty = set(simulation.faults.devices)

        def faults(name: str) -> DeviceFaults | None:
            return (
                DeviceFaults(simulation.faults, simulation.seed, name) if name in faulty else None
            )

        self._meter = _Poll("grid_meter", timing.meter_poll_s, faults("grid_meter"))
        self._meter.clock = SourceClock(timing.meter_refresh_s)
        self._bess = _Poll("bess", timing.bess_poll_s, faults("bess"))
        self._bess.clock = SourceClock(timing.bess_refresh_s)
        self.physics.command_bess(0.0, enabled=True, setpoint_w=0.0)

    # ---- the event queue ----

    def _at(self, t: float, action: Callable[[float], None]) -> None:
        heapq.heappush(self._queue, (t, next(self._seq), action))

    def _gateway_time(self, t: float) -> float:
        """When the gateway's event loop gets to something due at ``t`` (after any stall)."""
        tm = self.timing
        if tm.stall_every_s <= 0.0 or tm.stall_s <= 0.0:
            return t
        phase = t % tm.stall_every_s
        start = tm.stall_every_s - tm.stall_s
        return t + (tm.stall_every_s - phase) if phase >= start else t

    # ---- pollers ----

    def _schedule_poll(self, poll: _Poll) -> None:
        deadline = poll.k * poll.interval_s
        late = self.timing.poll_jitter_s * uniform(
            self.cfg.seed, _GW_STREAM, poll.k * 7 + len(poll.name)
        )
        self._at(self._gateway_time(deadline + late), lambda t: self._poll(poll, t))

    def _poll(self, poll: _Poll, t: float) -> None:
        # the next slot on the absolute grid; slots that passed while busy are skipped
        k_next = math.floor(t / poll.interval_s) + 1
        if t < poll.busy_until:
            self.run_record.overruns += 1
            poll.k = max(k_next, math.ceil(poll.busy_until / poll.interval_s))
            self._schedule_poll(poll)
            return
        n = poll.requests
        poll.requests += 1
        arrive = t + NET_S
        faults = poll.faults
        handled = arrive
        if faults is not None:
            end = faults.stall_end(arrive)
            handled = end if end is not None else arrive
        if faults is not None and faults.lost(n):
            self.run_record.lost += 1
            poll.busy_until = t + self.timing.timeout_s
        else:
            reply = handled + (faults.jitter_s(n) if faults is not None else 0.0) + NET_S
            if reply - t > self.timing.timeout_s:
                poll.busy_until = t + self.timing.timeout_s
            else:
                poll.busy_until = reply
                self._at(reply, lambda _t: self._serve(poll, t, handled))
        poll.k = k_next
        self._schedule_poll(poll)

    def _serve(self, poll: _Poll, request: float, handled: float) -> None:
        """The device computed its reply at ``handled``; it reaches the gateway now."""
        self.physics.advance(handled)
        poll.clock.begin(request)
        arrival = self._gateway_time(poll.busy_until)
        if poll is self._bess:
            w = self.bess_view.power_w(handled)
            self._soc = self.bess_view.soc(handled)
            if self.loop.battery(poll.clock.stamp("w", w), w) and self._pending is not None:
                source, grid = self._pending
                self._at(arrival + self.timing.decide_s, lambda t: self._decide(t, source, grid))
            return
        w = self.meter_view.active_power_w(handled)
        source = poll.clock.stamp("w", w)
        if not self.loop.is_new(source):
            return
        self.run_record.meter.append((source, w))
        self._at(arrival + self.timing.decide_s, lambda t: self._decide(t, source, w))

    # ---- the grid loop ----

    def _decide(self, now: float, source: float, w: float) -> None:
        if not self.loop.is_new(source):
            return
        jobs = [a for a, t in zip(self.announced, self._visible_from, strict=True) if t <= now]
        outcome = self.loop.step(
            source,
            w,
            received=now,
            soc=self._soc,
            bess_available=True,
            jobs=jobs,
            settings=self.settings,
        )
        self._pending = (source, w) if self.loop.waiting == source else None
        if outcome.event is not None and outcome.event.tripped:
            self.run_record.guard_trips.append((now, outcome.event.detail))
        if outcome.decision is not None and outcome.decision.fallback is not None:
            self.run_record.fallbacks += 1
        self._write(now, outcome.setpoint_w)
        self._next_lead(now, jobs)

    def _lead(self, now: float) -> None:
        """The cycle's timer run ahead of a fast edge (GridLoop.next_edge)."""
        jobs = [a for a, t in zip(self.announced, self._visible_from, strict=True) if t <= now]
        self._write(now, self.loop.lead(now, jobs, self.settings).setpoint_w)
        self._next_lead(now, jobs)

    def _next_lead(self, now: float, jobs: Sequence[Announced]) -> None:
        """Schedule the timer for the loop's next lead, as the cycle waits for it."""
        due = self.loop.next_edge(now, jobs)
        if due is not None and due not in self._leads:
            self._leads.add(due)
            self._at(self._gateway_time(due), self._lead)

    def _tell_rhythm(self, duration_s: float) -> None:
        """The ML platform's hints: each edge of the first job, ``told_ahead_s`` before its
        middle, off by up to ``TOLD_ERROR_S`` (seeded)."""
        ahead = self.told_ahead_s
        trace = self.physics.trace
        jobs = self.cfg.trace.jobs
        if ahead is None or not jobs or not isinstance(trace, TrainingTrace):
            return
        for k, (at, rise) in enumerate(trace.job_edges(jobs[0].name, 0.0, duration_s)):
            error = TOLD_ERROR_S * uniform(self.cfg.seed, _TOLD_STREAM, k)
            edge = Edge(at + error, rise=rise)
            told = self._gateway_time(max(at - ahead, 0.0) + TOLD_LATENCY_S)
            self._at(told, functools.partial(self._told, edge=edge))

    def _told(self, now: float, *, edge: Edge) -> None:
        self.loop.rhythm.hint([edge])
        jobs = [a for a, t in zip(self.announced, self._visible_from, strict=True) if t <= now]
        self._next_lead(now, jobs)

    def _tick(self, now: float) -> None:
        outcome = self.loop.idle(now, self.settings)
        self._write(now, outcome.setpoint_w)
        self._at(self._gateway_time(now + self.timing.cycle_s), self._tick)

    def _write(self, now: float, setpoint: float | None) -> None:
        if setpoint is None:
            if self._written is None or now - self._written_at < REWRITE_EVERY_S:
                return
            setpoint = self._written
        elif (
            self._written is not None
            and abs(setpoint - self._written) < SETPOINT_DEADBAND_W
            and now - self._written_at < REWRITE_EVERY_S
        ):
            return
        self._written, self._written_at = setpoint, now
        self.run_record.setpoints.append((now, setpoint))
        at = now + self.timing.write_s
        self._at(at, lambda t: self.physics.command_bess(t, setpoint_w=setpoint))

    def _sample(self, now: float) -> None:
        truth = self.physics.advance(now)
        rec = self.run_record
        rec.truth_grid.append((now, truth.grid_w))
        rec.bess.append((now, truth.bess_w))
        rec.it.append((now, truth.it_w))
        rec.soc.append((now, truth.soc))
        self._at(now + SAMPLE_S, self._sample)

    def run(self, duration_s: float) -> SiteRun:
        self._schedule_poll(self._meter)
        self._schedule_poll(self._bess)
        self._at(self.timing.cycle_s, self._tick)
        for begin, end in announced_edges(self.announced):
            if end - begin <= FAST_EDGE_S:
                due = (begin + end) / 2.0 - self.loop.settings.actuation_s
                self._at(self._gateway_time(max(due, 0.0)), self._lead)
        self._at(0.0, self._sample)
        self._tell_rhythm(duration_s)
        while self._queue:
            t, _, action = heapq.heappop(self._queue)
            if t > duration_s:
                break
            action(t)
        return self.run_record


def simulate_site(
    simulation: SimulationConfig,
    *,
    control: ControlConfig,
    site: SiteConfig,
    timing: GatewayTiming = GatewayTiming(),
    duration_s: float,
    announce: bool = True,
    told_ahead_s: float | None = None,
) -> SiteRun:
    """Run the site for ``duration_s`` with its trace's jobs announced (or not), the first
    telling its rhythm's edges ``told_ahead_s`` ahead (or not)."""
    announced = announce_jobs(simulation.trace.jobs) if announce else []
    sim = SiteSim(
        simulation,
        control=control,
        site=site,
        timing=timing,
        announced=announced,
        told_ahead_s=told_ahead_s,
    )
    return sim.run(duration_s)
