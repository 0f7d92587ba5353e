"""The IEC 61850 data model, from one table.

Each row is a data object: its object reference (``LD/LN.DO``), its CDC, and where its value
comes from. A row that serves a site signal names it from the catalogue
(:mod:`pswd_gateway.domain.signals`) and adds only what is IEC 61850's own: the reference and
the multiplier. The SIUnit follows from the signal's unit (:data:`IEC_UNITS`), and so does the
scale: a value is served as its SI value / (factor x 10^multiplier), e.g. W at multiplier 6 is
MW, J is served in Wh. Rows that are not site signals (the GGIO1 indications) bring their own
small source function.

The model built for libiec61850 (:func:`build_model`) and the ICD file (:mod:`.icd`) are both
generated from this table, and from :data:`.schedule.OBJECTS` for the forecast schedule (FSCH1
and FSCC1 in ``GRID``), whose settings are not site signals.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from pswd_gateway.config import MIN_RAMP_LIMIT_MW_PER_S, SiteConfig
from pswd_gateway.domain.grid_signals import FastFrequencyResponse
from pswd_gateway.domain.identity import Permission
from pswd_gateway.domain.points import Quality, point_key
from pswd_gateway.domain.signals import (
    BESS_CURRENT,
    BESS_MAX_CHARGE,
    BESS_MAX_DISCHARGE,
    BESS_POWER,
    BESS_REACTIVE_POWER,
    BESS_SOC,
    BESS_SOC_MAX,
    BESS_SOC_MIN,
    BESS_STATE,
    BESS_VOLTAGE,
    CHILLER_POWER,
    CHW_RETURN_TEMP,
    CHW_SUPPLY_TEMP,
    DEMAND_RESPONSE_ACTIVE,
    DEMAND_RESPONSE_LIMIT,
    FFR_ACTIVE,
    FFR_DEADBAND,
    FFR_DROOP,
    FFR_MAX_POWER,
    FFR_RAMP,
    GRID_ENERGY_EXPORTED,
    GRID_ENERGY_IMPORTED,
    GRID_FREQUENCY,
    GRID_IMPORT_LIMIT,
    GRID_POWER,
    GRID_POWER_FACTOR,
    GRID_RAMP_LIMIT,
    GRID_REACTIVE_POWER,
    GRID_VOLTAGE,
    HEAT_EXPORT_POWER,
    HEAT_SUPPLY_TEMP,
    IT_POWER,
    Signal,
)
from pswd_gateway.domain.units import SiUnit, to_si
from pswd_gateway.northbound.iec61850 import schedule
from pswd_gateway.store import Snapshot

__all__ = [
    "CONTROLS",
    "IEC_UNITS",
    "MULTIPLIERS",
    "TABLE",
    "BuiltModel",
    "Context",
    "Control",
    "DataObject",
    "GooseAddress",
    "IecUnit",
    "Reading",
    "SIUnit",
    "ScheduleNodes",
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
    SECOND: Final = 4
    AMPERE: Final = 5
    CELSIUS: Final = 23
    VOLT: Final = 29
    HERTZ: Final = 33
    WATT: Final = 62
    VOLT_AMPERE_REACTIVE: Final = 63
    WATT_HOUR: Final = 72
    WATT_PER_SECOND: Final = 81


@dataclass(frozen=True, slots=True)
class IecUnit:
    """How a catalogue unit is served: its IEC 61850-7-3 SIUnit and the SI value of one of it."""

    code: int
    """The SIUnit code (IEC 61850-7-3 Annex A)."""
    symbol: str
    """As the ICD's SIUnit enumeration names it."""
    factor: float = 1.0
    """SI units per served unit: 3600 J per Wh."""


IEC_UNITS: Final[dict[SiUnit, IecUnit]] = {
    SiUnit.WATT: IecUnit(SIUnit.WATT, "W"),
    SiUnit.VAR: IecUnit(SIUnit.VOLT_AMPERE_REACTIVE, "VAr"),
    SiUnit.HERTZ: IecUnit(SIUnit.HERTZ, "Hz"),
    SiUnit.VOLT: IecUnit(SIUnit.VOLT, "V"),
    SiUnit.AMPERE: IecUnit(SIUnit.AMPERE, "A"),
    SiUnit.CELSIUS: IecUnit(SIUnit.CELSIUS, "°C"),
    SiUnit.JOULE: IecUnit(SIUnit.WATT_HOUR, "Wh", to_si(1.0, "Wh")[0]),
    SiUnit.WATT_PER_SECOND: IecUnit(SIUnit.WATT_PER_SECOND, "W/s"),
    SiUnit.RATIO: IecUnit(SIUnit.DIMENSIONLESS, ""),
    SiUnit.ONE: IecUnit(SIUnit.DIMENSIONLESS, ""),
}
"""Catalogue unit → served unit: the one place a row's SIUnit and scale come from."""

DIMENSIONLESS: Final = IEC_UNITS[SiUnit.ONE]

MULTIPLIERS: Final = {-2: "c", 0: "", 3: "k", 6: "M"}
"""IEC 61850-7-3 multipliers used here, as the ICD's multiplier enumeration names them."""


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
    ``demand_response_limit_mw``, ``demand_response_active``, or one of the fast frequency
    response's ``ffr_*``."""
    low: float = 0.0
    high: float = 0.0
    low_inclusive: bool = False
    permission: Permission = Permission.OPERATE
    """From the one role model (``domain.identity``): the same on every surface."""


_REFERENCE: Final = re.compile(r"([A-Z]+)/([A-Z]{4}\d*)\.(\w+)")


@dataclass(frozen=True, kw_only=True, slots=True)
class DataObject:
    """One served data object: a catalogue ``signal``, or for an indication its own
    ``source`` (exactly one of the two)."""

    reference: str
    """``LD/LN.DO`` without the IED name: ``GRID/MMXU1.TotW``."""
    cdc: str
    signal: Signal | None = None
    """The site signal served (its unit gives SIUnit and the scale)."""
    multiplier: int = 0
    """The value is served in the signal's IEC unit x 10^multiplier (6: MW, -2: percent)."""
    source: Source | None = None
    """For a row that is not a site signal: its value (dimensionless) from the snapshot."""
    description: str = ""
    """What the row means where the signal does not say it (an indication)."""
    control: Control | None = None

    def __post_init__(self) -> None:
        if _REFERENCE.fullmatch(self.reference) is None:
            raise ValueError(f"{self.reference}: not an LD/LN.DO object reference")
        if (self.signal is None) == (self.source is None):
            raise ValueError(f"{self.reference}: give either a signal or a source")
        if self.signal is None and self.multiplier != 0:
            raise ValueError(f"{self.reference}: a multiplier needs a signal")
        if self.multiplier not in MULTIPLIERS:
            raise ValueError(f"{self.reference}: multiplier {self.multiplier} not in MULTIPLIERS")
        if self.signal is not None and self.signal.unit not in IEC_UNITS:
            raise ValueError(f"{self.reference}: no IEC 61850 unit for {self.signal.unit}")

    @property
    def ld(self) -> str:
        return self.reference.partition("/")[0]

    @property
    def ln(self) -> str:
        return self.reference.partition("/")[2].partition(".")[0]

    @property
    def name(self) -> str:
        return self.reference.partition(".")[2]

    @property
    def iec_unit(self) -> IecUnit:
        """The served unit: the signal's (:data:`IEC_UNITS`); an indication's is none."""
        return DIMENSIONLESS if self.signal is None else IEC_UNITS[self.signal.unit]

    @property
    def unit(self) -> int:
        """The IEC 61850-7-3 SIUnit code served in ``units``."""
        return self.iec_unit.code

    @property
    def scale(self) -> float:
        """SI value per served value: factor x 10^multiplier (10^6 for W at multiplier 6)."""
        return self.iec_unit.factor * 10.0**self.multiplier

    @property
    def value_leaf(self) -> str:
        """The attribute that carries the value."""
        return VALUE_LEAF[self.cdc]

    @property
    def fc(self) -> str:
        """The functional constraint of the value (MX for measurements, ST for status)."""
        return "MX" if self.cdc in {"MV", "APC"} else "ST"

    def read(self, snap: Snapshot, ctx: Context) -> Reading | None:
        """The served value now (SI value / :attr:`scale`) with its quality and source time;
        ``None`` while the site has nothing to serve (no device plays the role, or a point of
        it has not been read yet)."""
        if self.signal is None:
            assert self.source is not None
            return self.source(snap, ctx)
        sample = snap.read(self.signal, ctx.site)
        if sample is None:
            return None
        return sample.value / self.scale, sample.quality, sample.source_ts

    def reasons(self, snap: Snapshot, ctx: Context) -> frozenset[str]:
        """Why the readings behind this row are doubtful (``Point.reason`` of its points:
        ``"out of range"``, ``"not available"``), for the quality's detailQual."""
        signal = self.signal
        if signal is None or signal.role is None or signal.point is None:
            return frozenset()
        points = (snap.get(point_key(d, signal.point)) for d in ctx.site.devices(signal.role))
        return frozenset(p.reason for p in points if p is not None and p.reason)


VALUE_LEAF: Final = {
    "MV": "mag.f",
    "SPS": "stVal",
    "SPC": "stVal",
    "APC": "mxVal.f",
    "BCR": "actVal",
}


def _healthy(signal: Signal) -> Source:
    """1.0 while the device point(s) behind ``signal`` are good, 0.0 otherwise (an SPS, itself
    always valid, stamped with when the reading arrived)."""
    role, point = signal.role, signal.point
    if role is None or point is None:
        raise ValueError(f"{signal.key}: a health indication needs a device signal")

    def get(snap: Snapshot, ctx: Context) -> Reading | None:
        points = [snap.get(point_key(device, point)) for device in ctx.site.devices(role)]
        up = bool(points) and all(p is not None and p.quality is Quality.GOOD for p in points)
        arrived = [p.received_ts for p in points if p is not None]
        return (1.0 if up else 0.0), Quality.GOOD, max(arrived, default=snap.taken_at)

    return get


def _load_step(snap: Snapshot, ctx: Context) -> Reading | None:
    return (1.0 if ctx.load_step_imminent else 0.0), Quality.GOOD, snap.taken_at


def _guard(snap: Snapshot, ctx: Context) -> Reading | None:
    changed = ctx.guard_changed_at if ctx.guard_changed_at is not None else snap.taken_at
    return (1.0 if ctx.guard_tripped else 0.0), Quality.GOOD, changed


LIMIT_MW: Final = 10_000.0
"""The highest setpoint an operator may give (ctlVal, MW or MW/s)."""
_DIRECT: Final = CtlModel.DIRECT_ENHANCED


def _ffr_control(action: str, curve_field: str) -> Control:
    """A curve value of the fast frequency response (``GAPC2``), direct with enhanced security,
    in the range the grid signal itself accepts for ``curve_field`` (its pydantic bounds, in the
    field's unit, which is the row's served unit): one range for every door. The maximum power
    must be above 0, as an enabled response's must."""
    low, high, inclusive = 0.0, LIMIT_MW, True
    for bound in FastFrequencyResponse.model_fields[curve_field].metadata:  # annotated-types
        if getattr(bound, "ge", None) is not None:
            low, inclusive = float(bound.ge), True
        if getattr(bound, "gt", None) is not None:
            low, inclusive = float(bound.gt), False
        if getattr(bound, "le", None) is not None:
            high = float(bound.le)
    return Control(_DIRECT, action, low, high, low_inclusive=inclusive and curve_field != "max_mw")


TABLE: Final[tuple[DataObject, ...]] = (
    DataObject(reference="GRID/MMXU1.TotW", cdc="MV", signal=GRID_POWER, multiplier=6),
    DataObject(reference="GRID/MMXU1.TotVAr", cdc="MV", signal=GRID_REACTIVE_POWER,
               multiplier=6),
    DataObject(reference="GRID/MMXU1.TotPF", cdc="MV", signal=GRID_POWER_FACTOR),
    DataObject(reference="GRID/MMXU1.Hz", cdc="MV", signal=GRID_FREQUENCY),
    DataObject(reference="GRID/MMXU1.PPV", cdc="MV", signal=GRID_VOLTAGE, multiplier=3),
    DataObject(reference="GRID/MMTR1.DmdWh", cdc="BCR", signal=GRID_ENERGY_IMPORTED),
    DataObject(reference="GRID/MMTR1.SupWh", cdc="BCR", signal=GRID_ENERGY_EXPORTED),
    DataObject(reference="GRID/GGIO1.Ind1", cdc="SPS", source=_healthy(BESS_SOC),
               description="Battery available: its state-of-charge reading is good (GOOSE)"),
    DataObject(reference="GRID/GGIO1.Ind2", cdc="SPS", source=_healthy(GRID_POWER),
               description="Grid meter healthy (GOOSE)"),
    DataObject(reference="GRID/GGIO1.Ind3", cdc="SPS", source=_load_step,
               description="Announced load step imminent: a job starts or stops within the "
               "lead time (GOOSE)"),
    DataObject(reference="GRID/GGIO1.Ind4", cdc="SPS", source=_guard,
               description="Control guard tripped: the battery is in safe mode (GOOSE)"),
    DataObject(reference="GRID/GAPC1.ImpLimW", cdc="APC", signal=GRID_IMPORT_LIMIT, multiplier=6,
               control=Control(_DIRECT, "grid_import_limit_mw", 0.0, LIMIT_MW)),
    DataObject(reference="GRID/GAPC1.RmpLimW", cdc="APC", signal=GRID_RAMP_LIMIT, multiplier=6,
               control=Control(_DIRECT, "grid_ramp_limit_mw_per_s", MIN_RAMP_LIMIT_MW_PER_S,
                               LIMIT_MW, low_inclusive=True)),
    DataObject(reference="GRID/GAPC1.DRLimW", cdc="APC", signal=DEMAND_RESPONSE_LIMIT,
               multiplier=6, description="In force while DRAct is on",
               control=Control(_DIRECT, "demand_response_limit_mw", 0.0, LIMIT_MW,
                               low_inclusive=True)),
    DataObject(reference="GRID/GAPC1.DRAct", cdc="SPC", signal=DEMAND_RESPONSE_ACTIVE,
               description="False releases the limit (GOOSE)",
               control=Control(CtlModel.SBO_ENHANCED, "demand_response_active")),
    DataObject(reference="GRID/GAPC2.FFRMaxW", cdc="APC", signal=FFR_MAX_POWER, multiplier=6,
               description="Fast frequency response: its most power, and the power its droop "
               "is a share of; in force while FFRAct is on",
               control=_ffr_control("ffr_max_mw", "max_mw")),
    DataObject(reference="GRID/GAPC2.FFRDbHz", cdc="APC", signal=FFR_DEADBAND,
               description="Its deadband around the nominal frequency",
               control=_ffr_control("ffr_deadband_hz", "deadband_hz")),
    DataObject(reference="GRID/GAPC2.FFRDroop", cdc="APC", signal=FFR_DROOP, multiplier=-2,
               description="Its droop, % of the nominal frequency for the most power",
               control=_ffr_control("ffr_droop_pct", "droop_pct")),
    DataObject(reference="GRID/GAPC2.FFRRmpW", cdc="APC", signal=FFR_RAMP, multiplier=6,
               description="How fast its power may change",
               control=_ffr_control("ffr_ramp_mw_per_s", "ramp_mw_per_s")),
    DataObject(reference="GRID/GAPC2.FFRAct", cdc="SPC", signal=FFR_ACTIVE,
               description="Fast frequency response on (a grid signal); false withdraws it "
               "(GOOSE)",
               control=Control(CtlModel.SBO_ENHANCED, "ffr_active")),
    DataObject(reference="ITLOAD/MMXU1.TotW", cdc="MV", signal=IT_POWER, multiplier=6),
    DataObject(reference="BESS/MMXU1.TotW", cdc="MV", signal=BESS_POWER, multiplier=6),
    DataObject(reference="BESS/MMXU1.TotVAr", cdc="MV", signal=BESS_REACTIVE_POWER,
               multiplier=6),
    DataObject(reference="BESS/ZBAT1.SoC", cdc="MV", signal=BESS_SOC, multiplier=-2),
    DataObject(reference="BESS/ZBAT1.Vol", cdc="MV", signal=BESS_VOLTAGE),
    DataObject(reference="BESS/ZBAT1.Amp", cdc="MV", signal=BESS_CURRENT),
    DataObject(reference="BESS/ZBAT1.SoCHiLim", cdc="MV", signal=BESS_SOC_MAX, multiplier=-2),
    DataObject(reference="BESS/ZBAT1.SoCLoLim", cdc="MV", signal=BESS_SOC_MIN, multiplier=-2),
    DataObject(reference="BESS/ZBTC1.ChaWMax", cdc="MV", signal=BESS_MAX_CHARGE, multiplier=6),
    DataObject(reference="BESS/ZBTC1.DschWMax", cdc="MV", signal=BESS_MAX_DISCHARGE,
               multiplier=6),
    DataObject(reference="BESS/ZBTC1.BatSt", cdc="MV", signal=BESS_STATE),
    DataObject(reference="THERMAL/MMXU1.ChwTmp", cdc="MV", signal=CHW_SUPPLY_TEMP),
    DataObject(reference="THERMAL/MMXU1.ChwRetTmp", cdc="MV", signal=CHW_RETURN_TEMP),
    DataObject(reference="THERMAL/MMXU1.ChlW", cdc="MV", signal=CHILLER_POWER, multiplier=6),
    DataObject(reference="THERMAL/MMXU2.HeatW", cdc="MV", signal=HEAT_EXPORT_POWER, multiplier=6),
    DataObject(reference="THERMAL/MMXU2.HeatTmp", cdc="MV", signal=HEAT_SUPPLY_TEMP),
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
    setpoints in force, the demand-response and fast-frequency-response state)."""
    return [row for row in TABLE if row.ld == ld]


def goose_rows() -> list[DataObject]:
    """The members of ``Events``: the fast indications, the demand-response and the fast
    frequency response's switch."""
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


Triple = tuple[int, int, int]
"""The C addresses of a status or measurement's value, q and t."""


@dataclass(frozen=True)
class ScheduleNodes:
    """The C addresses of what the server writes in FSCH1 and FSCC1 (:mod:`.schedule`)."""

    values: tuple[int, ...]
    """``ValASG001.setMag.f`` … ``ValASG576.setMag.f``."""
    start: int
    """``StrTm01.setTm``."""
    revision: int
    """``NamPlt.paramRev``."""
    state: Triple
    """``SchdSt``."""
    error: Triple
    """``SchdEnaErr``."""
    entry: Triple
    """``SchdEntr``."""
    active_start: Triple
    """``ActStrTm``."""
    value: Triple
    """FSCH1 ``ValMV`` (``mag.f``)."""
    controller_value: Triple
    """FSCC1 ``ValMV`` (``mag.f``)."""
    active_ref: Triple
    """FSCC1 ``ActSchdRef``."""


ScheduleBuilder = Callable[[Any, Any, schedule.ScheduleObject, Any], None]
"""Builds one data object of FSCH1/FSCC1: (pyiec61850, its LN, the object, its first value)."""


def _analogue(m: Any, ln: Any, obj: schedule.ScheduleObject, _first: Any) -> None:
    """MV or ASG (float), in W x 10^6."""
    from pswd_gateway.northbound.iec61850 import native  # noqa: PLC0415 - loads libiec61850

    create = m.CDC_MV_create if obj.cdc == "MV" else m.CDC_ASG_create
    analogue = create(obj.name, ln, 0, False)  # noqa: FBT003 - float, not int
    native.add_units(m, analogue, SIUnit.WATT, schedule.MULTIPLIER)


def _ing(m: Any, ln: Any, obj: schedule.ScheduleObject, first: Any) -> None:
    """ING with its setting; SchdIntv with units (seconds)."""
    from pswd_gateway.northbound.iec61850 import native  # noqa: PLC0415 - loads libiec61850

    ing = m.CDC_ING_create(obj.name, ln, 0)
    set_val = m.ModelNode_getChild(m.toModelNode(ing), "setVal")
    value = native.int_value(first)
    native.library().DataAttribute_setValue(native.address(set_val), value)  # a copy
    native.library().MmsValue_delete(value)
    if obj.type_id == "INGUnit_T":
        native.add_units(m, ing, SIUnit.SECOND, 0)


def _by_hand(m: Any, ln: Any, obj: schedule.ScheduleObject, first: Any) -> None:
    """TSG (setTm), ORG (setSrcRef), TSS and ORS (stVal, q, t): no CDC helper in the
    bindings; and the LPL of FSCH1 with ``paramRev``, which its helper does not add."""
    from pswd_gateway.northbound.iec61850 import native  # noqa: PLC0415 - loads libiec61850

    sp, st, trg = m.IEC61850_FC_SP, m.IEC61850_FC_ST, m.TRG_OPT_DATA_CHANGED
    text, stamp = m.IEC61850_VISIBLE_STRING_129, m.IEC61850_TIMESTAMP
    if obj.cdc == "LPL":
        plate = native.address(m.CDC_LPL_create(obj.name, ln, 0))
        native.attribute(plate, "paramRev", m.IEC61850_INT32, st, trg)
        return
    parent = native.address(m.DataObject_create(obj.name, ln, 0))
    if obj.cdc == "TSG":
        native.attribute(parent, "setTm", stamp, sp, trg)
    elif obj.cdc == "ORG":
        native.attribute(parent, "setSrcRef", text, sp, trg, native.text_value(first))
    else:  # TSS, ORS: a status with quality and time
        kind, value = (text, native.text_value(first)) if obj.cdc == "ORS" else (stamp, 0)
        native.attribute(parent, "stVal", kind, st, trg, value)
        native.attribute(parent, "q", m.IEC61850_QUALITY, st, m.TRG_OPT_QUALITY_CHANGED)
        native.attribute(parent, "t", stamp, st)


SCHEDULE_BUILDERS: Final[dict[str, ScheduleBuilder]] = {
    "ENS": lambda m, ln, obj, _: m.CDC_ENS_create(obj.name, ln, 0),
    "INS": lambda m, ln, obj, _: m.CDC_INS_create(obj.name, ln, 0),
    "SPG": lambda m, ln, obj, _: m.CDC_SPG_create(obj.name, ln, 0),  # false
    "MV": _analogue,
    "ASG": _analogue,
    "ING": _ing,
    "LPL": _by_hand,
    "TSG": _by_hand,
    "TSS": _by_hand,
    "ORG": _by_hand,
    "ORS": _by_hand,
}
"""How each CDC of :data:`.schedule.OBJECTS` is built."""


def _schedule_objects(m: Any, ied_name: str, ld: Any) -> None:
    """FSCH1 and FSCC1 (:data:`.schedule.OBJECTS`) in the schedule's LD. What the server never
    changes (NumEntr, SchdIntv, SchdPrio, the object references) gets its value here."""
    where = f"{ied_name}{schedule.LD}"
    first: dict[str, Any] = {
        "SchdPrio": schedule.PRIORITY,
        "NumEntr": schedule.ENTRIES,
        "SchdIntv": schedule.INTERVAL_S,
        "CtlEnt": f"{where}/{schedule.FORECAST_OF}",
        "Schd01": f"{where}/{schedule.SCHEDULE_LN}",
        "ActSchdRef": f"{where}/{schedule.SCHEDULE_LN}",
    }
    nodes: dict[str, Any] = {}
    for obj in schedule.OBJECTS:
        ln = nodes.get(obj.ln)
        if ln is None:
            ln = nodes[obj.ln] = m.toModelNode(m.LogicalNode_create(obj.ln, ld))
            m.CDC_ENS_create("Beh", ln, 0)
        SCHEDULE_BUILDERS[obj.cdc](m, ln, obj, first.get(obj.name))


def _schedule_nodes(m: Any, model: Any, ied_name: str) -> ScheduleNodes:
    """The addresses of what the server writes in FSCH1 and FSCC1."""
    from pswd_gateway.northbound.iec61850 import native  # noqa: PLC0415 - loads libiec61850

    def at(ref: str) -> int:
        node = m.IedModel_getModelNodeByObjectReference(model, f"{ied_name}{schedule.LD}/{ref}")
        if node is None:
            raise RuntimeError(f"{ied_name}{schedule.LD}/{ref}: not in the model")
        return native.address(node)

    def triple(ref: str, leaf: str = "stVal") -> Triple:
        return at(f"{ref}.{leaf}"), at(f"{ref}.q"), at(f"{ref}.t")

    fsch, fscc = schedule.SCHEDULE_LN, schedule.CONTROLLER_LN
    return ScheduleNodes(
        values=tuple(
            at(f"{fsch}.{schedule.value_name(i)}.setMag.f") for i in range(1, schedule.ENTRIES + 1)
        ),
        start=at(f"{fsch}.StrTm01.setTm"),
        revision=at(f"{fsch}.NamPlt.paramRev"),
        state=triple(f"{fsch}.SchdSt"),
        error=triple(f"{fsch}.SchdEnaErr"),
        entry=triple(f"{fsch}.SchdEntr"),
        active_start=triple(f"{fsch}.ActStrTm"),
        value=triple(f"{fsch}.ValMV", "mag.f"),
        controller_value=triple(f"{fscc}.ValMV", "mag.f"),
        active_ref=triple(f"{fscc}.ActSchdRef"),
    )


@dataclass
class BuiltModel:
    model: Any
    attributes: dict[str, tuple[Any, Any, Any]]
    """Per ``LD/LN.DO``: its (value, q, t) attribute nodes."""
    controls: dict[str, Any]
    """Per controllable ``LD/LN.DO``: its DataObject node."""
    schedule: ScheduleNodes


def build_model(
    ied_name: str,
    m: Any,
    goose: tuple[int, int] | None = None,
    goose_address: GooseAddress | None = None,
) -> BuiltModel:
    """A libiec61850 dynamic model for :data:`TABLE` and the forecast schedule (FSCH1, FSCC1:
    :mod:`.schedule`) (``m`` is the pyiec61850 module)."""
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
    _schedule_objects(m, ied_name, devices[schedule.LD])
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

    return BuiltModel(model, attributes, controls, _schedule_nodes(m, model, ied_name))
