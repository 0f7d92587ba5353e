"""The municipal heat offer on ``PSWD.HeatOffer``: the slot now running and the 48 h profile.

Variables (read-only, SI as every variable of the model): ``Heat`` (W) and
``SupplyTemperature`` (°C) of the offer's first slot, ``HeatProfile`` (Double[576], W),
``RequestedHeatProfile`` (Double[576], W: what the network's heat request over each slot asks,
0 without one), ``SupplyTemperatureProfile`` (Double[576], °C: each slot's supply temperature,
a request's inside its window) and ``SlotStarts`` (DateTime[576]). They follow the plan and the
heat requests: worked out again when the placed workloads or the open heat requests change,
when a new 5-minute slot begins, and at least every :data:`REFRESH_S`. The offer itself is
:func:`~pswd_gateway.scheduling.heat.offer_from_plan`'s with the open heat requests, as
``GET /v1/heat/offer`` serves it at ``heat.supply_temp_c``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from asyncua import Node, Server, ua

from pswd_gateway.config import HeatConfig
from pswd_gateway.domain.grid_signals import MAX_MW
from pswd_gateway.domain.units import SiUnit, from_mw
from pswd_gateway.grid_signals import GridSignalService
from pswd_gateway.northbound.opcua.model import engineering_units
from pswd_gateway.scheduling.heat import (
    OFFER_SLOT_S,
    OFFER_SLOTS,
    SUPPLY_RANGE_C,
    Requested,
    offer_from_plan,
    requested_of,
)
from pswd_gateway.scheduling.service import WorkloadService

__all__ = ["OBJECT", "REFRESH_S", "HeatOfferObject"]

OBJECT: Final = "PSWD.HeatOffer"
"""The node id of the object that holds the offer's variables."""
REFRESH_S: Final = 60.0
"""The offer is worked out again at least this often."""


class HeatOfferObject:
    """``PSWD.HeatOffer`` and its variables, kept in step with the workload service's plan and
    the grid-signal service's open heat requests."""

    def __init__(
        self,
        workloads: WorkloadService | None,
        heat: HeatConfig,
        signals: GridSignalService | None = None,
    ) -> None:
        self.workloads = workloads
        self.heat = heat
        self.signals = signals
        self.updates_total = 0
        self._idx = 0
        self._key: tuple[object, ...] | None = None
        self._at = 0.0

    def _node_id(self, name: str) -> ua.NodeId:
        return ua.NodeId(f"{OBJECT}.{name}", self._idx)

    async def add_to(self, server: Server, root: Node, idx: int) -> None:
        """Add ``HeatOffer`` under ``root`` (``PSWD``), its values BadWaitingForInitialData."""
        self._idx = idx
        obj = await root.add_object(ua.NodeId(OBJECT, idx), ua.QualifiedName("HeatOffer", idx))
        capacity_w = from_mw(self.heat.capacity_mw)
        doubles = (
            ("Heat", SiUnit.WATT, (0.0, capacity_w), False),
            ("SupplyTemperature", SiUnit.CELSIUS, SUPPLY_RANGE_C, False),
            ("HeatProfile", SiUnit.WATT, (0.0, capacity_w), True),
            # a request may ask more than the plant can make: its range is a signal's
            ("RequestedHeatProfile", SiUnit.WATT, (0.0, from_mw(MAX_MW)), True),
            ("SupplyTemperatureProfile", SiUnit.CELSIUS, SUPPLY_RANGE_C, True),
        )
        for name, unit, (low, high), array in doubles:
            node = await obj.add_variable(
                self._node_id(name),
                ua.QualifiedName(name, idx),
                ua.Variant([] if array else 0.0, ua.VariantType.Double),
                datatype=ua.NodeId(ua.ObjectIds.Double),
            )
            if array:
                await _one_dimension(node)
            await node.add_property(
                self._node_id(f"{name}.EngineeringUnits"),
                ua.QualifiedName("EngineeringUnits", 0),
                ua.Variant(engineering_units(unit), ua.VariantType.ExtensionObject),
            )
            await node.add_property(
                self._node_id(f"{name}.EURange"),
                ua.QualifiedName("EURange", 0),
                ua.Variant(ua.Range(low, high), ua.VariantType.ExtensionObject),
            )
        starts = await obj.add_variable(
            self._node_id("SlotStarts"),
            ua.QualifiedName("SlotStarts", idx),
            ua.Variant([], ua.VariantType.DateTime),
            datatype=ua.NodeId(ua.ObjectIds.DateTime),
        )
        await _one_dimension(starts)
        for name in (*(d[0] for d in doubles), "SlotStarts"):
            await server.write_attribute_value(
                self._node_id(name),
                ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData)),
            )

    async def sync(self, server: Server, now: datetime) -> int:
        """Write the offer again when the plan, the open heat requests or the slot changed, or
        :data:`REFRESH_S` passed; returns how many variables were written."""
        if self.workloads is None:
            return 0
        t = now.timestamp()
        requests = self._requests()
        key = (
            int(t // OFFER_SLOT_S),
            frozenset((p.id, p.start) for p in self.workloads.placed()),
            requests,
        )
        if key == self._key and t - self._at < REFRESH_S:
            return 0
        offer = offer_from_plan(now, self.workloads.site_forecast(), self.heat, requests=requests)
        self._key, self._at = key, t
        first = offer.slots[0]
        values = {
            "Heat": ua.Variant(from_mw(first.heat_mw), ua.VariantType.Double),
            "SupplyTemperature": ua.Variant(first.supply_c, ua.VariantType.Double),
            "HeatProfile": ua.Variant(
                [from_mw(s.heat_mw) for s in offer.slots], ua.VariantType.Double
            ),
            "RequestedHeatProfile": ua.Variant(
                [from_mw(s.requested_mw) for s in offer.slots], ua.VariantType.Double
            ),
            "SupplyTemperatureProfile": ua.Variant(
                [s.supply_c for s in offer.slots], ua.VariantType.Double
            ),
            "SlotStarts": ua.Variant([s.start for s in offer.slots], ua.VariantType.DateTime),
        }
        for name, value in values.items():
            await server.write_attribute_value(
                self._node_id(name),
                ua.DataValue(value, SourceTimestamp=now, ServerTimestamp=now),
            )
        self.updates_total += 1
        return len(values)

    def _requests(self) -> tuple[Requested, ...]:
        """The open heat requests, oldest reception first (the last wins where windows overlap,
        as over HTTP)."""
        return () if self.signals is None else requested_of(self.signals.open_signals())


async def _one_dimension(node: Node) -> None:
    """A one-dimensional array of :data:`OFFER_SLOTS` values."""
    await node.write_value_rank(ua.ValueRank.OneDimension)
    await node.write_array_dimensions([OFFER_SLOTS])
