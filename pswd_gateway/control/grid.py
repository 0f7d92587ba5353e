"""Grid-side control: what the battery does so that the grid sees a smooth, limited draw.

Pure functions of (state, reading, announced jobs, settings); no I/O, no clock. Each step runs
the controllers in a fixed order and the arbiter last:

1. *Predictive feed-forward* (:func:`expected_announced_w`, :func:`planned_announced_w`): each
   announced job contributes the load it will draw (its own fast ramp) and, separately, the
   grid draw planned for it: a ramp at the planning rate that ends with the job's own rise, so
   the grid already carries the job's level when it starts (the battery charges meanwhile) and
   the grid is flat when the training rhythm begins; the fall is centred on the job's end (an
   end is an estimate).
2. *Grid ramp limiter*: the rest of the site load, what nobody announced, passes a two-stage
   low-pass filter (cut-off half the lowest oscillation band, so the training rhythm is
   attenuated); the grid target is that plus the planned draw plus the SoC bias, followed at
   no more than ``ramp_margin x ramp limit``.
3. *SoC management* (:func:`soc_bias_w`): a slow pull towards the target SoC, raised before an
   announced start and lowered before an announced stop by the energy the ramp will need.
4. *Arbiter*: hard limits win, in this order: the grid import limit, the inverter rating, the
   SoC window. What the battery cannot cover goes to the grid, and when that breaks the ramp
   limit the decision carries a *workload fallback*: the workload is asked to ramp instead.
5. *Fast frequency response* (:mod:`pswd_gateway.control.ffr`): the reading carries the
   response in force (``ffr_w``), a shift of the plan (> 0 lowers the import). The battery carries
   it on top of what it does for the plan, within the headroom its rating and SoC window leave
   and never raising the import past its limit; the shift is not ramp-limited by the grid's
   ramp rule (it has its own ramp) and is not a fallback.
6. *Pay-back* (bounded): what the grid drew beyond its plan since the last reading (an edge
   faster than the measurement) is integrated from the meter's power readings, each over its own
   measurement interval, and given back through the battery with time constant ``payback_s``,
   never more than ``payback_max_w``. The integral counts the grid against the plan, not
   against what was commanded, so a pay-back that reaches the grid empties it: a first-order
   loop, stable for any loop delay below ``pi/2 x payback_s`` (docs/control.md).

The reading's time is the meter's *measurement* time and the battery's power is taken at that
same instant (:class:`pswd_gateway.control.loop.GridLoop` aligns them): grid + battery is then
the site's load at one instant, whatever the battery is doing, so the battery setpoint does not
feed back on itself.

The reactive baseline is the same step with no announced jobs.

Units are SI: W, W/s, J, s. Battery power > 0 discharges into the site; grid power > 0 imports.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pswd_gateway.domain.units import from_mw, to_mw
from pswd_gateway.domain.workloads import PowerProfile

__all__ = [
    "Announced",
    "Fallback",
    "GridDecision",
    "GridReading",
    "GridSettings",
    "LimiterState",
    "announced_edges",
    "announced_jobs",
    "expected_announced_w",
    "feedforward_w",
    "grid_step",
    "planned_announced_w",
    "soc_bias_w",
    "soc_target",
]


@dataclass(frozen=True, slots=True)
class GridSettings:
    """Limits of the grid connection and of the battery, and how the controllers use them."""

    ramp_limit_w_per_s: float
    """The operator's limit on the rate of change of the grid import."""
    import_limit_w: float
    bess_rated_w: float
    bess_capacity_j: float
    """Nameplate energy; the SoC window below is a fraction of it."""
    soc_min: float = 0.1
    soc_max: float = 0.9
    soc_target: float = 0.5
    ramp_margin: float = 0.8
    """The limiter plans at this fraction of the limit: room for what measurement delay leaks."""
    band_low_hz: float = 0.1
    """Lowest frequency of the oscillation bands to attenuate (the training rhythm)."""
    soc_restore_s: float = 120.0
    """Time constant of the pull back to the target SoC (short enough that the battery's
    losses and unannounced dips do not walk the SoC away)."""
    soc_restore_max_fraction: float = 0.1
    """The pull never asks for more than this fraction of the inverter rating."""
    lookahead_s: float = 900.0
    """How far ahead an announced start or stop moves the SoC target."""
    payback_s: float = 0.5
    """Time constant of the pay-back of what the grid drew beyond its plan (0: none)."""
    payback_max_fraction: float = 0.1
    """The pay-back never asks for more than this fraction of the inverter rating."""
    max_gap_s: float = 1.0
    """Readings further apart than this restart the pay-back (nothing is known in between)."""
    import_hold_margin_w: float = 0.0
    """Where the import limit binds, the plan holds the grid this far under it."""

    @property
    def import_hold_w(self) -> float:
        """The highest grid plan: the import limit less the hold margin."""
        return self.import_limit_w - self.import_hold_margin_w

    @property
    def payback_max_w(self) -> float:
        return self.payback_max_fraction * self.bess_rated_w

    @property
    def planning_ramp_w_per_s(self) -> float:
        return self.ramp_limit_w_per_s * self.ramp_margin

    @property
    def filter_tau_s(self) -> float:
        """Each low-pass stage: cut-off at half the lowest band."""
        return 1.0 / (math.pi * self.band_low_hz)


@dataclass(frozen=True, slots=True)
class Announced:
    """An announced job on the control clock (seconds)."""

    start_s: float
    end_s: float
    level_w: float
    """Expected mean power while it runs (``PowerProfile.level_mw``: the peak less the
    oscillation depth for the share of each period spent communicating)."""
    ramp_w_per_s: float
    """The job's own ramp; its real edges may be far faster."""
    peak_w: float | None = None
    """Power of its first phase (a training job starts computing, at its peak); ``None``: the
    level. Only the start edge's feed-forward uses it."""
    period_s: float | None = None
    """Period of its training rhythm, if it announced one. The phase is not announced: the
    grid loop learns it from the load (:mod:`pswd_gateway.control.rhythm`)."""
    depth_w: float = 0.0
    """Peak-to-trough swing of that rhythm."""

    @classmethod
    def from_profile(cls, start_s: float, end_s: float, profile: PowerProfile) -> Announced:
        """A placed job's announced power profile (MW) on the control clock (W)."""
        level_mw = profile.level_mw()
        return cls(
            start_s,
            end_s,
            from_mw(level_mw),
            from_mw(profile.ramp_rate_mw_per_sec),
            peak_w=from_mw(profile.peak_power_mw),
            period_s=profile.oscillation_period_sec,
            depth_w=from_mw(profile.oscillation_depth_mw or 0.0),
        )

    @property
    def rise_s(self) -> float:
        return self.level_w / self.ramp_w_per_s if self.ramp_w_per_s > 0 else 0.0

    @property
    def start_edge_w(self) -> float:
        return self.level_w if self.peak_w is None else max(self.peak_w, self.level_w)

    @property
    def start_edge_s(self) -> float:
        """How long its start edge takes to reach :attr:`start_edge_w` at its own ramp."""
        return self.start_edge_w / self.ramp_w_per_s if self.ramp_w_per_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class GridReading:
    """One fresh reading of the grid connection and the battery."""

    t: float
    """When the meter measured ``grid_w`` (its source time, POSIX seconds)."""
    grid_w: float
    bess_w: float
    """The battery's power at ``t``, the same instant as ``grid_w``."""
    soc: float | None
    """``None`` when the battery's state of charge is not known (invalid quality)."""
    bess_available: bool = True
    acting_at: float | None = None
    """When a setpoint decided from this reading will act (arrival + write + the PCS's dead
    time and response): the battery is given now what the announced jobs will add by then."""
    rhythm_w: float = 0.0
    """What a job's learnt training rhythm will add by then (:meth:`Rhythm.ahead_w`)."""
    ffr_w: float = 0.0
    """The fast frequency response in force (:class:`~pswd_gateway.control.ffr.Ffr`): the grid
    import is to be lowered by this much (< 0: raised), on top of the plan."""

    @property
    def site_load_w(self) -> float:
        """What the site draws before the battery: grid + battery."""
        return self.grid_w + self.bess_w


@dataclass(frozen=True, slots=True)
class LimiterState:
    """What the limiter carries from one step to the next."""

    t: float
    grid_w: float
    """The grid draw the limiter holds (its plan, re-anchored when the battery was clamped)."""
    f1: float
    f2: float
    """The two low-pass stages over the unannounced part of the site load."""
    leak_j: float = 0.0
    """Energy the grid drew beyond its plan and not yet given back."""
    ffr_w: float = 0.0
    """The frequency response the battery carried at this step: the grid's plan was
    ``grid_w - ffr_w``."""
    bias_w: float = 0.0
    """The SoC pull of this step (:func:`soc_bias_w`); held while a frequency response is in
    force."""

    @classmethod
    def start(cls, reading: GridReading, unannounced_w: float | None = None) -> LimiterState:
        base = reading.site_load_w if unannounced_w is None else unannounced_w
        return cls(reading.t, reading.grid_w, base, base)


@dataclass(frozen=True, slots=True)
class Fallback:
    """The battery cannot cover the step: ask the workload to ramp instead."""

    reason: str
    shortfall_w: float
    """Power the battery could not give (> 0) or take (< 0)."""
    ramp_w_per_s: float
    """The ramp the workload should follow so that the grid stays within its limit."""


@dataclass(frozen=True, slots=True)
class GridDecision:
    t: float
    bess_setpoint_w: float
    grid_plan_w: float
    """Grid draw expected once the setpoint is applied."""
    site_load_w: float
    expected_announced_w: float
    planned_announced_w: float
    soc_bias_w: float
    soc_target: float
    payback_w: float
    """Battery power added to give back what the grid drew beyond its plan."""
    binding: str | None
    """The hard limit that decided the setpoint, if one did."""
    fallback: Fallback | None
    state: LimiterState
    ffr_w: float = 0.0
    """The fast frequency response the battery carries in this decision (the plan above is
    lowered by it); what was asked for, less what the battery's headroom could not give."""


MAX_LAG_S = 0.5
"""The longest loop delay the pay-back sets the frequency response's ramp back by."""


def _ramp(x: float) -> float:
    return min(max(x, 0.0), 1.0)


def expected_announced_w(t: float, jobs: Sequence[Announced]) -> float:
    """Load the announced jobs are expected to draw at ``t`` (their own ramps)."""
    total = 0.0
    for j in jobs:
        if t <= j.start_s or t >= j.end_s:
            continue
        rise = j.rise_s
        up = 1.0 if rise <= 0 else _ramp((t - j.start_s) / rise)
        down = 1.0 if rise <= 0 else _ramp((j.end_s - t) / rise)
        total += j.level_w * min(up, down)
    return total


def planned_announced_w(t: float, jobs: Sequence[Announced], ramp_w_per_s: float) -> float:
    """Grid draw planned for the announced jobs: ramps at ``ramp_w_per_s`` that end with each
    job's own rise (the grid is at the job's level when it starts, and flat while its rhythm
    begins) and are centred on its fall."""
    total = 0.0
    for j in jobs:
        span = j.level_w / ramp_w_per_s
        rise = j.rise_s
        up_end = j.start_s + rise
        down_mid = j.end_s - rise / 2.0
        up = _ramp((t - (up_end - span)) / span)
        down = _ramp(((down_mid + span / 2.0) - t) / span)
        total += j.level_w * min(up, down)
    return total


def soc_target(t: float, jobs: Sequence[Announced], s: GridSettings) -> float:
    """The SoC to hold now: the set target, moved so that the next announced start (or stop)
    finds the energy (or the room) its ramp needs."""
    rp = s.planning_ramp_w_per_s
    lo, hi = s.soc_min, s.soc_max
    for j in jobs:
        # Before a start the grid rises first, the whole ramp (level²/(2·rate) into the
        # battery): keep room. Before a stop the grid falls first, half a centred ramp
        # (level²/(8·rate) out of the battery): keep energy. Both plus what the filter lets
        # through if the level was misjudged by a quarter.
        misjudged = 0.25 * j.level_w * 2.0 * s.filter_tau_s
        room = (j.level_w**2 / (2.0 * rp) + misjudged) / s.bess_capacity_j
        energy = (j.level_w**2 / (8.0 * rp) + misjudged) / s.bess_capacity_j
        if 0.0 <= j.start_s - t <= s.lookahead_s:
            hi = min(hi, s.soc_max - room)
        if 0.0 <= j.end_s - t <= s.lookahead_s:
            lo = max(lo, s.soc_min + energy)
    target = min(max(s.soc_target, lo), hi) if lo <= hi else (lo + hi) / 2.0
    return min(max(target, s.soc_min), s.soc_max)


def soc_bias_w(soc: float | None, target: float, s: GridSettings) -> float:
    """Extra grid draw (> 0 charges the battery) that returns the SoC to ``target``."""
    if soc is None:
        return 0.0
    pull = (target - soc) * s.bess_capacity_j / s.soc_restore_s
    cap = s.soc_restore_max_fraction * s.bess_rated_w
    return min(max(pull, -cap), cap)


def _clamp_bess(wanted: float, reading: GridReading, s: GridSettings) -> float | None:
    """``wanted`` within the inverter rating and the SoC window; None if it is unavailable."""
    if not reading.bess_available or reading.soc is None:
        return None
    bess = min(max(wanted, -s.bess_rated_w), s.bess_rated_w)
    if bess > 0.0 and reading.soc <= s.soc_min:
        return 0.0
    if bess < 0.0 and reading.soc >= s.soc_max:
        return 0.0
    return bess


def _binding(wanted: float, reading: GridReading, s: GridSettings) -> str:
    soc = reading.soc if reading.soc is not None else 0.5
    if wanted > 0.0 and soc <= s.soc_min:
        return "soc_min"
    if wanted < 0.0 and soc >= s.soc_max:
        return "soc_max"
    return "bess_power"


def feedforward_w(t: float, jobs: Sequence[Announced]) -> float:
    """The announced jobs' load at ``t`` as the feed-forward sees it: :func:`expected_announced_w`
    with each start edge rising to the job's first phase (:attr:`Announced.start_edge_w`), not
    its mean. Only differences are used: what the jobs add between two instants."""
    total = expected_announced_w(t, jobs)
    for j in jobs:
        extra = j.start_edge_w - j.level_w
        if extra <= 0.0 or t <= j.start_s:
            continue
        edge_s = j.start_edge_s
        total += extra * (1.0 if edge_s <= 0 else _ramp((t - j.start_s) / edge_s))
    return total


def announced_edges(jobs: Sequence[Announced]) -> list[tuple[float, float]]:
    """(begin, end) of each announced job's edges as :func:`feedforward_w` shapes them: its
    start (to its first phase) and its fall."""
    edges = []
    for j in jobs:
        edges.append((j.start_s, j.start_s + j.start_edge_s))
        edges.append((j.end_s - j.rise_s, j.end_s))
    return edges


def _ahead_w(reading: GridReading, jobs: Sequence[Announced]) -> float:
    """Feed-forward: what the announced jobs will add between the measurement and the instant
    the setpoint acts goes on the battery now, so it moves with a 40 ms edge, not after it."""
    if reading.acting_at is None or reading.acting_at <= reading.t:
        return 0.0
    return feedforward_w(reading.acting_at, jobs) - feedforward_w(reading.t, jobs)


def _ffr_share(reading: GridReading, bess_w: float, grid_w: float, s: GridSettings) -> float:
    """The part of the frequency response the battery can carry on top of ``bess_w``: within
    its rating and SoC window, and never raising the plan ``grid_w`` past the import limit."""
    if reading.ffr_w == 0.0 or not reading.bess_available or reading.soc is None:
        return 0.0
    asked = max(reading.ffr_w, min(grid_w - s.import_limit_w, 0.0))
    moved = _clamp_bess(bess_w + asked, reading, s)
    return 0.0 if moved is None else moved - bess_w


def _soc_pull(state: LimiterState, reading: GridReading, target: float, s: GridSettings) -> float:
    """The SoC pull of this step; held while a frequency response is in force: the energy the
    response moves is the grid operator's, not a drift for the pull to take back via the grid."""
    if reading.ffr_w != 0.0 or state.ffr_w != 0.0:
        return state.bias_w
    return soc_bias_w(reading.soc, target, s)


def _followed(
    plan_w: float, ffr_w: float, state: LimiterState, reading: GridReading, dt: float
) -> float:
    """The plan as the battery can have followed the frequency response by the meter's instant:
    the response's ramp set back by the loop's delay (``acting_at - t``). The pay-back counts
    the grid against this: the lag behind the response's own ramp is not an over-draw, and
    paying it back would overshoot the curve."""
    if dt <= 0.0 or reading.acting_at is None:
        return plan_w
    lag = min(max(reading.acting_at - reading.t, 0.0), MAX_LAG_S)
    return plan_w + (ffr_w - state.ffr_w) / dt * lag


def _payback(
    leak_j: float, over_plan_w: float, dt: float, plan_w: float, s: GridSettings
) -> tuple[float, float]:
    """(energy still owed, pay-back power): the grid's draw beyond its plan at this reading,
    held over the reading's interval, added to what is owed and given back over
    ``payback_s`` within ``payback_max_w`` (never through the import limit less its hold
    margin)."""
    if s.payback_s <= 0.0 or not 0.0 < dt <= s.max_gap_s:
        return 0.0, 0.0
    cap = s.payback_max_w * s.payback_s
    leak = min(max(leak_j + over_plan_w * dt, -cap), cap)
    return leak, max(leak / s.payback_s, plan_w - s.import_hold_w)


def announced_jobs(
    runs: Iterable[tuple[float, float, PowerProfile]], now: float, lead_s: float
) -> list[Announced]:
    """The placed runs ``(start, end, profile)`` the grid loop may act on at ``now``: those
    starting within ``lead_s`` and not ended more than a minute ago."""
    horizon = now + lead_s
    return [
        Announced.from_profile(start, end, profile)
        for start, end, profile in runs
        if start <= horizon and end >= now - 60.0
    ]


def grid_step(
    state: LimiterState | None,
    reading: GridReading,
    jobs: Sequence[Announced],
    s: GridSettings,
) -> GridDecision:
    """One control step: the battery setpoint for ``reading`` (see the module docstring)."""
    t = reading.t
    load = reading.site_load_w
    rp = s.planning_ramp_w_per_s
    expected = expected_announced_w(t, jobs)
    planned = planned_announced_w(t, jobs, rp)
    ahead = _ahead_w(reading, jobs) + reading.rhythm_w
    if state is None or t <= state.t:
        state = LimiterState.start(reading, load - expected)
        dt = 0.0
    else:
        dt = t - state.t
    # Grid ramp limiter over what was not announced (two low-pass stages).
    alpha = 1.0 - math.exp(-dt / s.filter_tau_s) if dt > 0 else 0.0
    f1 = state.f1 + alpha * ((load - expected) - state.f1)
    f2 = state.f2 + alpha * (f1 - state.f2)
    target_soc = soc_target(t, jobs, s)
    bias = _soc_pull(state, reading, target_soc, s)
    target = f2 + planned + bias
    step = rp * dt
    grid = state.grid_w + min(max(target - state.grid_w, -step), step)
    # Arbiter: hard limits win.
    binding: str | None = None
    if grid > s.import_hold_w:
        grid, binding = s.import_hold_w, "import_limit"
    wanted = load + ahead - grid
    bess = _clamp_bess(wanted, reading, s)
    if bess is None:
        bess, binding = 0.0, "bess_unavailable"
    elif bess != wanted:
        binding = _binding(wanted, reading, s)
    fallback: Fallback | None = None
    if bess != wanted:
        grid = load - bess  # the grid takes what the battery cannot: the plan starts from there
        if grid > s.import_limit_w:
            fallback = Fallback(
                f"grid import limit: the site must shed {to_mw(grid - s.import_limit_w):.1f} MW",
                wanted - bess,
                rp,
            )
        elif dt > 0 and abs(grid - state.grid_w) > s.ramp_limit_w_per_s * dt:
            fallback = Fallback(
                f"{binding}: the battery cannot cover the step; workloads must ramp at "
                f"{to_mw(rp):.1f} MW/s or slower",
                wanted - bess,
                rp,
            )
    # The frequency response shifts the plan, on top of what the battery does for it: the
    # grid's ramp rule does not apply to it (it has its own ramp), nor does the fallback.
    ffr = _ffr_share(reading, bess, grid, s)
    clamped = bess != wanted
    bess, wanted, plan = bess + ffr, wanted + ffr, grid - ffr
    followed = _followed(plan, ffr, state, reading, dt)
    leak, payback = _payback(state.leak_j, reading.grid_w - followed, dt, plan, s)
    if clamped:
        leak = payback = 0.0  # the grid takes what the battery cannot, by design: nothing to repay
    elif payback:
        # Best effort, never at the cost of the plan: within the same hard limits.
        paid = _clamp_bess(wanted + payback, reading, s)
        bess = wanted if paid is None else paid
        payback = bess - wanted
    return GridDecision(
        t=t,
        bess_setpoint_w=bess,
        grid_plan_w=plan,
        site_load_w=load,
        expected_announced_w=expected,
        planned_announced_w=planned,
        soc_bias_w=bias,
        soc_target=target_soc,
        payback_w=payback,
        binding=binding,
        fallback=fallback,
        state=LimiterState(t, grid, f1, f2, leak, ffr, bias),
        ffr_w=ffr,
    )
