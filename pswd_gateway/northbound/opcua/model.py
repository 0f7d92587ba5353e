"""The address-space model: which site signal each variable under ``Objects/PSWD`` serves.

Each row of :data:`MODEL` names a signal of the catalogue (:mod:`pswd_gateway.domain.signals`)
and the browse path it is served at; the node id is ``PSWD.<obj>.<name>``. The variable's
``EngineeringUnits`` come from the signal's unit through :data:`UNECE_CODES`, its ``EURange``
from the signal's range, and its value from :meth:`Snapshot.read <pswd_gateway.store.Snapshot.read>`
on the site. ``docs/opcua.md`` lists the variables with their node ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from asyncua import Node, Server, ua

from pswd_gateway.config import DemandResponseWindow
from pswd_gateway.domain.points import Quality, Sample
from pswd_gateway.domain.signals import (
    BESS_POWER,
    BESS_SOC,
    CHW_SUPPLY_SETPOINT,
    CHW_SUPPLY_TEMP,
    GRID_FREQUENCY,
    GRID_IMPORT_LIMIT,
    GRID_POWER,
    GRID_RAMP_LIMIT,
    HEAT_EXPORT_POWER,
    HEAT_SUPPLY_TEMP,
    IMPORT_LIMIT_IN_FORCE,
    IT_POWER,
    SIGNALS,
    Signal,
    SiteMap,
)
from pswd_gateway.domain.units import SiUnit, from_mw
from pswd_gateway.store import Snapshot

__all__ = [
    "GUARD_ACTIVE",
    "MODEL",
    "SIGNALS_OBJECT",
    "STATUS",
    "UNECE",
    "UNECE_CODES",
    "GatewayValue",
    "Reader",
    "Variable",
    "add_variables",
    "catalogue_rest",
    "engineering_units",
    "limit_in_force",
    "model",
]

UNECE: Final = "http://www.opcfoundation.org/UA/units/un/cefact"
"""The namespace of UNECE Recommendation 20 unit ids (OPC UA Part 8, EUInformation)."""

UNECE_CODES: Final[dict[SiUnit, tuple[str, str]]] = {
    SiUnit.WATT: ("WTT", "W"),
    SiUnit.VAR: ("D44", "var"),
    SiUnit.VOLT_AMPERE: ("D46", "V·A"),
    SiUnit.VOLT: ("VLT", "V"),
    SiUnit.AMPERE: ("AMP", "A"),
    SiUnit.HERTZ: ("HTZ", "Hz"),
    SiUnit.JOULE: ("JOU", "J"),
    SiUnit.VAR_HOUR: ("D44", "varh"),
    SiUnit.CELSIUS: ("CEL", "°C"),
    SiUnit.KELVIN: ("KEL", "K"),
    SiUnit.RATIO: ("C62", "1"),
    SiUnit.SECOND: ("SEC", "s"),
    SiUnit.WATT_PER_SECOND: ("WTT", "W/s"),
    SiUnit.CUBIC_METRE: ("MTQ", "m³"),
    SiUnit.CUBIC_METRE_PER_SECOND: ("MQS", "m³/s"),
    SiUnit.COULOMB: ("COU", "C"),
    SiUnit.ONE: ("C62", "1"),
}
"""Each unit's UNECE common code and display name (the OPC Foundation's UNECE_to_OPCUA table).
W/s and varh have no code of their own: they carry the code of the unit they are built on
(watt, var) and the display name says which they are. A ratio is served as C62 "1"."""


def engineering_units(unit: SiUnit) -> ua.EUInformation:
    """The ``EngineeringUnits`` of a variable in ``unit``: the UNECE code packed into UnitId
    (one byte per character, as OPC UA Part 8 says)."""
    code, name = UNECE_CODES[unit]
    unit_id = 0
    for ch in code:
        unit_id = (unit_id << 8) | ord(ch)
    return ua.EUInformation(
        NamespaceUri=UNECE,
        UnitId=unit_id,
        DisplayName=ua.LocalizedText(name),
        Description=ua.LocalizedText(name),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class GatewayValue:
    """A value of the gateway itself rather than of the site, and so not in the signal
    catalogue: its unit and range, as a :class:`~pswd_gateway.domain.signals.Signal` gives
    them."""

    key: str
    unit: SiUnit
    low: float
    high: float
    description: str


GUARD_ACTIVE: Final = GatewayValue(
    key="control.guard_active", unit=SiUnit.ONE, low=0.0, high=1.0,
    description="1 while the control guard holds the battery in safe mode",
)  # fmt: skip

Reader = Callable[[Snapshot, SiteMap], Sample | None]
"""A variable's value from a snapshot on this site; ``None`` when there is none."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Variable:
    """One variable under ``PSWD``: a signal served at ``PSWD.<obj>.<name>``.

    Its value is the signal read on the site, unless ``read`` says otherwise (the two variables
    that follow the gateway's own state; a :class:`GatewayValue` always needs one)."""

    signal: Signal | GatewayValue
    obj: str
    """The object under ``PSWD`` that holds the variable (``GridConnection`` …)."""
    name: str
    read: Reader | None = None

    def __post_init__(self) -> None:
        if isinstance(self.signal, GatewayValue) and self.read is None:
            msg = f"variable {self.node_id}: {self.signal.key} is not a site signal; give read"
            raise ValueError(msg)

    @property
    def node_id(self) -> str:
        """The string identifier of the variable's node id."""
        return f"PSWD.{self.obj}.{self.name}"

    @property
    def engineering_units(self) -> ua.EUInformation:
        return engineering_units(self.signal.unit)

    @property
    def eu_range(self) -> ua.Range:
        return ua.Range(self.signal.low, self.signal.high)

    def value(self, snap: Snapshot, site: SiteMap) -> Sample | None:
        """(value, quality, source POSIX time) from a snapshot, or None when there is none."""
        if self.read is not None:
            return self.read(snap, site)
        assert isinstance(self.signal, Signal)
        return snap.read(self.signal, site)


MODEL: Final[tuple[Variable, ...]] = (
    Variable(signal=GRID_POWER, obj="GridConnection", name="ActivePower"),
    Variable(signal=GRID_FREQUENCY, obj="GridConnection", name="Frequency"),
    Variable(signal=GRID_IMPORT_LIMIT, obj="GridConnection", name="ImportLimit"),
    Variable(signal=GRID_RAMP_LIMIT, obj="GridConnection", name="RampLimit"),
    Variable(signal=IT_POWER, obj="ITLoad", name="ActivePower"),
    Variable(signal=BESS_POWER, obj="Battery", name="ActivePower"),
    Variable(signal=BESS_SOC, obj="Battery", name="StateOfCharge"),
    Variable(signal=CHW_SUPPLY_TEMP, obj="ThermalPlant", name="ChilledWaterSupplyTemperature"),
    Variable(signal=CHW_SUPPLY_SETPOINT, obj="ThermalPlant", name="ChilledWaterSupplySetpoint"),
    Variable(signal=HEAT_EXPORT_POWER, obj="HeatRecovery", name="HeatExport"),
    Variable(signal=HEAT_SUPPLY_TEMP, obj="HeatRecovery", name="SupplyTemperature"),
)
"""The site's variables read straight from the catalogue, in the order they are built."""


def limit_in_force(windows: Sequence[DemandResponseWindow]) -> Reader:
    """The import limit in force, lowered further by any ``[[scheduling.demand_response]]``
    window open at the snapshot's time."""

    def read(snap: Snapshot, site: SiteMap) -> Sample | None:
        in_force = snap.read(IMPORT_LIMIT_IN_FORCE, site)
        if in_force is None:
            return None
        now = datetime.fromtimestamp(snap.taken_at, UTC)
        open_ = [from_mw(w.import_limit_mw) for w in windows if w.start <= now < w.end]
        return Sample(min([in_force.value, *open_]), Quality.GOOD, snap.taken_at)

    return read


SIGNALS_OBJECT: Final = "Signals"
"""Where every catalogue signal without a row of its own is served, by its key."""


def catalogue_rest() -> tuple[Variable, ...]:
    """``PSWD.Signals.<key>`` for each catalogue signal :data:`MODEL` does not name: a signal
    added to the catalogue (a second meter …) is browsable without code here."""
    named = {v.signal.key for v in MODEL} | {IMPORT_LIMIT_IN_FORCE.key}
    return tuple(
        Variable(signal=s, obj=SIGNALS_OBJECT, name=s.key) for s in SIGNALS if s.key not in named
    )


def model(windows: Sequence[DemandResponseWindow], guard_active: Reader) -> tuple[Variable, ...]:
    """Every variable, in the order they are built: :data:`MODEL`, the demand-response
    limit in force, whether the control guard holds the battery, then the rest of the
    catalogue under ``Signals``."""
    return (
        *MODEL,
        Variable(
            signal=IMPORT_LIMIT_IN_FORCE, obj="DemandResponse", name="ImportLimit",
            read=limit_in_force(windows),
        ),
        Variable(signal=GUARD_ACTIVE, obj="Control", name="GuardActive", read=guard_active),
        *catalogue_rest(),
    )  # fmt: skip


STATUS: Final = {
    Quality.GOOD: ua.StatusCodes.Good,
    Quality.QUESTIONABLE: ua.StatusCodes.UncertainLastUsableValue,
    Quality.INVALID: ua.StatusCodes.BadNoCommunication,
}
"""The status a value is served with, from its quality: never a stale Good."""


async def add_variables(
    server: Server, root: Node, idx: int, variables: Sequence[Variable]
) -> dict[str, Node]:
    """Add each variable (a Double with EngineeringUnits and EURange, BadWaitingForInitialData
    until its first value) under its object below ``root``; the nodes by node id."""
    objects: dict[str, Node] = {}
    nodes: dict[str, Node] = {}
    for var in variables:
        obj = objects.get(var.obj)
        if obj is None:
            obj = await root.add_object(
                ua.NodeId(f"PSWD.{var.obj}", idx), ua.QualifiedName(var.obj, idx)
            )
            objects[var.obj] = obj
        node = await obj.add_variable(
            ua.NodeId(var.node_id, idx),
            ua.QualifiedName(var.name, idx),
            ua.Variant(0.0, ua.VariantType.Double),
            datatype=ua.NodeId(ua.ObjectIds.Double),
        )
        await node.add_property(
            ua.NodeId(f"{var.node_id}.EngineeringUnits", idx),
            ua.QualifiedName("EngineeringUnits", 0),
            ua.Variant(var.engineering_units, ua.VariantType.ExtensionObject),
        )
        await node.add_property(
            ua.NodeId(f"{var.node_id}.EURange", idx),
            ua.QualifiedName("EURange", 0),
            ua.Variant(var.eu_range, ua.VariantType.ExtensionObject),
        )
        await server.write_attribute_value(
            node.nodeid,
            ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData)),
        )
        nodes[var.node_id] = node
    return nodes
