"""The training rhythm of an announced job, learnt from the load so its edges go on the battery
ahead of them.

A synchronous training job alternates compute (every GPU near its limit) and communication (the
GPUs wait for the all-reduce): a square wave of the announced ``oscillation_period_sec`` and
``oscillation_depth_mw`` with edges of some 40 ms. The announcement gives its period and depth,
not its phase, so the grid loop would see every edge one loop delay late (half the meter's
window, the poll, the write, the PCS): at 180 MW an edge 60 ms late leaves 11 MJ on the grid.

:class:`Rhythm` learns the phase from the site load the loop already computes (grid + battery
at one instant, so the battery's own moves do not show):

- **Edges.** The rhythm's low and high levels are the median load of the last low and high
  phase (before both were seen: the load's least and greatest over the last 1.5 periods); an
  edge is where the load crosses halfway between them (its middle, interpolated between the
  two measurements either side), once it has been a quarter of the swing deep in the phase it
  leaves and two measurements in a row are past the middle (one alone may be a glitch of the
  grid + battery sum while the battery moves).
- **Lock.** An edge kind (rises, falls) is *locked* when each of its last ``iterations``
  instances came within ``tolerance_s`` of where the one before predicted it: a rise one mean
  period after the rise before; a fall one mean compute phase after its own rise. Edges that do
  not keep time (a compute phase that varies by more than the tolerance) are never predicted
  and stay with the reactive loop.
- **Ahead.** The next locked edge is the loop's to lead (:meth:`next_edge`: the cycle's timer
  puts it on the battery ``actuation_s`` before its middle), and each measurement until the
  edge shows keeps it there (:meth:`ahead_w`: what the edge will have done by the instant the
  setpoint acts, less what the measurement shows of it already). Once an edge has shown, what is
  left of it (the load between its middle and its new level) is on the battery at once.
- **Told.** The job may tell its own next edges (``POST /v1/workloads/{id}/rhythm``: its
  framework knows when a backward pass will end): :meth:`hint` puts them first. A told edge of
  the direction the load's phase turns next is predicted whether or not that kind keeps time
  (a compute phase that varies is led all the same), corrected by the learnt timing like a
  predicted one; it is consumed when the load shows it and dropped like one when it does not
  come (without forgetting what was learnt).
- **Giving up.** An edge not shown ``give_up_s`` after its middle was due is dropped and its
  kind learnt afresh (a checkpoint, a rhythm that stopped): the battery goes back to what the
  load shows, which costs one pulse of that length (what a late edge costs the reactive loop).
  Rises are predicted again one period after the next one seen (the announced period stands in
  for the intervals not measured yet).

Pure and synchronous like the rest of :mod:`pswd_gateway.control`: the caller passes the times.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Edge", "Rhythm", "RhythmSettings"]

WINDOW_PERIODS = 1.5
"""The rhythm's levels are the load's extremes over this many periods."""
VISIBLE_FRACTION = 0.5
"""The rhythm is followed while the load's swing is at least this share of the announced depth."""
ARMING_FRACTION = 0.25
"""The load must have been this share of the swing on the other side of the middle before a
crossing counts as an edge."""
PERIOD_RANGE = (0.5, 1.5)
"""A rise-to-rise interval outside this share of the announced period breaks the lock."""
CROSSING_GAP_S = 0.05
"""An edge is placed only between two measurements this close; across a longer gap (a lost
poll, a stalled loop) it turns the phase but is not timed."""
MAX_SKIPPED = 4
"""Rises this many periods apart still measure the period (the ones between not placed)."""
TIME_EPS_S = 1e-9
PLATEAU_SAMPLES = 3
"""A phase measured this many times after its edge settled gives the rhythm's level."""
SETTLE_S = 0.1
"""For this long after an edge's middle what is left of it is still on its way."""
TIMING_GAIN = 0.3
"""Share of a led edge's measured timing error taken into the next lead."""
TIMING_LIMIT_S = 0.1
"""The lead's correction stays within this (a larger error is not a timing error)."""
BATTERY_SAMPLES = 128
MAX_HINTS = 16
"""Told edges kept ahead (the newest win)."""
HINT_MATCH_S = 0.1
"""A told edge this close to where the load showed an edge of its direction was that edge."""


@dataclass(frozen=True, slots=True)
class RhythmSettings:
    tolerance_s: float = 0.02
    """An edge kind is predicted only while its edges come this close to where predicted
    (0: the rhythm is never predicted)."""
    iterations: int = 8
    """How many edges of a kind in a row must keep time before the next is predicted (the
    announced period stands in for rises not seen yet; compute phases are not announced). Eight
    keep a compute phase that varies by ±5 % (±94 ms of 1.9 s) from passing for steady by
    chance: four such phases fall within ±20 ms of their mean in some 3 % of iterations, eight
    in less than 0.02 %."""
    give_up_s: float = 0.04
    """A predicted edge that has not shown this long after its middle is dropped."""


@dataclass(frozen=True, slots=True)
class Edge:
    """A predicted edge: its middle ``at`` and its direction."""

    at: float
    rise: bool


@dataclass(frozen=True, slots=True)
class _Phase:
    high: bool
    since: float
    """The middle of the edge that began it."""


@dataclass
class Rhythm:
    """One job's rhythm, followed from the site load (see the module docstring)."""

    settings: RhythmSettings = field(default_factory=RhythmSettings)
    period_s: float | None = field(default=None, init=False)
    """The announced period of the job followed (``None``: none is)."""
    depth_w: float = field(default=0.0, init=False)
    """The announced depth of that job."""
    _window: deque[tuple[float, float]] = field(default_factory=deque, init=False)
    _low: float = field(default=0.0, init=False)
    _high: float = field(default=0.0, init=False)
    _phase: _Phase | None = field(default=None, init=False)
    _armed: bool = field(default=False, init=False)
    _rises: deque[float] = field(default_factory=deque, init=False)
    _computes: deque[float] = field(default_factory=deque, init=False)
    """Rise-to-fall durations of the last iterations."""
    _levels: dict[bool, float] = field(default_factory=dict, init=False)
    """The median load of the last whole high and low phase (``True``: high)."""
    _plateau: list[float] = field(default_factory=list, init=False)
    """The load through the current phase, once its edge has settled."""
    drops_total: int = field(default=0, init=False)
    """Predicted edges that did not come."""
    timing_s: float = field(default=0.0, init=False)
    """Learnt correction of the predicted edges: how much later than the load's measured middle
    the battery must be told for its own measured middle to land on it."""
    _battery: deque[tuple[float, float]] = field(
        default_factory=lambda: deque(maxlen=BATTERY_SAMPLES), init=False
    )
    _led: tuple[Edge, float] | None = field(default=None, init=False)
    """The predicted edge on the battery, and when it was told."""
    _check: tuple[float, float, bool] | None = field(default=None, init=False)
    """(the load's middle, when the battery was told, rise) of a led edge that has shown."""
    _hints: list[Edge] = field(default_factory=list, init=False)
    """Edges the job told, in time order (:meth:`hint`)."""
    hints_dropped_total: int = field(default=0, init=False)
    """Told edges that did not come."""

    # ---- what is followed ----

    def follow(self, period_s: float | None, depth_w: float) -> None:
        """Follow a job with this announced rhythm (``None``: no job, or more than one whose
        rhythms would add up); a change starts afresh."""
        if period_s == self.period_s and depth_w == self.depth_w:
            return
        self.period_s, self.depth_w = period_s, depth_w
        self._window.clear()
        self._rises.clear()
        self._computes.clear()
        self._phase, self._armed, self._levels = None, False, {}
        self._plateau.clear()
        self._hints.clear()

    def hint(self, edges: Sequence[Edge]) -> None:
        """The job told its next edges (middles on the measurements' clock): they replace
        the ones told before from the first of them on."""
        if self.period_s is None or not edges:
            return
        first = min(e.at for e in edges)
        kept = [e for e in self._hints if e.at < first - HINT_MATCH_S]
        self._hints = sorted([*kept, *edges], key=lambda e: e.at)[-MAX_HINTS:]

    @property
    def swing_w(self) -> float:
        """The load's swing the rhythm is measured with (0 while it is not visible)."""
        return self._high - self._low if self._phase is not None else 0.0

    # ---- measurements ----

    def observe(self, t: float, load_w: float) -> None:
        """The site load measured at ``t`` (measurements in time order)."""
        period = self.period_s
        if period is None or self.settings.tolerance_s <= 0.0:
            return
        window = self._window
        window.append((t, load_w))
        while window and window[0][0] < t - WINDOW_PERIODS * period:
            window.popleft()
        loads = [w for _, w in window]
        if max(loads) - min(loads) < VISIBLE_FRACTION * self.depth_w or len(window) < 3:
            self._phase, self._armed, self._levels = None, False, {}
            return
        self._low = self._levels.get(False, min(loads))
        self._high = self._levels.get(True, max(loads))
        self._turn(t, load_w, self._low + (self._high - self._low) / 2.0)

    def _turn(self, t: float, load_w: float, middle: float) -> None:
        """Follow the phase through the newest measurement; ``middle``: between the levels."""
        (t0, w0), (t1, w1) = self._window[-3], self._window[-2]
        timed = t1 - t0 <= CROSSING_GAP_S
        # An edge is two measurements in a row past the middle: one alone may be a glitch of
        # the grid + battery sum while the battery moves.
        high = load_w > middle and w1 > middle
        low = load_w <= middle and w1 <= middle
        phase = self._phase
        if phase is None:
            if high and w0 <= middle:  # the job's start: its first rise
                self._phase = _Phase(high=False, since=-math.inf)
                self._edge(_crossing((t0, w0), (t1, w1), middle), rise=True, timed=timed)
            elif high or low:  # seen from the middle of a phase: no edge began it
                self._phase, self._armed = _Phase(high=high, since=-math.inf), False
            return
        if t - phase.since > SETTLE_S:
            self._plateau.append(load_w)
        margin = ARMING_FRACTION * (self._high - self._low)
        deep = load_w > middle + margin if phase.high else load_w < middle - margin
        self._armed = self._armed or deep
        if (low if phase.high else high) and self._armed and (w0 > middle) == phase.high:
            self._edge(_crossing((t0, w0), (t1, w1), middle), rise=not phase.high, timed=timed)
            return
        edge = self.pending()
        late = edge is not None and t > edge.at + self.settings.give_up_s
        if edge is not None and late and (load_w > middle) == phase.high:
            self._drop(edge)

    def _edge(self, at: float, *, rise: bool, timed: bool = True) -> None:
        """An edge whose middle the load crossed at ``at``; ``timed``: between two measurements
        close enough to place it (an edge seen across a gap turns the phase, nothing more)."""
        n = self.settings.iterations
        if timed and rise:
            self._rises.append(at)
            while len(self._rises) > n + 2:
                self._rises.popleft()
        elif timed and self._rises and self._phase is not None and self._phase.high:
            began = self._phase.since
            if abs(self._rises[-1] - began) <= TIME_EPS_S:  # the rise of this iteration
                self._computes.append(at - began)
                while len(self._computes) > n:
                    self._computes.popleft()
        if self._phase is not None and len(self._plateau) >= PLATEAU_SAMPLES:
            self._levels[self._phase.high] = statistics.median(self._plateau)
        self._plateau.clear()
        # the told edges up to this one have passed (this one among them)
        self._hints = [h for h in self._hints if h.at > at + HINT_MATCH_S]
        led, self._led = self._led, None
        if timed and led is not None and led[0].rise == rise and abs(led[0].at - at) <= SETTLE_S:
            self._check = (at, led[1], rise)
        self._phase, self._armed = _Phase(rise, at), False

    def _drop(self, edge: Edge) -> None:
        """``edge`` has not shown when due (a checkpoint, a rhythm that stopped): this kind is
        learnt afresh from its next edges (a rise is predicted again one period after the next
        one seen, from the announced period)."""
        self.drops_total += 1
        told = self._told()
        if told is not None and abs(told.at + self.timing_s - edge.at) <= TIME_EPS_S:
            self._hints.remove(told)  # a told edge that did not come: what was learnt stays
            self.hints_dropped_total += 1
            return
        (self._rises if edge.rise else self._computes).clear()

    def battery(self, t: float, w: float) -> None:
        """The battery's power measured at ``t``: once a led edge has settled, where the
        battery's middle landed against the load's corrects the next lead."""
        self._battery.append((t, w))
        check = self._check
        if check is None or t < check[0] + SETTLE_S:
            return
        self._check = None
        at, told, rise = check
        landed = _middle(self._battery, told, rise, self.swing_w)
        if landed is not None:
            error = landed - at
            self.timing_s = min(
                max(self.timing_s - TIMING_GAIN * error, -TIMING_LIMIT_S), TIMING_LIMIT_S
            )

    def led(self, edge: Edge, told: float) -> None:
        """``edge`` went on the battery at ``told`` (a lead, or a step's feed-forward)."""
        self._led = (edge, told)

    # ---- predictions ----

    def _keeps_time(self, values: list[float], announced: float | None = None) -> float | None:
        """The mean of the last ``iterations`` of ``values`` when each is within the tolerance
        of it (``None``: they do not keep time). Until there are that many, the ``announced``
        value stands in for the missing ones (so the rise after a job's start is predicted
        from its announced period)."""
        n, tol = self.settings.iterations, self.settings.tolerance_s
        recent = values[-n:]
        if len(recent) < n and announced is None:
            return None
        if len(recent) < n and announced is not None:
            recent = [announced] * (n - len(recent)) + recent
        mean = sum(recent) / n
        return mean if all(abs(v - mean) <= tol for v in recent) else None

    def period(self) -> float | None:
        """The measured period while rises keep time (the announced period counts until
        enough rises were seen). Two rises a few periods apart (the ones between seen across
        a gap) count as that many periods."""
        announced = self.period_s
        if announced is None:
            return None
        periods: list[float] = []
        for a, b in itertools.pairwise(self._rises):
            k = max(1, round((b - a) / announced))
            per = (b - a) / k
            if k > MAX_SKIPPED or not PERIOD_RANGE[0] <= per / announced <= PERIOD_RANGE[1]:
                periods.clear()  # a different rhythm (or none) in between: start afresh
                continue
            periods.append(per)
        return self._keeps_time(periods, announced)

    def compute_s(self) -> float | None:
        """The measured compute phase (rise to fall) while falls keep time."""
        return self._keeps_time(list(self._computes))

    def pending(self) -> Edge | None:
        """The next edge, where it is predicted: the end of the phase the load is in."""
        phase = self._phase
        told = self._told()
        if told is not None:
            return Edge(told.at + self.timing_s, rise=told.rise)
        if phase is None or not self._rises:
            return None
        last = self._rises[-1]
        if phase.high:
            compute = self.compute_s()
            if compute is None or abs(last - phase.since) > TIME_EPS_S:
                return None  # no fall predicted without this iteration's rise placed
            at = last + compute
        else:
            period = self.period()
            if period is None:
                return None
            at = last + period * (math.floor((max(phase.since, last) - last) / period) + 1)
        return Edge(at + self.timing_s, rise=not phase.high)

    def _told(self) -> Edge | None:
        """The first told edge of the direction the load's phase turns next (one told for
        before this phase began came too late: it is not this phase's end)."""
        phase = self._phase
        if phase is None:
            return None
        return next((h for h in self._hints if h.rise != phase.high and h.at > phase.since), None)

    def next_edge(self, after: float) -> Edge | None:
        """The predicted edge whose middle comes after ``after``, if the rhythm keeps time."""
        edge = self.pending()
        return edge if edge is not None and edge.at > after else None

    def ahead_w(self, t: float, load_w: float, acting_at: float) -> float:
        """What the rhythm will add between a measurement (``load_w`` at ``t``) and the instant
        a setpoint decided from it acts: a predicted edge due by then that has not shown yet,
        or what is left of an edge that has just shown."""
        phase = self._phase
        swing = self.swing_w
        if phase is None or swing <= 0.0:
            return 0.0
        swing = min(swing, self.depth_w)  # never more than the job said it swings
        shown = min(max((load_w - self._low) / swing, 0.0), 1.0)
        edge = self.pending()
        if edge is not None and edge.at <= acting_at:
            return ((1.0 if edge.rise else 0.0) - shown) * swing
        if t - phase.since <= SETTLE_S:  # the edge that began this phase is still on its way
            left = (1.0 if phase.high else 0.0) - shown
            return max(left, 0.0) * swing if phase.high else min(left, 0.0) * swing
        return 0.0


def _crossing(a: tuple[float, float], b: tuple[float, float], level: float) -> float:
    """When the load crossed ``level`` between measurements ``a`` and ``b`` (linear)."""
    (t0, w0), (t1, w1) = a, b
    share = (level - w0) / (w1 - w0) if w1 != w0 else 1.0
    return t0 + min(max(share, 0.0), 1.0) * (t1 - t0)


def _middle(
    samples: deque[tuple[float, float]], told: float, rise: bool, swing: float
) -> float | None:
    """Where the battery's power crossed halfway from its level when it was ``told`` to its
    newest (``None``: it moved by less than half the swing, e.g. held by a limit)."""
    before = [(t, w) for t, w in samples if t <= told]
    after = [(t, w) for t, w in samples if t > told]
    if not before or not after:
        return None
    w0, w1 = before[-1][1], after[-1][1]
    if (w1 - w0 if rise else w0 - w1) < swing / 2.0:
        return None
    half = (w0 + w1) / 2.0
    t_prev, w_prev = before[-1]
    for t, w in after:
        if (w >= half) if rise else (w <= half):
            share = (half - w_prev) / (w - w_prev) if w != w_prev else 1.0
            return t_prev + share * (t - t_prev)
        t_prev, w_prev = t, w
    return None
