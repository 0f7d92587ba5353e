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
from pswd_gateway.control.rhythm import WINDOW_PERIODS as RHYTHM_WINDOW
from pswd_gateway.control.rhythm import Rhythm, RhythmSettings

__all__ = ["FAST_EDGE_S", "GridLoop", "LoopSettings", "Outcome", "rhythm_of", "rhythmic_job"]

FAST_EDGE_S = 0.1
"""An announced edge this short goes on the battery at once, timed to its middle (a lead);
slower ones follow the readings' feed-forward."""
TIME_EPS_S = 1e-4
"""Instants this close are one (POSIX seconds in floats resolve to ~0.2 µs)."""

HISTORY = 512
HOLD_DEADBAND_W = 1e6
"""A setpoint move smaller than this leaves the battery settled (a held reading errs by less)."""


def rhythmic_job(jobs: Sequence[Announced], t: float) -> Announced | None:
    """The one announced job with a training rhythm that runs (or starts within the rhythm's
    window, so its start is seen as its first rise); ``None`` when none has one, or more than
    one (their rhythms would add up out of phase)."""
    running = [
        j
        for j in jobs
        if j.period_s is not None and j.start_s - RHYTHM_WINDOW * j.period_s <= t < j.end_s
    ]
    return running[0] if len(running) == 1 else None


def rhythm_of(jobs: Sequence[Announced], t: float) -> tuple[float | None, float]:
    """(period, depth) of :func:`rhythmic_job`; ``(None, 0)`` without one."""
    job = rhythmic_job(jobs, t)
    return (None, 0.0) if job is None else (job.period_s, job.depth_w)


@dataclass(frozen=True, slots=True)
class LoopSettings:
    max_skew_s: float = 0.005
    """How far past its newest reading the battery's power may be held to meet a meter reading;
    a meter reading further ahead waits for the battery's next reading."""
    stale_s: float = 0.5
    """No new meter measurement for this long: the battery ramps to zero."""
    settled_hold_s: float = 0.3
    """A battery that had settled on its last command, and has been told nothing new since, is
    held at its newest reading for up to this long while its readings are late (a lost poll):
    the loop keeps deciding instead of waiting blind."""
    actuation_s: float = 0.03
    """From a reading's arrival to its setpoint acting: the write, the PCS's dead time and its
    response. Announced edges go on the battery this much ahead (:class:`GridReading`)."""
    measure_window_s: float = 0.0
    """The meter's and the battery's measurement window, the longer of the two (each reading is
    the mean over one, see :mod:`pswd_gateway.southbound.source_time`; 0: measured when asked).
    A reading whose window can reach into a fast edge already on the battery (announced, or the
    rhythm's led edge) mixes the load before and after it, unlike the battery's reading it is
    added to: it is not stepped (:attr:`GridLoop.held_total`)."""
    guard: GuardSettings = field(default_factory=GuardSettings)
    rhythm: RhythmSettings = field(default_factory=RhythmSettings)


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
    rhythm: Rhythm = field(init=False)
    state: LimiterState | None = field(default=None, init=False)
    setpoint_w: float = field(default=0.0, init=False)
    """The last setpoint decided."""
    moved_at: float = field(default=math.inf, init=False)
    """When the setpoint last moved by more than :data:`HOLD_DEADBAND_W` (``inf``: the battery
    may have been told anything before the loop started)."""
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
    rhythm_led: float | None = field(default=None, init=False)
    """The middle of the last rhythm edge a lead put on the battery."""
    rhythm_leads_total: int = field(default=0, init=False)
    """Rhythm edges put on the battery ahead of them (by a lead or a step's feed-forward)."""
    held_total: int = field(default=0, init=False)
    """Meter measurements not stepped: their windows reach into a fast edge already on the
    battery (:attr:`LoopSettings.measure_window_s`)."""

    def __post_init__(self) -> None:
        self.guard = Guard(self.settings.guard)
        self.rhythm = Rhythm(self.settings.rhythm)

    # ---- inputs ----

    def battery(self, t: float, w: float) -> bool:
        """A battery power reading measured at ``t`` (repeats of the newest time are ignored).
        True when it lets a waiting meter measurement be stepped now."""
        if self._bess_t and t <= self._bess_t[-1]:
            return False
        self._bess_t.append(t)
        self._bess_w.append(w)
        self.rhythm.battery(t, w)
        return self.waiting is not None and t >= self.waiting

    def battery_at(self, t: float) -> float | None:
        """The battery's power at ``t`` from its readings; ``None`` when they do not cover it."""
        times = self._bess_t
        if not times or t < times[0]:
            return None
        if t >= times[-1]:
            newest = times[-1]
            held = t - newest <= self.settings.max_skew_s or (
                # settled on the last command and told nothing new since: it is still there
                newest >= self.moved_at + self.settings.actuation_s
                and t - newest <= self.settings.settled_hold_s
            )
            return self._bess_w[-1] if held else None
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
        ffr_w: float = 0.0,
        now: float | None = None,
    ) -> Outcome:
        """A new meter measurement ``grid_w`` taken at ``t`` (arrived at ``received``, stepped at
        ``now``, default ``received``); ``ffr_w``: the fast frequency response in force (a shift
        of the plan, see :mod:`pswd_gateway.control.ffr`)."""
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
        load_w = grid_w + bess_w
        self.rhythm.follow(*rhythm_of(jobs, t))
        self.rhythm.observe(t, load_w)
        if self._across_led_edge(t, jobs):
            self.held_total += 1
            return Outcome(None, skipped="measured across an edge already on the battery")
        # a setpoint decided now acts from now (a run held up decides later than it received)
        decided = received if now is None else max(received, now)
        acting_at = max(self._reach(decided, jobs), self.ahead_to or -math.inf)
        rhythm_w = self.rhythm.ahead_w(t, load_w, acting_at)
        reading = GridReading(
            t,
            grid_w,
            bess_w,
            soc,
            bess_available and soc is not None,
            acting_at=acting_at,
            rhythm_w=rhythm_w,
            ffr_w=ffr_w,
        )
        edge = self.rhythm.pending()
        if edge is not None and edge.at <= acting_at and edge.at != self.rhythm_led:
            self.rhythm_led = edge.at  # on the battery with this decision: no lead for it
            self.rhythm_leads_total += 1
            self.rhythm.led(edge, received)
        self.ahead_to = reading.acting_at
        # the plan the grid was held to: the limiter's, shifted by the frequency response
        previous = self.state
        previous_plan = previous.grid_w - previous.ffr_w if previous is not None else None
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
        self._set(decision.bess_setpoint_w, received)
        return Outcome(self.setpoint_w, decision, event)

    def _across_led_edge(self, t: float, jobs: Sequence[Announced]) -> bool:
        """Whether the measurement at ``t`` can have been taken across a fast announced edge,
        or the rhythm's edge, that a lead (or an earlier step) already put on the battery. Its
        grid reading and the battery's are means over windows that do not line up, and across
        a 180 MW edge their sum misjudges the load by up to the edge: a step would move the
        battery by that for a reading's delay (the reactive correction of an edge that was
        already taken). The setpoint is held until a reading's window is past the edge. An
        edge that did not go on the battery (a lead lost) is stepped as any reading."""
        if self.ahead_to is None or self.state is None:
            return False
        window = self.settings.measure_window_s
        if any(
            end - begin <= FAST_EDGE_S
            and self.ahead_to >= end - TIME_EPS_S
            and t - window < end
            and t + window > begin
            for begin, end in announced_edges(jobs)
        ):
            return True
        # The rhythm's last led edge: the load's middle it was predicted at (the lead went out
        # the learnt timing away from it), as long as the job's announced ramp makes the edge.
        # A predicted edge that does not come is on the battery until the rhythm gives it up
        # 40 ms after its middle in any case.
        job = rhythmic_job(jobs, t)
        if self.rhythm_led is None or job is None or job.ramp_w_per_s <= 0.0:
            return False
        half = min(job.depth_w / job.ramp_w_per_s, FAST_EDGE_S) / 2.0
        return abs(t - (self.rhythm_led - self.rhythm.timing_s)) < half + window

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
        add = self._rhythm_lead(now, acting)
        if acting > self.ahead_to:
            add += feedforward_w(acting, jobs) - feedforward_w(self.ahead_to, jobs)
            self.ahead_to = acting
        if add == 0.0:
            return Outcome(None, skipped=None)
        rated = settings.bess_rated_w
        self._set(min(max(self.setpoint_w + add, -rated), rated), now)
        return Outcome(self.setpoint_w, skipped=None)

    def _rhythm_lead(self, now: float, acting: float) -> float:
        """The learnt rhythm's next edge, once, if it is due by ``acting``."""
        edge = self.rhythm.pending()
        if edge is None or edge.at > acting or edge.at == self.rhythm_led:
            return 0.0
        self.rhythm_led = edge.at
        self.rhythm_leads_total += 1
        self.rhythm.led(edge, now)
        # never more than the job said it swings (as ahead_w): before its first low phase was
        # seen the rhythm's low is the load before the job, and its swing the start's height
        swing = min(self.rhythm.swing_w, self.rhythm.depth_w)
        return swing if edge.rise else -swing

    def _reach(self, now: float, jobs: Sequence[Announced]) -> float:
        """The instant a setpoint decided at ``now`` acts, and the feed-forward covers: ``now +
        actuation_s``, or the end of a fast announced edge whose middle it reaches (the
        battery then moves with the edge, not ahead of it or after it)."""
        acting = now + self.settings.actuation_s
        for begin, end in announced_edges(jobs):
            if end - begin <= FAST_EDGE_S and (begin + end) / 2.0 <= acting + TIME_EPS_S < end:
                acting = end
        return acting

    def next_edge(
        self, now: float, jobs: Sequence[Announced], *, led_to: float | None = None
    ) -> float | None:
        """When the next lead is due (the clock of ``received``): ``actuation_s`` before the
        middle of a fast announced edge or of the rhythm's next edge.

        Without ``led_to`` only a lead due after ``now`` counts. With it (the due time of the
        last lead the timer ran), a lead due after ``led_to`` counts while its edge's middle is
        still ahead, even if its time has passed: a cycle held up (a write waiting out a lost
        reply) puts the edge on the battery late rather than not at all."""
        lead = self.settings.actuation_s
        after = now if led_to is None else led_to
        on = self.ahead_to if self.ahead_to is not None else -math.inf  # already on the battery
        due = [
            (begin + end) / 2.0 - lead
            for begin, end in announced_edges(jobs)
            if end - begin <= FAST_EDGE_S
            and (begin + end) / 2.0 - lead > after
            and (begin + end) / 2.0 > max(now, on)
        ]
        edge = self.rhythm.next_edge(max(now, after + lead))
        if edge is not None and edge.at != self.rhythm_led:
            due.append(edge.at - lead)
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
        self._set(math.copysign(left, held), now)
        return Outcome(self.setpoint_w, skipped="no new meter measurement")

    def _set(self, setpoint_w: float, at: float) -> None:
        """Decide ``setpoint_w`` at ``at``; a move of more than :data:`HOLD_DEADBAND_W` means the
        battery's readings from before it no longer tell where the battery is."""
        if abs(setpoint_w - self.setpoint_w) > HOLD_DEADBAND_W:
            self.moved_at = at
        self.setpoint_w = setpoint_w

    def _safe(self, t: float, settings: GridSettings) -> Outcome:
        self.state = None
        self._set(self.guard.safe_setpoint(t, settings.planning_ramp_w_per_s), t)
        return Outcome(self.setpoint_w, skipped="safe mode")
