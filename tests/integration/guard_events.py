"""Control-guard events delivered as the control cycle delivers them, for the northbound tests.

The cycle's own trip logic is tested with the cycle; here only its side of the handshake is
played: set :class:`ControlStats` as the cycle does, then call the ``on_guard`` callback the
gateway gave the cycle (so the wiring in the daemon is exercised too).
"""

from __future__ import annotations

import time

from pswd_gateway.control.guard import GuardEvent, GuardReason
from pswd_gateway.daemon import Gateway

TRIP_DETAIL = "mean |grid - plan| 31.2 MW over 2.0 s exceeds the 20 MW band"
REARM_DETAIL = "no fault for 30.0 s: control resumed"


def trip(
    gw: Gateway, reason: GuardReason = GuardReason.GRID_OFF_PLAN, at: float | None = None
) -> GuardEvent:
    """The guard trips ``at`` (POSIX s, default now; to the millisecond, as MMS carries it)."""
    return _deliver(gw, GuardEvent(_ms(at), tripped=True, reason=reason, detail=TRIP_DETAIL))


def rearm(gw: Gateway, at: float | None = None) -> GuardEvent:
    """The guard re-arms ``at``: normal control resumes (the trip's reason is kept)."""
    return _deliver(gw, GuardEvent(_ms(at), tripped=False, reason=None, detail=REARM_DETAIL))


def _ms(at: float | None) -> float:
    return round(time.time() if at is None else at, 3)


def _deliver(gw: Gateway, event: GuardEvent) -> GuardEvent:
    control = gw.control
    assert control is not None
    assert control.on_guard is not None, "the gateway gives the control cycle no guard callback"
    control.stats.guard_active = event.tripped
    if event.reason is not None:
        control.stats.guard_trips_total += 1
        control.stats.guard_reason = event.reason.value
    control.on_guard(event)
    return event
