"""The grid loop between the readings and the battery setpoint, without I/O.

:class:`GridLoop` is what the control cycle does with each reading, kept synchronous and free of
sockets and clocks so that the live cycle (:mod:`pswd_gateway.control.cycle`) and the offline
site simulator (:mod:`pswd_gateway.bench.sitesim`) run the very same code:

1. **One instant.** A grid-meter reading is a measurement at its source time ``t`` (the
   device's, or estimated from its refresh, see :mod:`pswd_gateway.southbound.source_time`).
   The battery's power at that same ``t`` is interpolated between its own time-stamped readings
   (held for at most ``max_skew_s`` past the newest one). Grid + battery is then the site load at
   one instant and the setpoint does not feed back on itself. A meter reading ahead of the
   battery's readings *waits* for the battery's next one (:attr:`GridLoop.waiting`): holding a
   battery that is moving would misjudge the load by what it moved.
2. **One step per measurement.** Only a *new* measurement steps the limiter, with ``dt`` between
   measurement times; a re-read of the same value, or a timer, does not.
3. **Guard.** Every decision passes :class:`~pswd_gateway.control.guard.Guard`; in safe mode the
   setpoint is the guard's (held, then ramped to zero) until it re-arms.
4. **Stale.** Without a new meter measurement for ``stale_s`` the setpoint ramps to zero at the
   planning ramp and the limiter starts afresh from the next reading.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from pswd_gateway.control.grid import (
    Announced,
    GridDecision,
    GridReading,
    GridSettings,
    LimiterState,
    announced_edges,
    feedforward_w,
    grid_step,
)
from pswd_gateway.control.guard import Guard, GuardEvent, GuardSettings

__all__ = ["FAST_EDGE_S", "GridLoop", "LoopSettings", "Outcome"]

FAST_EDGE_S = 0.1
"""An announced edge this short goes on the battery at once, timed to its middle (a lead);
slower ones follow the readings' feed-forward."""
TIME_EPS_S = 1e-4
"""Instants this close are one (POSIX seconds in floats resolve to ~0.2 µs)."""

HISTORY = 512


@dataclass(frozen=True, slots=True)
class LoopSettings:
    max_skew_s: float = 0.005
    """How far past its newest reading the battery's power may be held to meet a meter reading;
    a meter reading further ahead waits for the battery's next reading."""
    stale_s: float = 0.5
    """No new meter measurement for this long: the battery ramps to zero."""
    actuation_s: float = 0.03
    """From a reading's arrival to its setpoint acting: the write, the PCS's dead time and its
    response. Announced edges go on the battery this much ahead (:class:`GridReading`)."""
    guard: GuardSettings = field(default_factory=GuardSettings)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one call decided: a setpoint to write (or ``None``: leave it), and why."""

    setpoint_w: float | None
    decision: GridDecision | None = None
    event: GuardEvent | None = None
    skipped: str | None = None
    """Why no decision was taken from this reading (``None`` when one was)."""


@dataclass
class GridLoop:
    settings: LoopSettings = field(default_factory=LoopSettings)
    guard: Guard = field(init=False)
    state: LimiterState | None = field(default=None, init=False)
    setpoint_w: float = field(default=0.0, init=False)
    """The last setpoint decided."""
    meter_t: float | None = field(default=None, init=False)
    """Source time of the last meter measurement stepped."""
    meter_received: float | None = field(default=None, init=False)
    """When that measurement arrived (the clock ``idle`` is called with)."""
    _bess_t: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY), init=False)
    _bess_w: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY), init=False)
    _stale_since: tuple[float, float] | None = field(default=None, init=False)
    waiting: float | None = field(default=None, init=False)
    """Source time of a meter measurement waiting for a battery reading at or after it."""
    ahead_to: float | None = field(default=None, init=False)
    """The announced edges up to this instant are on the battery (the last decision's
    ``acting_at``, or a lead's)."""

    def __post_init__(self) -> None:
        self.guard = Guard(self.settings.guard)

    # ---- inputs ----

    def battery(self, t: float, w: float) -> bool:
        """A battery power reading measured at ``t`` (repeats of the newest time are ignored).
        True when it lets a waiting meter measurement be stepped now."""
        if self._bess_t and t <= self._bess_t[-1]:
            return False
        self._bess_t.append(t)
        self._bess_w.append(w)
        return self.waiting is not None and t >= self.waiting

    def battery_at(self, t: float) -> float | None:
        """The battery's power at ``t`` from its readings; ``None`` when they do not cover it."""
        times = self._bess_t
        if not times or t < times[0]:
            return None
        if t >= times[-1]:
            return self._bess_w[-1] if t - times[-1] <= self.settings.max_skew_s else None
        i = bisect.bisect_right(times, t)
        t0, t1 = times[i - 1], times[i]
        w0, w1 = self._bess_w[i - 1], self._bess_w[i]
        return w0 + (w1 - w0) * (t - t0) / (t1 - t0)

    def is_new(self, t: float) -> bool:
        """Whether a meter reading measured at ``t`` has not been stepped yet."""
        return self.meter_t is None or t > self.meter_t

    # ---- decisions ----

    def step(
        self,
        t: float,
        grid_w: float,
        *,
        received: float,
        soc: float | None,
        bess_available: bool,
        jobs: Sequence[Announced],
        settings: GridSettings,
    ) -> Outcome:
        """A new meter measurement ``grid_w`` taken at ``t`` (arrived at ``received``)."""
        if not self.is_new(t):
            return Outcome(None, skipped="not a new measurement")
        bess_w = self.battery_at(t) if bess_available else 0.0
        if bess_w is None:
            self.waiting = t
            return Outcome(None, skipped="waiting for the battery's reading at the meter's time")
        self.waiting = None
        self.meter_t, self.meter_received = t, received
        self._stale_since = None
        if self.guard.tripped:
            event = self.guard.rearm(t)
            if event is None:
                return self._safe(t, settings)
            self.state = None  # start afresh from this reading
        else:
            event = None
        reading = GridReading(
            t,
            grid_w,
            bess_w,
            soc,
            bess_available and soc is not None,
            acting_at=max(self._reach(received, jobs), self.ahead_to or -math.inf),
        )
        self.ahead_to = reading.acting_at
        previous_plan = self.state.grid_w if self.state is not None else None
        decision = grid_step(self.state, reading, jobs, settings)
        self.state = decision.state
        trip = None
        if previous_plan is not None:
            # Where a hard limit bound, the grid takes the rest by design: not off its plan.
            plan = previous_plan if decision.binding is None else grid_w
            trip = self.guard.observe(
                t,
                setpoint_w=decision.bess_setpoint_w,
                grid_w=grid_w,
                plan_w=plan,
                import_limit_w=settings.import_limit_w,
                bess_w=bess_w,
                rated_w=settings.bess_rated_w,
            )
        if trip is not None:
            outcome = self._safe(t, settings)
            return Outcome(outcome.setpoint_w, decision, trip)
        self.setpoint_w = decision.bess_setpoint_w
        return Outcome(self.setpoint_w, decision, event)

    def lead(self, now: float, jobs: Sequence[Announced], settings: GridSettings) -> Outcome:
        """A timer run at ``now`` (the clock of ``received``) ahead of an announced edge: what the
        jobs add between the last decision's acting instant and this run's goes on the battery
        now, not with the next reading, which may come too late for a 40 ms edge. The next
        step decides afresh from its reading (its feed-forward starts from here)."""
        if self.state is None or self.ahead_to is None or self.guard.tripped:
            return Outcome(None, skipped=None)
        if self._stale_since is not None:
            return Outcome(None, skipped=None)
        acting = self._reach(now, jobs)
        if acting <= self.ahead_to:
            return Outcome(None, skipped=None)
        add = feedforward_w(acting, jobs) - feedforward_w(self.ahead_to, jobs)
        self.ahead_to = acting
        if add == 0.0:
            return Outcome(None, skipped=None)
        rated = settings.bess_rated_w
        self.setpoint_w = min(max(self.setpoint_w + add, -rated), rated)
        return Outcome(self.setpoint_w, skipped=None)

    def _reach(self, now: float, jobs: Sequence[Announced]) -> float:
        """The instant a setpoint decided at ``now`` acts, and the feed-forward covers: ``now +
        actuation_s``, or the end of a fast announced edge whose middle it reaches (the
        battery then moves with the edge, not ahead of it or after it)."""
        acting = now + self.settings.actuation_s
        for begin, end in announced_edges(jobs):
            if end - begin <= FAST_EDGE_S and (begin + end) / 2.0 <= acting + TIME_EPS_S < end:
                acting = end
        return acting

    def next_edge(self, now: float, jobs: Sequence[Announced]) -> float | None:
        """When the next lead is due (the clock of ``received``): ``actuation_s`` before the
        middle of a fast announced edge, if one comes after ``now``."""
        lead = self.settings.actuation_s
        due = [
            (begin + end) / 2.0 - lead
            for begin, end in announced_edges(jobs)
            if end - begin <= FAST_EDGE_S and (begin + end) / 2.0 - lead > now
        ]
        return min(due, default=None)

    def idle(self, now: float, settings: GridSettings | None) -> Outcome:
        """A timer run at ``now`` (the clock of ``received``): safe-mode and stale ramps."""
        if self.meter_received is None or now - self.meter_received < self.settings.stale_s:
            return Outcome(None, skipped=None)
        ramp = settings.planning_ramp_w_per_s if settings is not None else math.inf
        if self._stale_since is None:
            self._stale_since = (now, self.setpoint_w)
            self.state = None
        since, held = self._stale_since
        left = max(abs(held) - (now - since) * ramp, 0.0)
        self.setpoint_w = math.copysign(left, held)
        return Outcome(self.setpoint_w, skipped="no new meter measurement")

    def _safe(self, t: float, settings: GridSettings) -> Outcome:
        self.state = None
        self.setpoint_w = self.guard.safe_setpoint(t, settings.planning_ramp_w_per_s)
        return Outcome(self.setpoint_w, skipped="safe mode")
