"""What a VEN may see and do of the site, whichever OpenADR version it speaks.

A VEN turns a VTN's event into a grid signal (:meth:`VenSite.submit`, journalled and audited
before it is acknowledged to the VTN) and reports back what the site measures and plans. It
never writes a device or a setting itself: the grid-signal service puts the signal in force.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from pswd_gateway.config import HeatConfig
from pswd_gateway.domain.grid_signals import GridSignal, SignalRequest, SignalSource
from pswd_gateway.domain.identity import Identity
from pswd_gateway.grid_signals import GridSignalService
from pswd_gateway.scheduling.heat import HeatOffer, offer_from_plan, requested_of
from pswd_gateway.scheduling.model import SiteForecast

__all__ = ["VTN_ROLE", "VenSite", "vtn_identity"]

VTN_ROLE = "operator"
"""A configured VTN operates the site's import (through grid signals only)."""


def vtn_identity(name: str) -> Identity:
    """The caller a VTN's events are accepted and audited as: ``vtn:<name>``."""
    return Identity(name=f"vtn:{name}", role=VTN_ROLE)


@dataclass(frozen=True)
class VenSite:
    """The site as a VEN sees it."""

    signals: GridSignalService
    measured_import_mw: Callable[[], float | None]
    """The grid meter's active power now (MW, import positive); None without a fresh reading."""
    forecast: Callable[[], SiteForecast]
    """The site's plan: planned import per slot (48 h ahead at the scheduler's slot length)."""
    battery_power_mw: float = 0.0
    """The battery's rated discharge power (MW; 0 without a battery): with the plan, what the
    site can take off its import when a VTN asks (a VEN's opt-in policy)."""
    heat_offer: Callable[[], HeatOffer] | None = None
    """The municipal heat offer now (docs/grid.md, "Municipal heat"): 48 h of 5-minute slots
    from the plan, at the supply temperature of the heat requests open over each slot. None:
    no heat plant, and no heat report is offered."""

    @staticmethod
    def heat_offer_from(
        signals: GridSignalService,
        forecast: Callable[[], SiteForecast],
        heat: Callable[[], HeatConfig],
    ) -> Callable[[], HeatOffer]:
        """The offer as ``GET /v1/heat/offer`` serves it: the plan now, ``[heat]`` now (a
        reload is followed), and the heat requests open at the grid-signal service (their
        slots at the requests' supply temperatures)."""

        def offer() -> HeatOffer:
            requests = requested_of(signals.open_signals())
            return offer_from_plan(signals.clock(), forecast(), heat(), requests=requests)

        return offer

    async def submit(
        self, request: SignalRequest, source: SignalSource, who: Identity, *, key: str
    ) -> GridSignal:
        """The event as a grid signal; ``key`` (``openadr2b:<event id>``) makes a modified
        event replace its earlier version."""
        return await self.signals.submit(request, source, who, key=key)

    async def withdraw(self, key: str, who: Identity) -> list[str]:
        """A cancelled event: its open signals withdrawn; their ids."""
        gone: list[str] = []
        for signal in self.signals.open_signals():
            if signal.key == key:
                await self.signals.withdraw(signal.id, who)
                gone.append(signal.id)
        return gone

    def planned_import(self) -> Sequence[tuple[datetime, float]]:
        """(slot start, planned import MW) of the site's plan, earliest first."""
        return [(s.start, s.grid_import_mw) for s in self.forecast().slots]
