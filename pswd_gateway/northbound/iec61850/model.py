"""The IEC 61850 data model, from one table.

Each row is a data object: logical device, logical node, data object name, its CDC, SI unit
and multiplier (IEC 61850-7-3 Annex A codes), and where its value comes from in the store. The
model built for libiec61850 (:func:`build_model`) and, later, the ICD file are generated from
this table only.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from pswd_gateway.config import SiteConfig, SiteRole
from pswd_gateway.domain.identity import Permission
from pswd_gateway.domain.points import Quality
from pswd_gateway.store import Snapshot

__all__ = [
    "CONTROLS",
    "TABLE",
    "BuiltModel",
    "Context",
    "Control",
    "DataObject",
    "GooseAddress",
    "Reading",
    "SIUnit",
    "build_model",
]

Reading = tuple[float, Quality, float]
"""(value in the row's unit x 10^multiplier, quality, source POSIX time)."""


@dataclass(frozen=True, slots=True)
class Context:
    """What a row's value may come from besides the store."""

    site: SiteConfig
    load_step_imminent: bool = False
    """An announced job starts or stops within ``iec61850.load_step_lead_s``."""
    guard_tripped: bool = False
    """The control guard holds the battery in safe mode."""
    guard_changed_at: float | None = None
    """When the guard last tripped or re-armed (POSIX seconds); ``None``: not since start."""


Source = Callable[[Snapshot, Context], "Reading | None"]


class SIUnit:
    """IEC 61850-7-3 SIUnit codes used here."""

    DIMENSIONLESS: Final = 1
    AMPERE: Final = 5
    CELSIUS: Final = 23
    VOLT: Final = 29
    HERTZ: Final = 33
    WATT: Final = 62
    VOLT_AMPERE_REACTIVE: Final = 63
    WATT_HOUR: Final = 72


class CtlModel:
    """IEC 61850-7-2 control models used here."""

    DIRECT_ENHANCED: Final = 3
    SBO_ENHANCED: Final = 4


@dataclass(frozen=True, slots=True)
class Control:
    """How a controllable row is operated: its control model, the range of ctlVal (in the row's
    unit x 10^multiplier), the permission operating it needs, and what it sets."""

    ctl_model: int
    action: str
    """The site setting it changes: ``grid_import_limit_mw``, ``grid_ramp_limit_mw_per_s``,
    ``demand_response_limit_mw`` or ``demand_response_active``."""
    low: float = 0.0
    high: float = 0.0
    low_inclusive: bool = False
    permission: Permission = Permission.OPERATE
    """From the one role model (``domain.identity``): the same on every surface."""


@dataclass(frozen=True, slots=True)
class DataObject:
    ld: str
    ln: str
    name: str
    cdc: str
    unit: int
    multiplier: int
    """The value is served in unit x 10^multiplier (6: MW)."""
    source: Source
    description: str
    control: Control | None = None

    @property
    def reference(self) -> str:
        """``LD/LN.DO`` without the IED name."""
        return f"{self.ld}/{self.ln}.{self.name}"

    @property
    def value_leaf(self) -> str:
        """The attribute that carries the value."""
        return VALUE_LEAF[self.cdc]

    @property
    def fc(self) -> str:
        """The functional constraint of the value (MX for measurements, ST for status)."""
        return "MX" if self.cdc in {"MV", "APC"} else "ST"


VALUE_LEAF: Final = {
    "MV": "mag.f",
    "SPS": "stVal",
    "SPC": "stVal",
    "APC": "mxVal.f",
    "BCR": "actVal",
}


def _point(role: SiteRole, point: str, scale: float) -> Source:
    def get(snap: Snapshot, ctx: Context) -> Reading | None:
        key = ctx.site.point_key(role, point)
        p = None if key is None else snap.get(key)
        return None if p is None else (p.value / scale, p.quality, p.source_ts)

    return get


def _it_mw(snap: Snapshot, ctx: Context) -> Reading | None:
    total = snap.total(ctx.site.it_load_points)
    return None if total is None else (total[0] / 1e6, total[1], total[2])


def _available(role: SiteRole, point: str) -> Source:
    """1.0 while the device's point is good, 0.0 otherwise (an SPS; itself always valid)."""

    def get(snap: Snapshot, ctx: Context) -> Reading | None:
        key = ctx.site.point_key(role, point)
        p = None if key is None else snap.get(key)
        up = p is not None and p.quality is Quality.GOOD
        return (1.0 if up else 0.0), Quality.GOOD, (p.received_ts if p else snap.taken_at)

    return get


def _setting(get_value: Callable[[SiteConfig], float]) -> Source:
    def get(snap: Snapshot, ctx: Context) -> Reading | None:
        return float(get_value(ctx.site)), Quality.GOOD, snap.taken_at

    return get


def _dr_active(snap: Snapshot, ctx: Context) -> Reading | None:
    active = ctx.site.demand_response_active
    return (1.0 if active else 0.0), Quality.GOOD, snap.taken_at


def _load_step(snap: Snapshot, ctx: Context) -> Reading | None:
    return (1.0 if ctx.load_step_imminent else 0.0), Quality.GOOD, snap.taken_at


def _guard(snap: Snapshot, ctx: Context) -> Reading | None:
    changed = ctx.guard_changed_at if ctx.guard_changed_at is not None else snap.taken_at
    return (1.0 if ctx.guard_tripped else 0.0), Quality.GOOD, changed


def _dr_limit(site: SiteConfig) -> float:
    return site.demand_response_limit_mw if site.demand_response_limit_mw is not None else 0.0


GRID: Final = "grid_meter"
BESS: Final = "bess"
PLANT: Final = "thermal"
LIMIT_MW: Final = 10_000.0

TABLE: Final[tuple[DataObject, ...]] = (
    DataObject("GRID", "MMXU1", "TotW", "MV", SIUnit.WATT, 6, _point(GRID, "active_power", 1e6),
               "Active power at the grid connection, > 0 import"),
    DataObject("GRID", "MMXU1", "TotVAr", "MV", SIUnit.VOLT_AMPERE_REACTIVE, 6,
               _point(GRID, "reactive_power", 1e6), "Reactive power at the grid connection"),
    DataObject("GRID", "MMXU1", "TotPF", "MV", SIUnit.DIMENSIONLESS, 0,
               _point(GRID, "power_factor", 1.0), "Power factor at the grid connection"),
    DataObject("GRID", "MMXU1", "Hz", "MV", SIUnit.HERTZ, 0, _point(GRID, "frequency", 1.0),
               "Grid frequency"),
    DataObject("GRID", "MMXU1", "PPV", "MV", SIUnit.VOLT, 3, _point(GRID, "voltage", 1e3),
               "Line-to-line voltage at the grid connection, kV"),
    DataObject("GRID", "MMTR1", "DmdWh", "BCR", SIUnit.WATT_HOUR, 0,
               _point(GRID, "energy_imported", 3600.0), "Energy imported from the grid, Wh"),
    DataObject("GRID", "MMTR1", "SupWh", "BCR", SIUnit.WATT_HOUR, 0,
               _point(GRID, "energy_exported", 3600.0), "Energy exported to the grid, Wh"),
    DataObject("GRID", "GGIO1", "Ind1", "SPS", SIUnit.DIMENSIONLESS, 0, _available(BESS, "soc"),
               "Battery available (GOOSE)"),
    DataObject("GRID", "GGIO1", "Ind2", "SPS", SIUnit.DIMENSIONLESS, 0,
               _available(GRID, "active_power"), "Grid meter healthy (GOOSE)"),
    DataObject("GRID", "GGIO1", "Ind3", "SPS", SIUnit.DIMENSIONLESS, 0, _load_step,
               "Announced load step imminent: a job starts or stops within the lead time (GOOSE)"),
    DataObject("GRID", "GGIO1", "Ind4", "SPS", SIUnit.DIMENSIONLESS, 0, _guard,
               "Control guard tripped: the battery is in safe mode (GOOSE)"),
    DataObject("GRID", "GAPC1", "ImpLimW", "APC", SIUnit.WATT, 6,
               _setting(lambda s: s.grid_import_limit_mw),
               "Grid import limit, MW (operate: direct with enhanced security)",
               Control(CtlModel.DIRECT_ENHANCED, "grid_import_limit_mw", 0.0, LIMIT_MW)),
    DataObject("GRID", "GAPC1", "RmpLimW", "APC", SIUnit.WATT, 6,
               _setting(lambda s: s.grid_ramp_limit_mw_per_s),
               "Grid ramp limit, MW per second (operate: direct with enhanced security)",
               Control(CtlModel.DIRECT_ENHANCED, "grid_ramp_limit_mw_per_s", 0.0, LIMIT_MW)),
    DataObject("GRID", "GAPC1", "DRLimW", "APC", SIUnit.WATT, 6, _setting(_dr_limit),
               "Demand-response import limit, MW; in force while DRAct is on",
               Control(CtlModel.DIRECT_ENHANCED, "demand_response_limit_mw", 0.0, LIMIT_MW,
                       low_inclusive=True)),
    DataObject("GRID", "GAPC1", "DRAct", "SPC", SIUnit.DIMENSIONLESS, 0, _dr_active,
               "Demand response active (operate: select before operate, enhanced security; "
               "false releases the limit) (GOOSE)",
               Control(CtlModel.SBO_ENHANCED, "demand_response_active")),
    DataObject("ITLOAD", "MMXU1", "TotW", "MV", SIUnit.WATT, 6, _it_mw,
               "Active power of the IT load"),
    DataObject("BESS", "MMXU1", "TotW", "MV", SIUnit.WATT, 6, _point(BESS, "active_power", 1e6),
               "Battery active power, > 0 discharging"),
    DataObject("BESS", "MMXU1", "TotVAr", "MV", SIUnit.VOLT_AMPERE_REACTIVE, 6,
               _point(BESS, "reactive_power", 1e6), "Battery reactive power"),
    DataObject("BESS", "ZBAT1", "SoC", "MV", SIUnit.DIMENSIONLESS, 0, _point(BESS, "soc", 0.01),
               "Battery state of charge, percent"),
    DataObject("BESS", "ZBAT1", "Vol", "MV", SIUnit.VOLT, 0, _point(BESS, "battery_voltage", 1.0),
               "Battery DC voltage"),
    DataObject("BESS", "ZBAT1", "Amp", "MV", SIUnit.AMPERE, 0,
               _point(BESS, "battery_current", 1.0), "Battery DC current"),
    DataObject("BESS", "ZBAT1", "SoCHiLim", "MV", SIUnit.DIMENSIONLESS, 0,
               _point(BESS, "soc_max", 0.01), "Highest allowed state of charge, percent"),
    DataObject("BESS", "ZBAT1", "SoCLoLim", "MV", SIUnit.DIMENSIONLESS, 0,
               _point(BESS, "soc_min", 0.01), "Lowest allowed state of charge, percent"),
    DataObject("BESS", "ZBTC1", "ChaWMax", "MV", SIUnit.WATT, 6,
               _point(BESS, "max_charge_rate", 1e6), "Highest charging power, MW"),
    DataObject("BESS", "ZBTC1", "DschWMax", "MV", SIUnit.WATT, 6,
               _point(BESS, "max_discharge_rate", 1e6), "Highest discharging power, MW"),
    DataObject("BESS", "ZBTC1", "BatSt", "MV", SIUnit.DIMENSIONLESS, 0,
               _point(BESS, "battery_state", 1.0), "Battery state (SunSpec 802 BatSt code)"),
    DataObject("THERMAL", "MMXU1", "ChwTmp", "MV", SIUnit.CELSIUS, 0,
               _point(PLANT, "chw_supply_temp", 1.0), "Chilled-water supply temperature"),
    DataObject("THERMAL", "MMXU1", "ChwRetTmp", "MV", SIUnit.CELSIUS, 0,
               _point(PLANT, "chw_return_temp", 1.0), "Chilled-water return temperature"),
    DataObject("THERMAL", "MMXU1", "ChlW", "MV", SIUnit.WATT, 6,
               _point(PLANT, "chiller_power", 1e6), "Chiller electrical power, MW"),
    DataObject("THERMAL", "MMXU2", "HeatW", "MV", SIUnit.WATT, 6,
               _point(PLANT, "heat_export_power", 1e6), "Heat exported to the municipal network"),
    DataObject("THERMAL", "MMXU2", "HeatTmp", "MV", SIUnit.CELSIUS, 0,
               _point(PLANT, "heat_supply_temp", 1.0), "Heat-network supply temperature"),
)  # fmt: skip
"""The data objects served; docs/iec61850.md lists them with their object references."""

CONTROLS: Final = {row.reference: row for row in TABLE if row.control is not None}


REPORT_TRIGGERS: Final = ("dchg", "qchg", "period", "gi")
INTEGRITY_PERIOD_MS: Final = 1000
BUFFER_TIME_MS: Final = 50
REPORT_DATASET: Final = "Meas"
GOOSE_LD: Final = "GRID"
GOOSE_DATASET: Final = "Events"
GOOSE_CB: Final = "gcbEvents"


def report_rows(ld: str) -> list[DataObject]:
    """The members of an LD's ``Meas`` dataset: every row of the LD (measurements, status,
    setpoints in force and the demand-response state)."""
    return [row for row in TABLE if row.ld == ld]


def goose_rows() -> list[DataObject]:
    """The members of ``Events``: the fast indications and the demand-response state."""
    return [row for row in TABLE if row.ld == GOOSE_LD and row.cdc in {"SPS", "SPC"}]


@dataclass(frozen=True, slots=True)
class GooseAddress:
    app_id: int = 0x1000
    mac: str = "01:0C:CD:01:00:01"
    vlan_id: int = 0
    vlan_priority: int = 4


def _reports(devices: dict[str, Any], m: Any) -> None:
    """Per logical device: dataset ``Meas`` in LLN0, an unbuffered (``urcbMeas01``) and a
    buffered (``brcbMeas01``) report control block over it, triggered by data change, quality
    change, integrity period and general interrogation."""
    trg = m.TRG_OPT_DATA_CHANGED | m.TRG_OPT_QUALITY_CHANGED | m.TRG_OPT_INTEGRITY | m.TRG_OPT_GI
    opts = (
        m.RPT_OPT_SEQ_NUM
        | m.RPT_OPT_TIME_STAMP
        | m.RPT_OPT_REASON_FOR_INCLUSION
        | m.RPT_OPT_DATA_SET
        | m.RPT_OPT_DATA_REFERENCE
        | m.RPT_OPT_CONF_REV
    )
    for ld_name, ld in devices.items():
        lln0 = m.LogicalDevice_getLogicalNode(ld, "LLN0")
        dataset = m.DataSet_create(REPORT_DATASET, lln0)
        for row in report_rows(ld_name):
            m.DataSetEntry_create(dataset, f"{row.ln}${row.fc}${row.name}", -1, None)
        for name, buffered in (("urcbMeas01", False), ("brcbMeas01", True)):
            m.ReportControlBlock_create(
                name, lln0, f"{ld_name}.{name}", buffered, REPORT_DATASET, 1, trg, opts,
                BUFFER_TIME_MS, INTEGRITY_PERIOD_MS,
            )  # fmt: skip


def _goose(
    devices: dict[str, Any], m: Any, times_ms: tuple[int, int], address: GooseAddress
) -> None:
    """The GoCB ``GRID/LLN0$GO$gcbEvents`` over dataset ``Events``, with its APPID and
    destination MAC (set through :mod:`native`: the SWIG binding of PhyComAddress_create takes a
    C byte array Python cannot pass)."""
    lln0 = m.LogicalDevice_getLogicalNode(devices[GOOSE_LD], "LLN0")
    dataset = m.DataSet_create(GOOSE_DATASET, lln0)
    for row in goose_rows():
        m.DataSetEntry_create(dataset, f"{row.ln}$ST${row.name}", -1, None)
    gcb = m.GSEControlBlock_create(
        GOOSE_CB, lln0, f"{GOOSE_LD}.{GOOSE_DATASET}", GOOSE_DATASET, 1, False,  # noqa: FBT003
        *times_ms,
    )  # fmt: skip
    from pswd_gateway.northbound.iec61850 import native  # noqa: PLC0415 - loads libiec61850

    lib = native.library()
    mac = (ctypes.c_uint8 * 6)(*(int(part, 16) for part in address.mac.split(":")))
    phy = lib.PhyComAddress_create(address.vlan_priority, address.vlan_id, address.app_id, mac)
    lib.GSEControlBlock_addPhyComAddress(native.address(gcb), phy)


def _create_object(m: Any, row: DataObject, ln: Any) -> Any:
    """One data object of the row's CDC under ``ln`` (units for MV and APC)."""
    from pswd_gateway.northbound.iec61850 import native  # noqa: PLC0415 - loads libiec61850

    ctl_model = row.control.ctl_model if row.control is not None else 0
    if row.cdc == "SPS":
        return m.CDC_SPS_create(row.name, ln, 0)
    if row.cdc == "BCR":
        return m.CDC_BCR_create(row.name, ln, 0)
    if row.cdc == "SPC":
        return m.CDC_SPC_create(row.name, ln, 0, ctl_model)
    if row.cdc == "APC":
        data_object = m.CDC_APC_create(row.name, ln, 0, ctl_model, False)  # noqa: FBT003 - float
    else:
        data_object = m.CDC_MV_create(row.name, ln, 0, False)  # noqa: FBT003 - float, not int
    native.add_units(m, data_object, row.unit, row.multiplier)
    return data_object


@dataclass
class BuiltModel:
    model: Any
    attributes: dict[str, tuple[Any, Any, Any]]
    """Per ``LD/LN.DO``: its (value, q, t) attribute nodes."""
    controls: dict[str, Any]
    """Per controllable ``LD/LN.DO``: its DataObject node."""


def build_model(
    ied_name: str,
    m: Any,
    goose: tuple[int, int] | None = None,
    goose_address: GooseAddress | None = None,
) -> BuiltModel:
    """A libiec61850 dynamic model for :data:`TABLE` (``m`` is the pyiec61850 module)."""
    model = m.IedModel_create(ied_name)
    devices: dict[str, Any] = {}
    nodes: dict[tuple[str, str], Any] = {}
    controls: dict[str, Any] = {}
    for row in TABLE:
        ld = devices.get(row.ld)
        if ld is None:
            ld = m.LogicalDevice_create(row.ld, model)
            devices[row.ld] = ld
            lln0 = m.toModelNode(m.LogicalNode_create("LLN0", ld))
            m.CDC_ENS_create("Mod", lln0, 0)
            m.CDC_ENS_create("Beh", lln0, 0)
            m.CDC_ENS_create("Health", lln0, 0)
            m.CDC_LPL_create("NamPlt", lln0, 0)
            lphd = m.toModelNode(m.LogicalNode_create("LPHD1", ld))
            m.CDC_DPL_create("PhyNam", lphd, 0)
            m.CDC_ENS_create("PhyHealth", lphd, 0)
            m.CDC_SPS_create("Proxy", lphd, 0)
        ln = nodes.get((row.ld, row.ln))
        if ln is None:
            ln = m.toModelNode(m.LogicalNode_create(row.ln, ld))
            m.CDC_ENS_create("Beh", ln, 0)
            nodes[(row.ld, row.ln)] = ln
        data_object = _create_object(m, row, ln)
        if row.control is not None:
            controls[row.reference] = data_object
    _reports(devices, m)
    if goose is not None:
        _goose(devices, m, goose, goose_address or GooseAddress())
    attributes: dict[str, tuple[Any, Any, Any]] = {}
    for row in TABLE:
        base = f"{ied_name}{row.ld}/{row.ln}.{row.name}"
        found = [
            m.IedModel_getModelNodeByObjectReference(model, f"{base}.{leaf}")
            for leaf in (row.value_leaf, "q", "t")
        ]
        if any(node is None for node in found):
            raise RuntimeError(f"{base}: {row.cdc} has no {row.value_leaf}, q or t")
        value, q, t = (m.toDataAttribute(node) for node in found)
        attributes[row.reference] = (value, q, t)

    return BuiltModel(model, attributes, controls)
