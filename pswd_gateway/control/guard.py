"""The control guard: what the grid loop must never do, detected, and the safe mode it forces.

The guard watches every decision of the grid loop at the meter's measurement times. It trips
when the loop

- *rings*: the battery setpoint reverses sign more than ``max_flips_per_s`` times a second over
  ``window_s``, or swings from one end of the inverter's rating to the other within ``window_s``
  (a loop that has wound up: a working loop never needs both rails);
- *makes the grid rougher than the load behind it*: over ``rough_window_s`` the spread (standard
  deviation) of the grid about its plan exceeds half the range of the site load (grid +
  battery) about the plan, plus ``rough_margin_w``. Without a battery the grid's spread could
  not exceed that (a signal's spread is at most half its range); a battery that works keeps it
  well inside; a loop that rings, at any frequency, pushes it out. The load's *range*, and
  over twice the window: a step early in (or just before) the window has little spread there
  while the lagging battery's transient still stands in it;
- *leaves its plan*: the mean of ``grid - plan`` over ``off_plan_window_s`` is further from zero
  than ``off_plan_band_w`` (the battery does not deliver what it is told, or with the wrong
  sign). Signed, because each fast edge leaks to the grid one way on the rise and the other on
  the fall until the battery follows; a whole step through a slow battery (a 180 MW start
  through a 700 ms PCS leaks some 85 MJ) is a small share of a 10 s window;
- *pushes the grid over its import limit*: the 1 s mean of the grid is above the limit while the
  battery's 1 s mean charges, judged on 1 s means as a contracted import capacity is (a 40 ms
  edge that meets a battery charging through a job's low phase is carried by the grid for the
  tens of milliseconds the loop needs: physics, not a fault). A limit that is lowered starts a
  new window: the readings from before it came into force (a grid signal, an operator's
  limit) are not the battery's doing. It trips when the mean is over by more than
  ``import_margin_w`` (2 MW) at every check for ``import_hold_s`` (3 s): a battery holding the
  grid flat *at* the limit through a training rhythm charges in the low phases, and each rise
  leaks to the grid for the loop's delay, which puts the 1 s means that hold a rise but not the
  next fall over the limit for up to a second each period; a loop that keeps charging over
  the limit keeps every mean over.

Once tripped the loop is in *safe mode*: the battery holds its last good setpoint (the mean of the
window before the trip), then ramps to zero at the planning ramp rate, and the grid loop's own
decisions are ignored. Every trip and every re-arm is an event (:class:`GuardEvent`) that the
gateway turns into a metric, an OPC UA alarm, an IEC 61850 indication, an event on the workload
stream and an audit record. After ``rearm_s`` the guard re-arms and the loop starts afresh; each
trip in a row doubles the wait (at most ``rearm_max_s``).

Pure: no clock reads, no I/O; time is passed in.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from pswd_gateway.domain.units import to_mw

__all__ = ["IMPORT_WINDOW_S", "Guard", "GuardEvent", "GuardReason", "GuardSettings"]

IMPORT_WINDOW_S = 1.0
"""The import limit is judged on means over this long."""
_Row = TypeVar("_Row", bound=tuple[float, ...])
WINDOW_CHECK_EVERY_S = 0.1
RAIL_FRACTION = 0.95
"""A setpoint this close to the rating counts as at the rail."""


class GuardReason(enum.StrEnum):
    """Why the guard tripped."""

    SETPOINT_OSCILLATION = "setpoint_oscillation"
    GRID_ROUGHER_THAN_LOAD = "grid_rougher_than_load"
    GRID_OFF_PLAN = "grid_off_plan"
    IMPORT_LIMIT_BY_BATTERY = "import_limit_by_battery"


@dataclass(frozen=True, slots=True)
class GuardEvent:
    """A trip (safe mode entered) or a re-arm (normal control resumed)."""

    at: float
    """POSIX seconds."""
    tripped: bool
    """True: safe mode entered; False: the guard re-armed and the loop controls again."""
    reason: GuardReason | None
    """Why it tripped (``None`` on a re-arm)."""
    detail: str
    """What was seen, with the figures (for people: logs, alarms, the audit record)."""


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """What the guard tolerates (``[control.guard]``, SI units)."""

    enabled: bool = True
    window_s: float = 2.0
    """The span the sign reversals are counted over."""
    max_flips_per_s: float = 6.0
    """Setpoint sign reversals a second; the training rhythm (2 Hz at most) makes 4."""
    flip_deadband_w: float = 5e6
    """A setpoint within this of zero has no sign (noise around idle is not ringing)."""
    off_plan_band_w: float = 30e6
    """Largest mean of (grid - plan) over ``off_plan_window_s``, either way."""
    import_margin_w: float = 2e6
    """The grid's 1 s mean may exceed the import limit by this while the battery charges: a
    battery that holds the grid flat at the limit through a training rhythm charges in the low
    phases, and the meter's noise and the loop's precision put the mean a little either side."""
    import_hold_s: float = 3.0
    """...at every check for this long before the guard trips (longer than the second a rise's
    leak stays in the 1 s means)."""
    off_plan_window_s: float = 10.0
    rough_window_s: float = 4.0
    """Long enough to hold a whole training rhythm (periods of 1 to 3 s)."""
    rough_margin_w: float = 5e6
    """Measurement noise and the leak of fast edges may make the grid this much rougher."""
    rearm_s: float = 60.0
    """Safe mode lasts this long before the guard re-arms; doubled by each trip in a row."""
    rearm_max_s: float = 900.0
    hold_s: float = 2.0
    """In safe mode the battery holds its last good setpoint this long, then ramps to zero."""


@dataclass
class Guard:
    """The guard over one grid loop; see the module docstring."""

    settings: GuardSettings = field(default_factory=GuardSettings)
    tripped_at: float | None = None
    reason: GuardReason | None = None
    trips_total: int = 0
    _held_w: float = 0.0
    _streak: int = 0
    _rearmed_at: float | None = None
    _flips: deque[float] = field(default_factory=deque)
    _sign: int = 0
    _off: deque[tuple[float, float]] = field(default_factory=deque)
    _setpoints: deque[tuple[float, float]] = field(default_factory=deque)
    _rough: deque[tuple[float, float, float]] = field(default_factory=deque)
    """(t, grid - plan, grid + battery - plan) over twice ``rough_window_s``."""
    _flows: deque[tuple[float, float, float]] = field(default_factory=deque)
    """(t, grid, battery) over the last second under the limit in force, for the import-limit
    test."""
    _limit_w: float = math.inf
    """The import limit of the last observation."""
    _over_since: float | None = None
    """Since when every 1 s mean has been over the limit while the battery charged."""
    _windows_checked: float = -math.inf

    @property
    def tripped(self) -> bool:
        return self.tripped_at is not None

    @property
    def wait_s(self) -> float:
        """How long the current safe mode lasts before the guard re-arms."""
        s = self.settings
        return min(s.rearm_s * 2.0 ** max(self._streak - 1, 0), s.rearm_max_s)

    def observe(
        self,
        t: float,
        *,
        setpoint_w: float,
        grid_w: float,
        plan_w: float,
        import_limit_w: float,
        bess_w: float,
        rated_w: float,
    ) -> GuardEvent | None:
        """One decision of the loop at measurement time ``t``; a trip when it must not stand."""
        s = self.settings
        if not s.enabled or self.tripped:
            return None
        if import_limit_w < self._limit_w:  # a stricter limit: judged from now on
            self._flows.clear()
            self._over_since = None
        self._limit_w = import_limit_w
        self._record(t, setpoint_w, grid_w - plan_w, grid_w + bess_w - plan_w, grid_w, bess_w)
        checks: tuple[Callable[[], tuple[GuardReason, str] | None], ...] = (
            lambda: self._rails(rated_w),
            self._rings,
        )
        if t - self._windows_checked >= WINDOW_CHECK_EVERY_S:
            # the window tests look at seconds of readings: ten times a second is enough
            self._windows_checked = t
            checks += (
                self._rougher,
                self._off_plan,
                lambda: self._over_import_limit(t, import_limit_w),
            )
        for check in checks:
            found = check()
            if found is not None:
                return self._trip(t, *found)
        return None

    def _record(
        self, t: float, setpoint: float, off: float, load_off: float, grid: float, bess: float
    ) -> None:
        s = self.settings
        _push(self._setpoints, (t, setpoint), t - s.window_s)
        sign = 0 if abs(setpoint) < s.flip_deadband_w else (1 if setpoint > 0 else -1)
        if sign and self._sign and sign != self._sign:
            self._flips.append(t)
        if sign:
            self._sign = sign
        while self._flips and self._flips[0] < t - s.window_s:
            self._flips.popleft()
        _push(self._off, (t, off), t - s.off_plan_window_s)
        _push(self._rough, (t, off, load_off), t - 2.0 * s.rough_window_s)
        _push(self._flows, (t, grid, bess), t - IMPORT_WINDOW_S)

    def _rails(self, rated_w: float) -> tuple[GuardReason, str] | None:
        rails = RAIL_FRACTION * rated_w
        setpoint = self._setpoints[-1][1]
        if abs(setpoint) < rails:
            return None  # only a setpoint at a rail can complete a swing from rail to rail
        highest = max(w for _, w in self._setpoints)
        lowest = min(w for _, w in self._setpoints)
        if highest < rails or lowest > -rails:
            return None
        return GuardReason.SETPOINT_OSCILLATION, (
            f"battery setpoint went from {to_mw(lowest):.0f} to {to_mw(highest):+.0f} MW "
            f"within {self.settings.window_s:g} s (rating {to_mw(rated_w):.0f} MW)"
        )

    def _rings(self) -> tuple[GuardReason, str] | None:
        s = self.settings
        if len(self._flips) / s.window_s <= s.max_flips_per_s:
            return None
        return GuardReason.SETPOINT_OSCILLATION, (
            f"battery setpoint reversed {len(self._flips)} times in {s.window_s:g} s "
            f"(at most {s.max_flips_per_s:g}/s)"
        )

    def _rougher(self) -> tuple[GuardReason, str] | None:
        s = self.settings
        rough = self._roughness()
        if rough is None or rough[0] <= rough[1] + s.rough_margin_w:
            return None
        return GuardReason.GRID_ROUGHER_THAN_LOAD, (
            f"grid spread {to_mw(rough[0]):.1f} MW about its plan over {s.rough_window_s:g} s, "
            f"more than the load behind it could make ({to_mw(rough[1]):.1f} MW, half its "
            f"range): the battery adds swings"
        )

    def _off_plan(self) -> tuple[GuardReason, str] | None:
        s = self.settings
        off = self._off
        if off[-1][0] - off[0][0] < 0.9 * s.off_plan_window_s:
            return None
        mean = sum(d for _, d in off) / len(off)
        if abs(mean) <= s.off_plan_band_w:
            return None
        return GuardReason.GRID_OFF_PLAN, (
            f"grid {to_mw(mean):+.1f} MW from its plan on average over {s.off_plan_window_s:g} s "
            f"(band {to_mw(s.off_plan_band_w):.1f} MW)"
        )

    def _over_import_limit(self, t: float, import_limit_w: float) -> tuple[GuardReason, str] | None:
        flows = self._flows
        if flows[-1][0] - flows[0][0] < 0.9 * IMPORT_WINDOW_S:
            return None
        grid = sum(g for _, g, _ in flows) / len(flows)
        bess = sum(b for _, _, b in flows) / len(flows)
        if grid <= import_limit_w + self.settings.import_margin_w or bess >= 0.0:
            self._over_since = None
            return None
        if self._over_since is None:
            self._over_since = t
        if t - self._over_since < self.settings.import_hold_s:
            return None
        return GuardReason.IMPORT_LIMIT_BY_BATTERY, (
            f"grid {to_mw(grid):.1f} MW over the {to_mw(import_limit_w):.1f} MW import limit "
            f"(1 s mean) while the battery charged at {-to_mw(bess):.1f} MW, every second for "
            f"{self.settings.import_hold_s:g} s"
        )

    def _roughness(self) -> tuple[float, float] | None:
        """(spread of the grid, half the range of the load) over a full window, W."""
        rough = self._rough
        window = self.settings.rough_window_s
        if len(rough) < 3 or rough[-1][0] - rough[0][0] < 0.9 * window:
            return None
        since = rough[-1][0] - window
        load = [w for _, _, w in rough]
        return _spread([g for t, g, _ in rough if t >= since]), (max(load) - min(load)) / 2.0

    def _trip(self, t: float, reason: GuardReason, detail: str) -> GuardEvent:
        s = self.settings
        if self._rearmed_at is None or t - self._rearmed_at > s.rearm_max_s:
            self._streak = 0
        self._streak += 1
        self.trips_total += 1
        self.tripped_at, self.reason = t, reason
        # The last good plan: what the battery delivered on average over the window (the centre
        # of a ringing setpoint), held, then ramped to zero.
        values = [w for _, w in self._setpoints]
        self._held_w = sum(values) / len(values) if values else 0.0
        return GuardEvent(t, tripped=True, reason=reason, detail=detail)

    def safe_setpoint(self, t: float, ramp_w_per_s: float) -> float:
        """The battery setpoint in safe mode at ``t``: held, then ramped to zero."""
        if self.tripped_at is None:
            raise RuntimeError("safe_setpoint() outside safe mode")
        ramped = max(0.0, t - self.tripped_at - self.settings.hold_s) * ramp_w_per_s
        return math.copysign(max(abs(self._held_w) - ramped, 0.0), self._held_w)

    def rearm(self, t: float) -> GuardEvent | None:
        """Leave safe mode once it has lasted :attr:`wait_s` (the loop starts afresh)."""
        if self.tripped_at is None or t - self.tripped_at < self.wait_s:
            return None
        waited = t - self.tripped_at
        self.tripped_at = None
        self._rearmed_at = t
        self._flips.clear()
        self._off.clear()
        self._setpoints.clear()
        self._sign = 0
        self._flows.clear()
        self._rough.clear()
        return GuardEvent(
            t,
            tripped=False,
            reason=None,
            detail=f"re-armed after {waited:.0f} s in safe mode ({self.trips_total} trips)",
        )


def _spread(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _push(window: deque[_Row], item: _Row, horizon: float) -> None:
    window.append(item)
    while window and window[0][0] < horizon:
        window.popleft()
