"""Alarms on ``PSWD``: AlarmConditionType events when a condition becomes active or clears.

The conditions are worked out from each published snapshot (:func:`conditions`, pure); the
control guard's trips and re-arms arrive from the control cycle (:meth:`Alarms.control_guard`)
and are raised on the publish task, one at a time, in the order they happened.
"""

from __future__ import annotations

import contextlib
from collections import deque
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

from asyncua import Node, Server, ua

from pswd_gateway.config import SiteConfig
from pswd_gateway.control.guard import GuardEvent
from pswd_gateway.domain.points import Quality, Sample
from pswd_gateway.domain.signals import BESS_SOC, SiteMap
from pswd_gateway.domain.units import to_mw
from pswd_gateway.logging import get_logger
from pswd_gateway.store import Snapshot

__all__ = [
    "CLEARED_SEVERITY",
    "GUARD_ALARM",
    "GUARD_SEVERITY",
    "LOW_SOC_MARGIN",
    "RAMP_RISK_SHARE",
    "Alarms",
    "Condition",
    "conditions",
]

log = get_logger("opcua")

LOW_SOC_MARGIN: Final = 0.05
"""``LowStateOfCharge`` is active while the battery's state of charge is below
``control.soc_min`` plus this margin (a ratio: 5 percentage points), so operators hear of it
before the controller stops discharging at ``soc_min``."""
RAMP_RISK_SHARE: Final = 0.9
"""``RampLimitRisk`` is active while the grid ramp is above this share of the ramp limit."""

RAMP_RISK_SEVERITY: Final = 700
LOW_SOC_SEVERITY: Final = 600
INVALID_DEVICE_SEVERITY: Final = 800
GUARD_ALARM: Final = "ControlGuard"
GUARD_SEVERITY: Final = 900
"""High: OPC UA's top severity band is 801-1000."""
CLEARED_SEVERITY: Final = 100
"""The severity of the event that clears a condition."""


class Condition(NamedTuple):
    """One alarm condition now: whether it is active, its severity and message while active."""

    active: bool
    severity: int
    message: str


def conditions(
    snap: Snapshot, site: SiteConfig, *, soc_min: float, ramp_w_per_s: float | None
) -> dict[str, Condition]:
    """Each snapshot condition by name: the grid ramp near its limit, a low state of charge,
    devices whose data are invalid. ``ramp_w_per_s`` is the control cycle's grid ramp (None
    without one)."""
    soc = snap.read(BESS_SOC, site)
    low_soc = soc is not None and soc.value < soc_min + LOW_SOC_MARGIN
    invalid = sorted({p.device for p in snap if p.quality is Quality.INVALID})
    limit = site.grid_ramp_limit_w_per_s
    ramp = ramp_w_per_s
    return {
        "RampLimitRisk": Condition(
            ramp is not None and abs(ramp) > RAMP_RISK_SHARE * limit,
            RAMP_RISK_SEVERITY,
            f"grid ramp {0 if ramp is None else to_mw(ramp):.1f} MW/s is near the "
            f"{to_mw(limit):g} MW/s limit",
        ),
        "LowStateOfCharge": Condition(
            low_soc,
            LOW_SOC_SEVERITY,
            f"battery state of charge {0 if soc is None else soc.value * 100:.1f} % is low",
        ),
        "InvalidDevice": Condition(
            bool(invalid),
            INVALID_DEVICE_SEVERITY,
            f"no valid data from {', '.join(invalid) or 'any device'}",
        ),
    }


class Alarms:
    """The alarm event generator on ``PSWD`` and which conditions are active."""

    def __init__(self, soc_min: float) -> None:
        self.soc_min = soc_min
        self.events_total = 0
        self._generator: Any = None
        self._active: dict[str, bool] = {}
        self._guard_events: deque[GuardEvent] = deque(maxlen=64)
        self._guard: GuardEvent | None = None

    async def add_to(self, server: Server, root: Node) -> None:
        """Make ``root`` a source of AlarmConditionType events."""
        self._generator = await server.get_event_generator(
            ua.ObjectIds.AlarmConditionType, root.nodeid
        )

    def control_guard(self, event: GuardEvent) -> None:
        """The control guard tripped or re-armed: ``Control.GuardActive`` and the
        ``ControlGuard`` alarm follow at the next publish."""
        self._guard = event
        self._guard_events.append(event)

    def guard_active(self, snap: Snapshot, _site: SiteMap) -> Sample:
        """``Control.GuardActive``: 1 while the guard holds the battery, at its last change."""
        guard = self._guard
        if guard is None:
            return Sample(0.0, Quality.GOOD, snap.taken_at)
        return Sample(1.0 if guard.tripped else 0.0, Quality.GOOD, guard.at)

    async def check(self, snap: Snapshot, site: SiteConfig, ramp_w_per_s: float | None) -> None:
        """Raise an event for each condition that became active or cleared since the last
        snapshot, then for each guard trip or re-arm since."""
        if self._generator is None:
            return
        now = conditions(snap, site, soc_min=self.soc_min, ramp_w_per_s=ramp_w_per_s)
        for name, (active, severity, message) in now.items():
            if self._active.get(name, False) == active:
                continue
            await self._trigger(name, active, severity, message if active else None)
        while self._guard_events:
            guard = self._guard_events.popleft()
            await self._trigger(
                GUARD_ALARM,
                guard.tripped,
                GUARD_SEVERITY,
                guard.detail if guard.tripped else f"{GUARD_ALARM} cleared: {guard.detail}",
                at=datetime.fromtimestamp(guard.at, UTC),
            )

    async def _trigger(
        self,
        name: str,
        active: bool,
        severity: int,
        message: str | None,
        at: datetime | None = None,
    ) -> None:
        """One AlarmConditionType event: ``name`` became active (``severity``) or cleared."""
        self._active[name] = active
        ev = self._generator.event
        ev.ConditionName = name
        ev.Severity = severity if active else CLEARED_SEVERITY
        ev.SourceName = "PSWD"
        ev.Retain = active
        with contextlib.suppress(AttributeError):
            ev.ActiveState = ua.LocalizedText("Active" if active else "Inactive")
        if "ActiveState/Id" in ev.data_types:  # the Boolean a standard alarm client reads
            setattr(ev, "ActiveState/Id", active)
        text = message or (name if active else f"{name} cleared")
        await self._generator.trigger(time_attr=at, message=text)
        self.events_total += 1
        log.info("opcua_alarm", condition=name, active=active, message=text)
