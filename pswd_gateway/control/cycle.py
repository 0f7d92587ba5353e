"""The control cycle: every ``cycle_ms`` and at once on each fresh grid-meter reading.

Each run freezes a snapshot of the store, turns it into a :class:`GridReading`, runs the pure
controllers (:mod:`pswd_gateway.control.grid`) and writes the one resulting setpoint plan to the
devices, each write with a timeout. I/O is injected (``write``, ``record``), so the cycle can run
against the twin, a test double of the device layer, or nothing.

Timing is measured, not assumed: the lateness of each timer-driven run against its deadline,
and for meter-driven runs the time from the reading's arrival to the battery setpoint written.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pswd_gateway.config import ControlConfig, SiteConfig
from pswd_gateway.control.grid import (
    Announced,
    Fallback,
    GridDecision,
    GridReading,
    GridSettings,
    LimiterState,
    grid_step,
)
from pswd_gateway.control.thermal import ThermalSettings, ThermalState, thermal_step
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.errors import PswdError
from pswd_gateway.logging import get_logger
from pswd_gateway.store import PointStore, Snapshot

__all__ = ["ControlCycle", "ControlStats", "SetpointWrite"]

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
    lateness_s: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    """How late each run started: after its deadline (timer), after its reading (meter)."""
    reading_to_setpoint_s: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    last: GridDecision | None = None
    last_error: str | None = None
    chw_setpoint_c: float | None = None
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
    clock: Callable[[], float] = time.time
    stats: ControlStats = field(default_factory=ControlStats)
    _state: LimiterState | None = field(default=None, init=False)
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

    # ---- lifecycle ----

    async def start(self) -> None:
        meter = f"{self.site.grid_meter}.active_power"
        self._subscription = self.store.subscribe(self._on_points, [meter])
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
        fresh = False
        for p in points:
            if p.quality is Quality.GOOD:
                self.stats.grid_samples.append((p.source_ts, p.value))
                fresh = True
        if fresh:
            self._fresh_ts = points[-1].received_ts
            self._fresh.set()

    async def _loop(self) -> None:
        period = self.config.cycle_ms / 1000.0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + period
        while True:
            timeout = max(0.0, deadline - loop.time())
            meter = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fresh.wait(), timeout)
                meter = True
            now = loop.time()
            if meter:
                self._fresh.clear()
                received = self._fresh_ts
                if received is not None:  # how long the reading waited for its run
                    self.stats.lateness_s.append(max(0.0, self.clock() - received))
            else:
                self.stats.lateness_s.append(max(0.0, now - deadline))
                received = None
            try:
                await self.run_once(received)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.last_error = str(exc)
                log.exception("control_run_failed")
            # Next deadline on the absolute grid; a missed slot is skipped, not queued.
            deadline += period
            if deadline <= loop.time():
                deadline = loop.time() + period

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
        return GridSettings(
            ramp_limit_w_per_s=self.site.grid_ramp_limit_mw_per_s * 1e6,
            import_limit_w=self.site.import_limit_mw * 1e6,
            bess_rated_w=rated,
            bess_capacity_j=energy,
            soc_min=c.soc_min,
            soc_max=c.soc_max,
            soc_target=c.soc_target,
            ramp_margin=c.ramp_margin,
            band_low_hz=c.band_low_hz,
            soc_restore_s=c.soc_restore_s,
            lookahead_s=c.announce_lead_s,
        )

    def reading(self, snap: Snapshot, now: float) -> GridReading | None:
        meter = self.site.grid_meter
        grid = snap.value(f"{meter}.active_power")
        if grid is None:
            return None
        bess_dev = self.site.bess
        soc = bess_w = None
        if bess_dev is not None:
            soc = snap.value(f"{bess_dev}.soc")
            measured = snap.get(f"{bess_dev}.active_power")
            if measured is not None and measured.quality is not Quality.INVALID:
                bess_w = measured.value
            # The battery follows a setpoint within tens of ms, faster than it is polled: until a
            # reading newer than the last write arrives, the setpoint is the better estimate.
            if self._last_written is not None and (
                measured is None or measured.received_ts < self._last_written_at + 0.05
            ):
                bess_w = self._last_written
        imported = snap.value(f"{meter}.energy_imported")
        exported = snap.value(f"{meter}.energy_exported")
        energy = None if imported is None or exported is None else imported - exported
        return GridReading(
            t=now,
            grid_w=grid,
            bess_w=bess_w or 0.0,
            soc=soc,
            bess_available=bess_w is not None and soc is not None,
            grid_energy_j=energy,
        )

    async def run_once(self, received_ts: float | None = None) -> GridDecision | None:
        """One cycle; ``received_ts`` is when the meter reading that triggered it arrived."""
        async with self._lock:
            return await self._run(received_ts)

    async def _run(self, received_ts: float | None) -> GridDecision | None:
        self.stats.runs_total += 1
        if received_ts is not None:
            self.stats.meter_runs_total += 1
        now = self.clock()
        snap = self.store.snapshot(now)
        settings = self.settings(snap)
        reading = self.reading(snap, now)
        if settings is None or reading is None:
            self.stats.skipped_total += 1
            self._state = None  # start afresh from the next good reading
            return None
        jobs = self.jobs(now) if self.config.predictive else ()
        decision = grid_step(self._state, reading, jobs, settings)
        self._state = decision.state
        self.stats.last = decision
        if decision.fallback is not None:
            self.stats.fallbacks_total += 1
            if self.on_fallback is not None:
                self.on_fallback(decision.fallback)
        if self.config.enabled and self.site.bess is not None:
            await self._act(decision, snap, received_ts)
        return decision

    async def _act(self, decision: GridDecision, snap: Snapshot, received_ts: float | None) -> None:
        """Write the plan: enable once, thermal setpoints once, the battery when it moved."""
        writes: list[SetpointWrite] = []
        bess = self.site.bess
        assert bess is not None
        if not self._enabled_written:
            await self._write(bess, "power_setpoint_enabled", 1.0, writes)
            self._enabled_written = writes[-1].ok
        now = snap.taken_at
        if self.site.thermal is not None:
            await self._act_thermal(snap, writes)
        setpoint = decision.bess_setpoint_w
        due = (
            self._last_written is None
            or abs(setpoint - self._last_written) >= SETPOINT_DEADBAND_W
            or now - self._last_written_at >= REWRITE_EVERY_S
        )
        if due:
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
