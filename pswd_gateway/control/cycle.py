"""The control cycle: at once on each new grid-meter measurement, and every ``cycle_ms``.

Each run takes one process image (a store snapshot, the site's settings, the time), steps every
controller over it in priority order — the battery controller (the grid loop:
:mod:`pswd_gateway.control.battery`), the cooling controller (:mod:`pswd_gateway.control.
cooling`) — settles their requests in the :class:`~pswd_gateway.control.controllers.Arbiter`,
and writes each resolved value its :class:`~pswd_gateway.control.controllers.WritePolicy` says
is due through the device layer (``write``: the pollers), each write with a timeout. A new
meter measurement steps the grid loop; timer runs ramp the battery down when the meter has gone
quiet, carry safe mode on, lead announced edges, run the thermal loop and rewrite a setpoint the
device may have lost. I/O is injected (``write``, ``record``), so the cycle can run against the
twin, a test double of the device layer, or nothing.

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
from pswd_gateway.control.battery import (
    ENABLE_POINT,
    SETPOINT_POINT,
    BatteryController,
    grid_settings,
)
from pswd_gateway.control.controllers import (
    Arbiter,
    Controller,
    ProcessImage,
    SetpointRequest,
    WritePolicy,
)
from pswd_gateway.control.cooling import CHW_SETPOINT_POINT, CoolingController
from pswd_gateway.control.ffr import FfrSettings
from pswd_gateway.control.grid import Announced, Fallback, GridDecision
from pswd_gateway.control.guard import GuardEvent, GuardSettings
from pswd_gateway.control.loop import GridLoop, LoopSettings
from pswd_gateway.control.rhythm import Edge, RhythmSettings
from pswd_gateway.domain.histogram import LatencyHistogram
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.domain.units import from_mw
from pswd_gateway.errors import PswdError
from pswd_gateway.logging import get_logger
from pswd_gateway.store import PointStore
from pswd_gateway.tasks import cancel_and_wait

__all__ = [
    "POLICIES",
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
LEAD_PREEMPT_MIN_S: Final = 0.015
"""A battery setpoint write is waited for this long at least before a lead due meanwhile goes
out instead (replies on a 2-vCPU box: median 3 ms, p99 16 to 26 ms; a lost one never comes)."""
LEAD_WRITE_TIMEOUT_S: Final = 0.02
"""A lead's setpoint write unanswered after this is sent once more (at most)."""
LEAD_RESENT: Final = " (a lead: sent again)"
THERMAL_DEADBAND_C: Final = 0.05
POLICIES: Final = {
    SETPOINT_POINT: WritePolicy(SETPOINT_DEADBAND_W, REWRITE_EVERY_S),
    CHW_SETPOINT_POINT: WritePolicy(THERMAL_DEADBAND_C),
}
"""How each point is written; any other point: when it changes (enable, heat setpoint)."""


def loop_settings(c: ControlConfig, measure_window_s: float = 0.0) -> LoopSettings:
    """The grid loop's alignment, staleness and guard settings from ``[control]``;
    ``measure_window_s``: the meter's and the battery's ``measurement_refresh_ms``, the longer."""
    g = c.guard
    return LoopSettings(
        measure_window_s=measure_window_s,
        max_skew_s=c.battery_skew_ms / 1000.0,
        stale_s=c.meter_stale_ms / 1000.0,
        actuation_s=c.actuation_ms / 1000.0,
        settled_hold_s=c.battery_hold_ms / 1000.0,
        rhythm=RhythmSettings(tolerance_s=c.rhythm_tolerance_ms / 1000.0),
        guard=GuardSettings(
            enabled=g.enabled,
            window_s=g.window_s,
            max_flips_per_s=g.max_flips_per_s,
            flip_deadband_w=from_mw(g.flip_deadband_mw),
            off_plan_band_w=from_mw(g.off_plan_band_mw),
            off_plan_window_s=g.off_plan_window_s,
            import_margin_w=from_mw(g.import_margin_mw),
            import_hold_s=g.import_hold_s,
            rough_window_s=g.rough_window_s,
            rough_margin_w=from_mw(g.rough_margin_mw),
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
    """How late each run started: after its deadline (timer), or after what let it run (meter):
    the reading's arrival, or the battery reading a waiting measurement needed. The wait for
    that battery reading is the data's, not the cycle's: ``reading_to_setpoint_s`` holds it."""
    reading_to_setpoint_s: LatencyHistogram = field(
        default_factory=lambda: LatencyHistogram(window=SAMPLES)
    )
    last: GridDecision | None = None
    last_error: str | None = None
    chw_setpoint_c: float | None = None
    guard_trips_total: int = 0
    rhythm_leads_total: int = 0
    """Training-rhythm edges put on the battery ahead of them."""
    rhythm_drops_total: int = 0
    """Predicted training-rhythm edges that did not come."""
    rhythm_edges_told_total: int = 0
    """Training-rhythm edges the running job told ahead of them."""
    readings_held_total: int = 0
    """Meter readings not stepped: measured across an edge already on the battery."""
    guard_active: bool = False
    """Safe mode: the guard tripped and has not re-armed yet."""
    guard_reason: str | None = None
    """Why the guard last tripped (kept after it re-arms)."""
    ffr_response_w: float = 0.0
    """The fast frequency response in force (> 0: the grid import is lowered by it)."""
    ffr_active: bool = False
    """The frequency is outside the deadband, or a response is still ramping back."""
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
    measure_window_s: float = 0.0
    """The grid meter's and the battery's measurement window, the longer (their devices'
    ``measurement_refresh_ms``): see :attr:`LoopSettings.measure_window_s`."""
    stats: ControlStats = field(default_factory=ControlStats)
    name: str = "control"
    battery: BatteryController = field(init=False)
    cooling: CoolingController = field(init=False)
    controllers: list[Controller] = field(init=False)
    """In priority order, first = highest (see :class:`Arbiter`)."""
    arbiter: Arbiter = field(default_factory=Arbiter, init=False)
    _fresh: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _fresh_ts: float | None = field(default=None, init=False)
    """When the newest meter reading arrived (the clock's time)."""
    _ready_ts: float | None = field(default=None, init=False)
    """When a meter-driven run became due: that reading's arrival, or the battery reading that
    let a waiting one go."""
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _subscription: Any = field(default=None, init=False)
    _written: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict, init=False)
    """(value, when) of the last successful write per (device, point)."""
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    _led_to: float = field(default=-math.inf, init=False)
    _lead_due: float = field(default=-math.inf, init=False)
    _leading: bool = field(default=False, init=False)
    """The run under way is a lead's (the timer's, ahead of an edge)."""

    def __post_init__(self) -> None:
        settings = loop_settings(self.config, self.measure_window_s)
        self.battery = BatteryController(self.config, settings, self.jobs)
        self.cooling = CoolingController(self.config, self.jobs)
        self.controllers = [self.battery, self.cooling]

    @property
    def loop(self) -> GridLoop:
        """The battery controller's grid loop."""
        return self.battery.loop

    def shape_ffr(self, settings: FfrSettings | None) -> None:
        """Enable, disable or reshape the fast frequency response (the operator's grid signal);
        ``None``: back to ``[control.ffr]``. See :meth:`BatteryController.shape_ffr`."""
        self.battery.shape_ffr(settings)

    def tell_rhythm(self, edges: Sequence[tuple[float, bool]]) -> None:
        """A running job told its next edges: ``(middle, rise)``, POSIX seconds (see
        :meth:`pswd_gateway.control.rhythm.Rhythm.hint`); led from the next run on."""
        self.loop.rhythm.hint([Edge(at, rise=rise) for at, rise in edges])
        self.stats.rhythm_edges_told_total += len(edges)

    def request_heat_supply(self, supply_c: float | None) -> None:
        """The heat network's request in force asks for ``supply_c`` at the heat-recovery plant
        (``None``: back to ``[control] heat_supply_setpoint_c``); written on the next run."""
        self.cooling.requested_supply_c = supply_c

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
            controllers=[c.name for c in self.controllers],
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.cancel()
        await cancel_and_wait(self._task)
        # Leave the battery idle rather than holding a setpoint nobody updates.
        bess = self.site.bess
        if bess is not None and (bess, ENABLE_POINT) in self._written:
            with contextlib.suppress(PswdError, OSError, TimeoutError):
                await self._write(bess, SETPOINT_POINT, 0.0, [])

    def unhealthy(self, now: float) -> list[str]:  # noqa: ARG002 -- the Checked protocol
        """The cycle's task, when it has stopped."""
        return ["control-cycle"] if self._task is not None and self._task.done() else []

    def _on_points(self, points: Sequence[Point]) -> None:
        for p in points:
            if not p.plausible:  # invalid, or a reading out of its range
                continue
            if p.name == self._bess_key:
                if self.loop.battery(p.source_ts, p.value):
                    self._ready_ts = p.received_ts
                    self._fresh.set()  # the meter measurement that waited for it can go
            elif p.quality is Quality.GOOD and self.loop.is_new(p.source_ts):
                samples = self.stats.grid_samples
                if not samples or p.source_ts > samples[-1][0]:
                    samples.append((p.source_ts, p.value))
                self._fresh_ts = self._ready_ts = p.received_ts
                self._fresh.set()

    async def _loop(self) -> None:
        period = self.config.cycle_ms / 1000.0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + period
        while True:
            timeout = max(0.0, min(deadline, self._next_lead(loop.time())) - loop.time())
            meter = False
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that arrives as the event is set, and the cycle would not stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._fresh.wait()
                meter = True
            now = loop.time()
            if not meter and now < deadline:  # a lead ahead of an announced edge
                self._led_to = self._lead_due  # once, even where the two clocks disagree
                await self._run_guarded(None, lead=True)
                continue
            if meter:
                self._fresh.clear()
                received = self._fresh_ts
                if self._ready_ts is not None:  # how long the run waited for the loop
                    self.stats.lateness_s.append(max(0.0, self.clock() - self._ready_ts))
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
        now = self.clock()
        due = self._next_due(now)
        if due is None:
            return math.inf
        self._lead_due = due
        return loop_now + (due - now)

    def _lead_in(self) -> float:
        """Seconds until the next lead is due (``inf``: none; 0: due now)."""
        now = self.clock()
        due = self._next_due(now)
        return math.inf if due is None else max(due - now, 0.0)

    def _next_due(self, now: float) -> float | None:
        """When the next lead is due on the cycle's clock (``None``: none, or not predictive)."""
        if not self.config.predictive:
            return None
        return self.loop.next_edge(now, self.battery.last_jobs, led_to=self._led_to)

    async def _run_guarded(self, received: float | None, *, lead: bool = False) -> None:
        try:
            await self.run_once(received, lead=lead)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.last_error = str(exc)
            log.exception("control_run_failed")

    # ---- one run ----

    async def run_once(
        self, received_ts: float | None = None, *, lead: bool = False
    ) -> GridDecision | None:
        """One cycle; ``received_ts`` is when the meter reading that triggered it arrived
        (``None``: a timer run, which steps the grid loop only if a new measurement waits);
        ``lead``: the timer's run ahead of an edge (its battery write is sent once more at once
        if unanswered after :data:`LEAD_WRITE_TIMEOUT_S`)."""
        async with self._lock:
            self._leading = lead
            try:
                return await self._run(received_ts)
            finally:
                self._leading = False

    async def _run(self, received_ts: float | None) -> GridDecision | None:
        self.stats.runs_total += 1
        if received_ts is not None:
            self.stats.meter_runs_total += 1
        now = self.clock()
        image = ProcessImage(self.store.snapshot(now), self.site, now, received_ts)
        asked = [(c.name, c.step(image)) for c in self.controllers]
        self._observe()
        if self.config.enabled:
            await self._write_resolved(asked, image)
        return self.battery.outcome.decision

    def _observe(self) -> None:
        """The statistics and events of the controllers' step."""
        outcome = self.battery.outcome
        decision = outcome.decision
        self.stats.rhythm_leads_total = self.loop.rhythm_leads_total
        self.stats.rhythm_drops_total = self.loop.rhythm.drops_total
        self.stats.readings_held_total = self.loop.held_total
        if decision is not None:
            self.stats.last = decision
            if decision.fallback is not None and not self.loop.guard.tripped:
                self.stats.fallbacks_total += 1
                if self.on_fallback is not None:
                    self.on_fallback(decision.fallback)
        elif outcome.skipped is not None and outcome.skipped not in {"safe mode", "no battery"}:
            self.stats.skipped_total += 1
        if outcome.event is not None:
            self._guard_event(outcome.event)
        self.stats.chw_setpoint_c = self.cooling.last_command_c
        self.stats.ffr_response_w = self.battery.ffr_in_force_w
        self.stats.ffr_active = self.battery.ffr.active and self.loop.state is not None

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

    async def _write_resolved(
        self, asked: Sequence[tuple[str, Sequence[SetpointRequest]]], image: ProcessImage
    ) -> None:
        """Write what the arbiter settled on where its policy says it is due (a value asked
        for again is rewritten after the policy's ``rewrite_after_s``: a keep-alive)."""
        resolved = {(r.device, r.point): r.value for r in self.arbiter.resolve(asked)}
        writes: list[SetpointWrite] = []
        for (device, point), value in resolved.items():
            policy = POLICIES.get(point, WritePolicy())
            if not policy.due(value, self._written.get((device, point)), image.now):
                continue
            await self._write(device, point, value, writes)
            if not writes[-1].ok:
                continue
            self._written[(device, point)] = (value, self.clock())
            if point == SETPOINT_POINT and image.received_ts is not None:
                latency = max(0.0, self.clock() - image.received_ts)
                self.stats.reading_to_setpoint_s.append(latency)
        if writes and self.record is not None:
            await self.record(writes)

    async def _write(
        self, device: str, point: str, value: float, out: list[SetpointWrite], *, again: bool = True
    ) -> None:
        t0 = time.perf_counter()
        error = None
        full_s = self.config.write_timeout_ms / 1000
        timeout_s, why = self._write_timeout(point, full_s, again=again)
        resend = False
        try:
            async with asyncio.timeout(timeout_s):
                await self.write(device, point, value)
        except TimeoutError:
            error = f"timed out after {timeout_s * 1000:.0f} ms{why}"
            resend = why == LEAD_RESENT  # a lead's write unanswered: sent once more, at once
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
        if resend:
            await self._write(device, point, value, out, again=False)

    def _write_timeout(self, point: str, full_s: float, *, again: bool) -> tuple[float, str]:
        """How long a write is waited for, and why if shorter than ``write_timeout_ms``."""
        if point != SETPOINT_POINT:
            return full_s, ""
        if self._leading and again and full_s > LEAD_WRITE_TIMEOUT_S:
            # A lead's write is due now: one whose reply is lost is sent again at once rather
            # than leaving the edge on the grid for the whole timeout.
            return LEAD_WRITE_TIMEOUT_S, LEAD_RESENT
        lead_in = self._lead_in()
        if lead_in < full_s:
            # A lead falls due before the write would time out: waiting for a lost reply past
            # it would put the edge on the battery that much late. Given up by then (after
            # LEAD_PREEMPT_MIN_S at least, what most replies take), the lead goes out.
            return max(lead_in, LEAD_PREEMPT_MIN_S), " (a lead ahead of an edge was due)"
        return full_s, ""
