"""Fast frequency response: a droop on the grid's measured frequency, without I/O.

The grid operator buys a fast, proportional answer to the grid frequency: below nominal the site
draws less, above it more. Here that answer is a **shift of the grid loop's target** (ΔP > 0
lowers the import: the battery discharges more; ΔP < 0 raises it: the battery charges), so the
grid loop carries it instead of fighting it (:func:`pswd_gateway.control.grid.grid_step`).

The curve, with ``f0`` the nominal frequency and ``db`` the deadband::

    dP(f) = 0                                             |f - f0| <= db
    dP(f) = -(f - f0 -+ db) / (droop * f0) * P_ref        otherwise (- db above f0, + db below)
    dP    = clamp(dP, -max, +max)

``droop`` is the frequency change, as a fraction of ``f0``, that moves the response by ``P_ref``.
The response in force follows that target at no more than ``ramp_w_per_s``; a frequency that is
implausible, missing or older than ``max_age_s`` has a target of 0 (ramped, never a jump), as has
a response that is not enabled.

Pure: the times are passed in (the meter's measurement times, POSIX seconds); no clock, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Ffr", "FfrSettings", "droop_w"]

HZ_EPS = 1e-9
"""Frequencies this close are one (``f - f0`` in floats errs by ~1e-14 Hz; meters resolve mHz)."""
W_EPS = 1.0
"""A response within this of its target is at it (ramp steps in floats leave ~1e-6 W)."""


@dataclass(frozen=True, slots=True)
class FfrSettings:
    """The operator's response curve, in SI units."""

    enabled: bool = False
    nominal_hz: float = 50.0
    deadband_hz: float = 0.015
    """No response while the frequency is this close to nominal (either side)."""
    droop_pct: float = 1.0
    """The frequency change beyond the deadband, in % of nominal, that moves the response by
    ``p_ref_w``."""
    p_ref_w: float = 0.0
    """The power the droop is a fraction of (typically the contracted capacity)."""
    max_w: float = 0.0
    """The response never exceeds this, either way."""
    ramp_w_per_s: float = math.inf
    """The response in force changes by no more than this."""
    max_age_s: float = 0.5
    """A frequency measured longer ago than this (before the grid meter's power reading that
    steps the loop) is not answered: the response ramps to zero."""


def droop_w(frequency_hz: float, s: FfrSettings) -> float:
    """The response the curve asks for at ``frequency_hz`` (> 0: lower the import), not ramped;
    0 when not enabled."""
    if not s.enabled or s.p_ref_w <= 0.0 or s.max_w <= 0.0:
        return 0.0
    deviation = frequency_hz - s.nominal_hz
    if abs(deviation) <= s.deadband_hz + HZ_EPS:
        return 0.0
    beyond = deviation - math.copysign(s.deadband_hz, deviation)
    wanted = -beyond / (s.droop_pct / 100.0 * s.nominal_hz) * s.p_ref_w
    return min(max(wanted, -s.max_w), s.max_w)


@dataclass
class Ffr:
    """The response in force, stepped once per grid-meter measurement."""

    settings: FfrSettings = field(default_factory=FfrSettings)
    response_w: float = field(default=0.0, init=False)
    """The ramped response (> 0: the import is lowered by this much)."""
    target_w: float = field(default=0.0, init=False)
    """What the curve asked for at the last step."""
    t: float | None = field(default=None, init=False)
    """The instant of the last step."""

    def shape(self, settings: FfrSettings) -> None:
        """Enable, disable or reshape the response (the operator's signal, or ``[control.ffr]``).
        The response in force moves to the new curve at the new ramp: no jump."""
        self.settings = settings

    def reset(self) -> None:
        """The grid loop starts afresh (after a silent meter, or safe mode): nothing in force."""
        self.response_w = self.target_w = 0.0
        self.t = None

    def step(self, t: float, frequency_hz: float | None, measured_at: float | None) -> float:
        """The response in force at ``t`` given the frequency measured at ``measured_at``
        (``None``: none usable). A step at or before the last one does not move it."""
        s = self.settings
        fresh = (
            frequency_hz is not None
            and measured_at is not None
            and math.isfinite(frequency_hz)
            and t - measured_at <= s.max_age_s
        )
        self.target_w = droop_w(frequency_hz, s) if fresh and frequency_hz is not None else 0.0
        dt = 0.0 if self.t is None or t <= self.t else t - self.t
        if self.t is None or t > self.t:
            self.t = t
        limit = s.ramp_w_per_s * dt if dt > 0.0 else 0.0
        gap = self.target_w - self.response_w
        if abs(gap) <= limit + W_EPS:
            self.response_w = self.target_w  # exactly: a response ramped out is 0, not 1e-7
        else:
            self.response_w += math.copysign(limit, gap)
        return self.response_w

    @property
    def active(self) -> bool:
        """A response is asked for or still in force."""
        return self.target_w != 0.0 or self.response_w != 0.0
