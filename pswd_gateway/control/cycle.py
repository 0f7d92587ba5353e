"""The control cycle: at once on each new grid-meter measurement, and every ``cycle_ms``.

A new meter measurement (a reading with a source time not seen before) steps the grid loop
(:class:`pswd_gateway.control.loop.GridLoop`: the battery's power at the meter's measurement
instant, the pure controllers of :mod:`pswd_gateway.control.grid`, the guard) and the resulting
setpoint plan is written to the devices, each write with a timeout. Timer runs step nothing:
they ramp the battery down when the meter has gone quiet, carry safe mode on, run the thermal
loop and rewrite a setpoint the device may have lost. I/O is injected (``write``, ``record``),
so the cycle can run against the twin, a test double of the device layer, or nothing.

Timing is measured, not assumed: the lateness of each timer-driven run against its deadline,
and for meter-driven runs the time from the reading's arrival to the battery setpoint written.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pswd_gateway.config import ControlConfig, SiteConfig
from pswd_gateway.control.grid import Announced, Fallback, GridDecision, GridSettings
from pswd_gateway.control.guard import GuardEvent, GuardSettings
from pswd_gateway.control.loop import GridLoop, LoopSettings, Outcome
from pswd_gateway.control.thermal import ThermalSettings, ThermalState, thermal_step
from pswd_gateway.domain.histogram import LatencyHistogram
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.errors import PswdError
from pswd_gateway.logging import get_logger
from pswd_gateway.store import PointStore, Snapshot

__all__ = [
    "SETPOINT_DEADBAND_W",
    "ControlCycle",
    "ControlStats",
    "SetpointWrite",
    "grid_settings",
    "loop_settings",
]

log = get_logger("control")

Write = Callable[[str, str, float], Awaitable[None]]
"""``write(device, point, value)``: one setpoint to one device (SI value)."""
SAMPLES: Final = 4096
SETPOINT_DEADBAND_W: Final = 50e3
"""A battery setpoint closer than this to the last one written is not written again."""
REWRITE_EVERY_S: Final = 1.0
"""…unless this long has passed (the device may have been reset)."""
THERMAL_EVERY_S: Final = 1.0
"""The thermal loop runs once a second (the plant moves in tens of seconds)."""
THERMAL_DEADBAND_C: Final = 0.05


def grid_settings(
    c: ControlConfig, site: SiteConfig, rated_w: float, energy_j: float
) -> GridSettings:
    """The grid controllers' settings from ``[control]`` and ``[site]`` and the battery's
    rating (W) and energy (J)."""
    return GridSettings(
        ramp_limit_w_per_s=site.grid_ramp_limit_mw_per_s * 1e6,
        import_limit_w=site.import_limit_mw * 1e6,
        bess_rated_w=rated_w,
        bess_capacity_j=energy_j,
        soc_min=c.soc_min,
        soc_max=c.soc_max,
        soc_target=c.soc_target,
        ramp_margin=c.ramp_margin,
        band_low_hz=c.band_low_hz,
        soc_restore_s=c.soc_restore_s,
        lookahead_s=c.announce_lead_s,
        payback_s=c.payback_s,
        payback_max_fraction=c.payback_max_fraction,
    )


def loop_settings(c: ControlConfig) -> LoopSettings:
    """The grid loop's alignment, staleness and guard settings from ``[control]``."""
    g = c.guard
    return LoopSettings(
        max_skew_s=c.battery_skew_ms / 1000.0,
        stale_s=c.meter_stale_ms / 1000.0,
        actuation_s=c.actuation_ms / 1000.0,
        guard=GuardSettings(
            enabled=g.enabled,
            window_s=g.window_s,
            max_flips_per_s=g.max_flips_per_s,
            flip_deadband_w=g.flip_deadband_mw * 1e6,
            off_plan_band_w=g.off_plan_band_mw * 1e6,
            off_plan_window_s=g.off_plan_window_s,
            rough_window_s=g.rough_window_s,
            rough_margin_w=g.rough_margin_mw * 1e6,
            rearm_s=g.rearm_s,
            rearm_max_s=g.rearm_max_s,
            hold_s=g.hold_s,
        ),
    )


@dataclass(frozen=True, slots=True)
class SetpointWrite:
    """One write of the plan, as journalled."""

    at: float
    device: str
    point: str
    value: float
    ok: bool
    error: str | None
    latency_s: float


@dataclass
class ControlStats:
    """What the cycle did; read by the metrics collector and the benchmarks."""

    runs_total: int = 0
    meter_runs_total: int = 0
    writes_total: int = 0
    write_failures_total: int = 0
    fallbacks_total: int = 0
    skipped_total: int = 0
    """Runs without a usable reading (grid meter or battery invalid)."""
    lateness_s: LatencyHistogram = field(default_factory=lambda: LatencyHistogram(window=SAMPLES))
    """How late each run started: after its deadline (timer), after its reading (meter)."""
    reading_to_setpoint_s: LatencyHistogram = field(
        default_factory=lambda: LatencyHistogram(window=SAMPLES)
    )
    last: GridDecision | None = None
    last_error: str | None = None
    chw_setpoint_c: float | None = None
    guard_trips_total: int = 0
    guard_active: bool = False
    """Safe mode: the guard tripped and has not re-armed yet."""
    guard_reason: str | None = None
    """Why the guard last tripped (kept after it re-arms)."""
    grid_samples: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=512))
    """Recent grid-meter readings ``(source_ts, W)``, for the measured ramp."""

    def grid_ramp_w_per_s(self, window_s: float = 1.0) -> float | None:
        """Rate of change of the grid import as a grid code judges it: the mean of the last
        ``window_s`` of readings against the mean of the window before, per second."""
        if not self.grid_samples:
            return None
        end = self.grid_samples[-1][0]
        recent = [w for t, w in self.grid_samples if end - window_s < t <= end]
        before = [w for t, w in self.grid_samples if end - 2 * window_s < t <= end - window_s]
        if not recent or not before:
            return None
        return (sum(recent) / len(recent) - sum(before) / len(before)) / window_s


@dataclass
class ControlCycle:
    config: ControlConfig
    site: SiteConfig
    store: PointStore
    write: Write
    jobs: Callable[[float], Sequence[Announced]] = lambda _now: ()
    """Announced jobs on the wall clock (POSIX seconds), given the time now."""
    record: Callable[[list[SetpointWrite]], Awaitable[None]] | None = None
    on_fallback: Callable[[Fallback], None] | None = None
    on_guard: Callable[[GuardEvent], None] | None = None
    """Called on each guard trip and re-arm (see :mod:`pswd_gateway.control.guard`)."""
    clock: Callable[[], float] = time.time
    stats: ControlStats = field(default_factory=ControlStats)
    loop: GridLoop = field(init=False)
    _fresh: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _fresh_ts: float | None = field(default=None, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _subscription: Any = field(default=None, init=False)
    _last_written: float | None = field(default=None, init=False)
    _last_written_at: float = field(default=0.0, init=False)
    _enabled_written: bool = field(default=False, init=False)
    _thermal_written: bool = field(default=False, init=False)
    _thermal: ThermalState | None = field(default=None, init=False)
    _chw_written: float | None = field(default=None, init=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    _led_to: float = field(default=-math.inf, init=False)
    _lead_due: float = field(default=-math.inf, init=False)
    _jobs: Sequence[Announced] = field(default=(), init=False)
    """The announced jobs as the last meter step saw them (fetched once per reading)."""

    def __post_init__(self) -> None:
        self.loop = GridLoop(loop_settings(self.config))

    # ---- lifecycle ----

    @property
    def _meter_key(self) -> str:
        return f"{self.site.grid_meter}.active_power"

    @property
    def _bess_key(self) -> str | None:
        return None if self.site.bess is None else f"{self.site.bess}.active_power"

    async def start(self) -> None:
        keys = [self._meter_key] + ([self._bess_key] if self._bess_key else [])
        self._subscription = self.store.subscribe(self._on_points, keys)
        self._task = asyncio.create_task(self._loop(), name="control-cycle")
        log.info(
            "control_started",
            cycle_ms=self.config.cycle_ms,
            predictive=self.config.predictive,
            ramp_limit_mw_per_s=self.site.grid_ramp_limit_mw_per_s,
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Leave the battery idle rather than holding a setpoint nobody updates.
        if self._enabled_written and self.site.bess is not None:
            with contextlib.suppress(PswdError, OSError, TimeoutError):
                await self._write(self.site.bess, "power_setpoint", 0.0, [])

    def _on_points(self, points: Sequence[Point]) -> None:
        for p in points:
            if p.quality is Quality.INVALID:
                continue
            if p.name == self._bess_key:
                if self.loop.battery(p.source_ts, p.value):
                    self._fresh.set()  # the meter measurement that waited for it can go
            elif p.quality is Quality.GOOD and self.loop.is_new(p.source_ts):
                samples = self.stats.grid_samples
                if not samples or p.source_ts > samples[-1][0]:
                    samples.append((p.source_ts, p.value))
                self._fresh_ts = p.received_ts
                self._fresh.set()

    async def _loop(self) -> None:
        period = self.config.cycle_ms / 1000.0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + period
        while True:
            timeout = max(0.0, min(deadline, self._next_lead(loop.time())) - loop.time())
            meter = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fresh.wait(), timeout)
                meter = True
            now = loop.time()
            if not meter and now < deadline:  # a lead ahead of an announced edge
                self._led_to = self._lead_due  # once, even where the two clocks disagree
                await self._run_guarded(None)
                continue
            if meter:
                self._fresh.clear()
                received = self._fresh_ts
                if received is not None:  # how long the reading waited for its run
                    self.stats.lateness_s.append(max(0.0, self.clock() - received))
            else:
                self.stats.lateness_s.append(max(0.0, now - deadline))
                received = None
            await self._run_guarded(received)
            # Next deadline on the absolute grid; a missed slot is skipped, not queued.
            deadline += period
            if deadline <= loop.time():
                deadline = loop.time() + period

    def _next_lead(self, loop_now: float) -> float:
        """Loop time of the next lead ahead of an announced edge (inf: none)."""
        if not self.config.predictive:
            return math.inf
        now = self.clock()
        due = self.loop.next_edge(max(now, self._led_to), self._jobs)
        if due is None:
            return math.inf
        self._lead_due = due
        return loop_now + (due - now)

    async def _run_guarded(self, received: float | None) -> None:
        try:
            await self.run_once(received)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.last_error = str(exc)
            log.exception("control_run_failed")

    # ---- one run ----

    def settings(self, snap: Snapshot) -> GridSettings | None:
        c = self.config
        bess = self.site.bess
        rated = c.bess_power_mw * 1e6 if c.bess_power_mw else None
        energy = c.bess_energy_mwh * 3.6e9 if c.bess_energy_mwh else None
        if bess is not None:
            rated = rated or snap.value(f"{bess}.power_rating")
            energy = energy or snap.value(f"{bess}.energy_rating")
        if not rated or not energy:
            return None
        return grid_settings(c, self.site, rated, energy)

    async def run_once(self, received_ts: float | None = None) -> GridDecision | None:
        """One cycle; ``received_ts`` is when the meter reading that triggered it arrived
        (``None``: a timer run, which steps the grid loop only if a new measurement waits)."""
        async with self._lock:
            return await self._run(received_ts)

    async def _run(self, received_ts: float | None) -> GridDecision | None:
        self.stats.runs_total += 1
        if received_ts is not None:
            self.stats.meter_runs_total += 1
        now = self.clock()
        snap = self.store.snapshot(now)
        outcome = self._decide(snap, now)
        decision = outcome.decision
        if decision is not None:
            self.stats.last = decision
            if decision.fallback is not None and not self.loop.guard.tripped:
                self.stats.fallbacks_total += 1
                if self.on_fallback is not None:
                    self.on_fallback(decision.fallback)
        elif outcome.skipped is not None and outcome.skipped != "safe mode":
            self.stats.skipped_total += 1
        if outcome.event is not None:
            self._guard_event(outcome.event)
        started = outcome.setpoint_w is not None or self._last_written is not None
        if self.config.enabled and self.site.bess is not None and started:
            await self._act(outcome.setpoint_w, snap, received_ts)
        return decision

    def _decide(self, snap: Snapshot, now: float) -> Outcome:
        """A loop step on a new meter measurement; otherwise the timer's idle run."""
        settings = self.settings(snap)
        meter = snap.get(self._meter_key)
        usable = settings is not None and meter is not None and meter.quality is Quality.GOOD
        if (
            usable
            and meter is not None
            and settings is not None
            and self.loop.is_new(meter.source_ts)
        ):
            return self._step(snap, meter, settings, now)
        if settings is not None and self.config.predictive:
            lead = self.loop.lead(now, self.jobs(now), settings)
            if lead.setpoint_w is not None:
                return lead
        outcome = self.loop.idle(now, settings)
        if not usable:
            return Outcome(outcome.setpoint_w, skipped="no usable grid or battery reading")
        return outcome

    def _step(self, snap: Snapshot, meter: Point, settings: GridSettings, now: float) -> Outcome:
        """A new meter measurement: the battery's readings up to now, then one loop step."""
        bess_dev = self.site.bess
        soc = None
        available = False
        if bess_dev is not None:
            soc = snap.value(f"{bess_dev}.soc")
            measured = snap.get(f"{bess_dev}.active_power")
            if measured is not None and measured.quality is not Quality.INVALID:
                self.loop.battery(measured.source_ts, measured.value)
                available = soc is not None
        jobs = self.jobs(now) if self.config.predictive else ()
        self._jobs = jobs  # the timer's next lead is worked out from these
        return self.loop.step(
            meter.source_ts,
            meter.value,
            received=meter.received_ts,
            soc=soc,
            bess_available=available,
            jobs=jobs,
            settings=settings,
        )

    def _guard_event(self, event: GuardEvent) -> None:
        stats = self.stats
        stats.guard_active = event.tripped
        if event.tripped:
            stats.guard_trips_total += 1
            stats.guard_reason = event.reason.value if event.reason else None
            log.error("control_guard_tripped", reason=stats.guard_reason, detail=event.detail)
        else:
            log.warning("control_guard_rearmed", detail=event.detail)
        if self.on_guard is not None:
            self.on_guard(event)

    async def _act(self, setpoint: float | None, snap: Snapshot, received_ts: float | None) -> None:
        """Write the plan: enable once, thermal setpoints once, the battery when it moved
        (``setpoint`` ``None``: no new decision; the last one is kept alive)."""
        writes: list[SetpointWrite] = []
        bess = self.site.bess
        assert bess is not None
        if not self._enabled_written:
            await self._write(bess, "power_setpoint_enabled", 1.0, writes)
            self._enabled_written = writes[-1].ok
        now = snap.taken_at
        if self.site.thermal is not None:
            await self._act_thermal(snap, writes)
        if setpoint is None:
            setpoint = self._last_written if self._last_written is not None else None
        due = setpoint is not None and (
            self._last_written is None
            or abs(setpoint - self._last_written) >= SETPOINT_DEADBAND_W
            or now - self._last_written_at >= REWRITE_EVERY_S
        )
        if due and setpoint is not None:
            await self._write(bess, "power_setpoint", setpoint, writes)
            if writes[-1].ok:
                self._last_written, self._last_written_at = setpoint, self.clock()
                if received_ts is not None:
                    self.stats.reading_to_setpoint_s.append(max(0.0, self.clock() - received_ts))
        if writes and self.record is not None:
            await self.record(writes)

    async def _act_thermal(self, snap: Snapshot, writes: list[SetpointWrite]) -> None:
        """Heat network setpoint once; chilled-water setpoint from the thermal loop each second."""
        thermal = self.site.thermal
        assert thermal is not None
        if not self._thermal_written:
            await self._write(
                thermal, "heat_supply_setpoint", self.config.heat_supply_setpoint_c, writes
            )
            self._thermal_written = writes[-1].ok
        now = snap.taken_at
        if self._thermal is not None and now - self._thermal.t < THERMAL_EVERY_S:
            return
        supply = snap.value(f"{thermal}.chw_supply_temp")
        it_w = snap.usable_total(self.site.it_load_points)
        if it_w is None:  # no IT reading: the heat the chillers remove stands in for it
            it_w = snap.value(f"{thermal}.chw_heat_load") or 0.0
        lo, hi = self.config.chw_setpoint_range_c
        settings = ThermalSettings(self.config.chw_supply_setpoint_c, lo, hi)
        jobs = self.jobs(now) if self.config.predictive else ()
        command, self._thermal = thermal_step(self._thermal, now, supply, it_w, jobs, settings)
        self.stats.chw_setpoint_c = command
        if self._chw_written is None or abs(command - self._chw_written) >= THERMAL_DEADBAND_C:
            await self._write(thermal, "chw_supply_setpoint", command, writes)
            if writes[-1].ok:
                self._chw_written = command

    async def _write(self, device: str, point: str, value: float, out: list[SetpointWrite]) -> None:
        t0 = time.perf_counter()
        error = None
        try:
            await asyncio.wait_for(
                self.write(device, point, value), self.config.write_timeout_ms / 1000
            )
        except TimeoutError:
            error = f"timed out after {self.config.write_timeout_ms} ms"
        except (PswdError, OSError) as exc:
            error = str(exc)
        self.stats.writes_total += 1
        if error is not None:
            self.stats.write_failures_total += 1
            self.stats.last_error = f"{device}.{point}: {error}"
            log.warning("setpoint_write_failed", device=device, point=point, error=error)
        out.append(
            SetpointWrite(
                self.clock(), device, point, value, error is None, error, time.perf_counter() - t0
            )
        )
